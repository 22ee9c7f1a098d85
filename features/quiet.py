"""Warning filters changed by one block at a time, whatever thread it runs on.

``warnings.catch_warnings`` saves the process's filter list when a block starts and puts that copy
back when it ends; before Python 3.14 there are no per-thread filters. Two blocks that overlap on two
threads put back each other's copies, and the process can keep one block's filter for good: an
``ignore`` set to quieten one fit would hide every later warning of the run. Our blocks that change
filters go through :func:`held_warnings`, which holds one re-entrant lock around
``catch_warnings`` (blocks nest on one thread, and wait for each other across threads). It holds
``sys.stdout`` too where a block swaps it (``contextlib.redirect_stdout`` is process-wide as well).
Libraries' own ``catch_warnings`` blocks are outside it: only Python 3.14's context-aware filters
mend those.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_PROCESS_STATE = threading.RLock()


@contextmanager
def held_warnings() -> Iterator[None]:
    """``warnings.catch_warnings()`` that no other thread's held block overlaps; set the filters
    inside the block as usual."""
    with _PROCESS_STATE, warnings.catch_warnings():
        yield
