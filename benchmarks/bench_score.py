"""Benchmark: ``make score`` on 1M synthetic customers with 10M transactions (issue 5).

Champions are trained (churn, propensity with its category models, CLV) on a 20,000-customer draw
of the same generator into a temporary MLflow store; then the real command
``valuecast score --data <1M config> --out ... --as-of ...`` runs in a child process, end to end: read
and check the Parquet log, features, the three customer models, segment cut-offs frozen on the
population, segments, and every output file. Printed: wall time and the child's peak memory; then
the same with ``--engine spark`` (local[*]).

    python -m benchmarks.bench_score [--customers 1000000] [--skip-spark]

Targets (issue 17): local engine at most 45 s wall and 4 GiB peak on a 2-core machine; Spark local
mode at most 1.5x the local engine's wall time, with the same scores.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

from benchmarks.bench_features import AS_OF, DATA_DIR, dataset_files
from features.config import PROJECT_ROOT


def train_champions(env: dict[str, str], name: str) -> None:
    """Champions registered for the dataset ``name`` (models are per dataset: the scored data's name),
    trained on a 20,000-customer draw of the same generator."""
    from features.io import write_frame
    from features.synthetic import SyntheticSpec, generate_transactions
    from training.run import train_and_log

    small = DATA_DIR / "train_20000.parquet"
    config = DATA_DIR / "train_20000.yaml"
    if not small.exists():
        write_frame(generate_transactions(SyntheticSpec.dense(20_000, seed=1)).transactions, small)
    config.write_text(
        f"name: {name}\n"
        "transactions:\n"
        f"  path: {small}\n"
        "  columns: {customer_id: customer_id, timestamp: timestamp, amount: amount, category: category}\n"
    )
    # two years of data: CLV over a 90-day horizon (the shipped 365 days would need 730 days before the test)
    clv_config = DATA_DIR / "clv_90.yaml"
    shipped = yaml.safe_load((PROJECT_ROOT / "configs" / "models" / "clv.yaml").read_text())
    clv_config.write_text(yaml.safe_dump({**shipped, "horizon_days": 90, "datasets": {}}))
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        for family in ("churn", "propensity", "clv"):
            path = clv_config if family == "clv" else None
            outcome = train_and_log(family, str(config), config_path=path, echo=lambda _: None)
            print(f"  trained {family}: {outcome.trained.report.summary_line()}")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def bench_env(folder: Path) -> dict[str, str]:
    """The environment of the benchmark's commands: a temporary MLflow store and segment folder under
    ``folder``, and the allocator settings the Makefile exports."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "VALUECAST_ARTIFACT_ROOT": (folder / "artifacts").as_uri(),
        "VALUECAST_SEGMENTS_DIR": str(folder / "segments"),
        "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "4294967296"),
        "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_", "68719476736"),
        "MALLOC_TOP_PAD_": os.environ.get("MALLOC_TOP_PAD_", "268435456"),
    }


def prepare(customers: int, prefix: str) -> tuple[Path, Path, Path, dict[str, str]]:
    """The synthetic data of ``customers`` (generated once), a temporary folder and its environment
    (:func:`bench_env`), and champions registered there for that data's dataset: (transactions file,
    dataset config, folder, environment)."""
    tx_path, config_path = dataset_files(customers)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    env = bench_env(folder)
    print("training champions on 20,000 synthetic customers into a temporary store ...")
    train_champions(env, yaml.safe_load(config_path.read_text())["name"])
    return tx_path, config_path, folder, env


def run_child(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run the command: (wall seconds, peak memory in GiB of its largest process, its output). The
    peak is this child's own (``wait4``), not the largest of every child so far."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        output, errors = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{output}\n{errors}")
    return wall, usage.ru_maxrss / 2**20, output


def differences(local: Path, spark: Path) -> str:
    """'' when the two runs' scores.parquet hold the same rows (numbers within 1e-9), else what differs."""
    import numpy as np
    import pandas as pd

    ours, theirs = (
        pd.read_parquet(d / "scores.parquet").sort_values("customer_id", ignore_index=True) for d in (local, spark)
    )
    if list(ours.columns) != list(theirs.columns) or len(ours) != len(theirs):
        return f"NO: columns or row counts differ ({ours.shape} vs {theirs.shape})"
    for column in ours.columns:
        a, b = ours[column], theirs[column]
        if a.dtype.kind == "f" and b.dtype.kind == "f":
            same = bool(np.allclose(a.to_numpy(), b.to_numpy(), rtol=0, atol=1e-9, equal_nan=True))
        else:
            same = (
                a.isna().tolist() == b.isna().tolist()
                and a.dropna().astype(str).tolist() == b.dropna().astype(str).tolist()
            )
        if not same:
            return f"NO: column {column} differs"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--skip-spark", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    tx_path, config_path, folder, env = prepare(args.customers, "valuecast-bench-score-")
    valuecast = str(Path(sys.executable).with_name("valuecast"))
    command = [valuecast, "score", "--data", str(config_path), "--as-of", AS_OF]

    print(f"scoring {args.customers:,} customers (local engine) ...")
    wall, peak, output = run_child([*command, "--out", str(folder / "out-local")], env)
    print(output.strip())
    results = [("local", wall, peak)]
    if not args.skip_spark:
        print(f"scoring {args.customers:,} customers (spark engine, local[*]) ...")
        wall, peak, _ = run_child([*command, "--out", str(folder / "out-spark"), "--engine", "spark"], env)
        results.append(("spark", wall, peak))

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"data: {tx_path.name}"
    )
    for engine, wall, peak in results:
        if engine == "local":
            note = f" (targets: <= 45 s, <= 4 GiB) {'met' if wall <= 45 and peak <= 4 else 'MISSED'}"
        else:
            note = " (largest process of the run: the driver or Spark's JVM)"
        print(f"make score ENGINE={engine}: {wall:.1f} s wall, peak memory {peak:.2f} GiB{note}")
    if len(results) == 2:
        print(f"scores identical between engines: {differences(folder / 'out-local', folder / 'out-spark') or 'yes'}")
        ratio = results[1][1] / results[0][1]
        print(f"spark / local wall time: {ratio:.2f}x (target <= 1.5x) {'met' if ratio <= 1.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
