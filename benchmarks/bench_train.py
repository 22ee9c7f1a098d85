"""Benchmark: ``make train MODEL=all DATA=cdnow`` end to end (issue 3: under 3 minutes).

Runs the real command (read and check CDNOW, train churn, propensity and CLV with their baselines,
log to MLflow, register, promote) against a fresh SQLite store in a temporary folder, so the
project's own store is untouched, and prints the wall time and the command's peak memory.

    python -m benchmarks.bench_train [--data cdnow]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="cdnow")
    args = parser.parse_args()
    command = [str(Path(sys.executable).with_name("valuecast")), "train", "--data", args.data, "--model", "all"]
    with tempfile.TemporaryDirectory(prefix="valuecast-bench-train-") as folder:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{Path(folder) / 'mlflow.db'}",
            "VALUECAST_ARTIFACT_ROOT": (Path(folder) / "artifacts").as_uri(),
        }
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"train failed with exit code {done.returncode}")
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(done.stdout.rstrip())
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    verdict = "met" if seconds < TARGET_SECONDS else "MISSED"
    print(
        f"train MODEL=all DATA={args.data}: {seconds:.1f} s wall (target < {TARGET_SECONDS:.0f} s: {verdict}), "
        f"peak memory {peak_gib:.2f} GiB"
    )


if __name__ == "__main__":
    main()
