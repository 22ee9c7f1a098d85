"""Reading, checking and turning a company's tables into features (internal; see ``valuecast``).

Importing the package chooses Arrow's allocator, unless ``ARROW_DEFAULT_MEMORY_POOL`` already names
one: the system's (glibc malloc) instead of Arrow's default, mimalloc. mimalloc hands freed memory
back to the kernel within milliseconds, and on virtual machines where first-touch page faults are
expensive (ours: docs/benchmarks.md) reading and checking 10M rows took 10-15 s with it and 3.4-11 s
(median under 6 s) with the system allocator, which keeps freed memory for reuse (with the
Makefile's ``MALLOC_*`` settings). Arrow reads the variable when pyarrow is first imported, and
child processes (Spark's Python workers, BentoML's) inherit it; ``valuecast`` imports this package
before pandas for that reason. Where pyarrow is loaded already (a notebook that imported pandas first), the Python-level
default pool is switched instead, which covers most but not all of Arrow's allocations.
"""

import os
import sys

if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].set_memory_pool(sys.modules["pyarrow"].system_memory_pool())
