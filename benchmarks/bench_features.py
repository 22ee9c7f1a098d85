"""Benchmark: features as of one cut-off for ~10M synthetic transactions of 1M customers, from Parquet.

Measures the whole `valuecast features` path (read Parquet, check every row, compute the features,
write Parquet) in a fresh child process, so that its peak memory is its own; then the speed-up over
``lifetimes.utils.summary_data_from_transaction_data`` on a slice of the same data.

Targets (issue 17; issue 2 asked 20 s and 5x): at most 12 s wall and 4 GiB peak, at least 10x faster
than lifetimes in the same run.

    python -m benchmarks.bench_features [--customers 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "bench-data"
AS_OF = "2023-10-01"


def dataset_files(customers: int) -> tuple[Path, Path]:
    """Generate (once) the synthetic log and a dataset config for it."""
    from features.io import write_frame
    from features.synthetic import SyntheticSpec, generate_transactions

    DATA_DIR.mkdir(exist_ok=True)
    tx_path = DATA_DIR / f"transactions_{customers}.parquet"
    config_path = DATA_DIR / f"synthetic_{customers}.yaml"
    if not tx_path.exists():
        start = time.perf_counter()
        generated = generate_transactions(SyntheticSpec.dense(customers, seed=0))
        write_frame(generated.transactions, tx_path)
        print(f"generated {len(generated.transactions):,} transactions in {time.perf_counter() - start:.1f}s")
    config_path.write_text(
        f"name: synthetic_{customers}\n"
        "transactions:\n"
        f"  path: {tx_path}\n"
        "  columns: {customer_id: customer_id, timestamp: timestamp, amount: amount, category: category}\n"
    )
    return tx_path, config_path


def run_features_child(config_path: Path, out: Path) -> dict[str, float]:
    """Run the features command in a child process; wall time and the child's peak RSS."""
    code = (
        "import sys, time, warnings; warnings.simplefilter('ignore'); t = time.perf_counter();"
        "from valuecast.cli import app;"
        "sys.argv = ['valuecast', 'features', '--data', sys.argv[1], '--as-of', sys.argv[2], '--out', sys.argv[3]];"
        "rc = 0\n"
        "try:\n    app()\nexcept SystemExit as e:\n    rc = e.code or 0\n"
        "print('WALL', time.perf_counter() - t, file=sys.stderr); sys.exit(rc)"
    )
    # The malloc settings that `make` exports (see the Makefile), so that a direct run measures the same.
    env = {
        "MALLOC_MMAP_THRESHOLD_": "4294967296",
        "MALLOC_TRIM_THRESHOLD_": "68719476736",
        "MALLOC_TOP_PAD_": "268435456",
        **os.environ,
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(config_path), AS_OF, str(out)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"features run failed:\n{proc.stderr}")
    inner = next(float(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("WALL"))
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    steps = [line.strip() for line in proc.stderr.splitlines() if line.strip().endswith("s") and "..." in line]
    return {"wall_s": wall, "in_process_s": inner, "peak_gib": peak_kib / 2**20, "steps": steps}  # type: ignore[dict-item]


def compare_with_lifetimes(tx_path: Path) -> dict[str, float]:
    """lifetimes' summary and our features on the same in-memory frame: every purchase before AS_OF.

    Both get the identical frame, once with text ids as read from Parquet (ours then factorises them
    itself) and once with the categorical ids that our row checks hand to the feature code.
    """
    from lifetimes.utils import summary_data_from_transaction_data

    from features.transactions import compute_transaction_features

    tx = pd.read_parquet(tx_path, columns=["customer_id", "timestamp", "amount"])
    tx = tx.loc[(tx["timestamp"] < AS_OF) & (tx["amount"] >= 0)].reset_index(drop=True)
    compute_transaction_features(tx.head(1000), AS_OF)  # load the compiled kernel before timing
    figures: dict[str, float] = {"rows": len(tx)}
    for label, frame in (("text", tx), ("categorical", tx.assign(customer_id=tx["customer_id"].astype("category")))):
        start = time.perf_counter()
        summary_data_from_transaction_data(
            frame,
            "customer_id",
            "timestamp",
            monetary_value_col="amount",
            observation_period_end=pd.Timestamp(AS_OF) - pd.Timedelta(days=1),
        )
        figures[f"lifetimes_{label}_s"] = time.perf_counter() - start
        start = time.perf_counter()
        compute_transaction_features(frame, AS_OF)
        figures[f"ours_{label}_s"] = time.perf_counter() - start
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    tx_path, config_path = dataset_files(args.customers)
    meta = pd.read_parquet(tx_path, columns=["customer_id"])
    n_rows, n_customers = len(meta), meta["customer_id"].nunique()
    del meta

    out = DATA_DIR / "features_out.parquet"
    run = run_features_child(config_path, out)
    speed = compare_with_lifetimes(tx_path)
    speedup = min(
        speed["lifetimes_text_s"] / speed["ours_text_s"], speed["lifetimes_categorical_s"] / speed["ours_categorical_s"]
    )

    print()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"data: {n_rows:,} transactions of {n_customers:,} customers (Parquet), as of {AS_OF}")
    print("features command (read + check + features + write), fresh process:")
    for line in run["steps"]:  # type: ignore[attr-defined]
        print(f"  {line}")
    print(f"  wall {run['wall_s']:.1f} s (target <= 12 s), of which in-process {run['in_process_s']:.1f} s")
    print(f"  peak memory {run['peak_gib']:.2f} GiB (target <= 4 GiB)")
    print(f"vs lifetimes.summary_data_from_transaction_data, same frame of {speed['rows']:,} purchases (all of them):")
    for label in ("text", "categorical"):
        theirs, ours = speed[f"lifetimes_{label}_s"], speed[f"ours_{label}_s"]
        print(f"  {label} ids: lifetimes {theirs:.2f} s, ours (all features) {ours:.2f} s -> {theirs / ours:.1f}x")
    print(f"  lowest speed-up {speedup:.1f}x (target >= 10x)")
    verdict = run["wall_s"] <= 12 and run["peak_gib"] <= 4 and speedup >= 10
    print(f"targets met: {'yes' if verdict else 'NO'}")
    print(json.dumps({"rows": n_rows, "customers": n_customers, **run, **speed, "speedup": speedup}, default=str))


if __name__ == "__main__":
    main()
