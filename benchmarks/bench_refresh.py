"""Benchmark: ``make refresh`` on the ``bench-score`` data (1M synthetic customers, 10M transactions) at
two dates, against one ``make score`` of the same data in the same run (issue 16).

Champions are trained on a 20,000-customer draw of the same generator into a temporary MLflow store
(as ``bench_score`` does). Then, each as a child process running the real command: ``valuecast score``
as of the benchmark date; ``valuecast refresh`` as of one horizon (90 days) before it (the first refresh:
nothing to compare with); ``valuecast refresh`` as of the benchmark date (the second: transitions, change
files, history, drift). Printed: wall time and peak memory of each, and the second refresh's time over
the score's.

    python -m benchmarks.bench_refresh [--customers 1000000]

Target: the refresh within 1.5x the time of one ``make score``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from pathlib import Path

import pandas as pd

from benchmarks.bench_features import AS_OF
from benchmarks.bench_score import prepare, run_child

TARGET = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    tx_path, config_path, folder, env = prepare(args.customers, "valuecast-bench-refresh-")
    valuecast = str(Path(sys.executable).with_name("valuecast"))
    earlier = (pd.Timestamp(AS_OF) - pd.Timedelta(days=90)).strftime("%Y-%m-%d")
    runs = [
        (
            "make score",
            [valuecast, "score", "--data", str(config_path), "--as-of", AS_OF, "--out", str(folder / "score")],
        ),
        (
            f"make refresh AS_OF={earlier} (first)",
            [valuecast, "refresh", "--data", str(config_path), "--as-of", earlier, "--out", str(folder / "refresh")],
        ),
        (
            f"make refresh AS_OF={AS_OF} (second)",
            [valuecast, "refresh", "--data", str(config_path), "--as-of", AS_OF, "--out", str(folder / "refresh")],
        ),
    ]
    results = []
    for label, command in runs:
        print(f"{label}: {args.customers:,} customers ...")
        wall, peak, output = run_child(command, env)
        print("  " + output.strip().replace("\n", "\n  "))
        results.append((label, wall, peak))
    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"data: {tx_path.name}"
    )
    for label, wall, peak in results:
        print(f"{label}: {wall:.1f} s wall, peak memory {peak:.2f} GiB (largest child process so far)")
    ratio = results[2][1] / results[0][1]
    verdict = "met" if ratio <= TARGET else "MISSED"
    print(f"second refresh / score wall time: {ratio:.2f}x (target <= {TARGET}x) {verdict}")


if __name__ == "__main__":
    main()
