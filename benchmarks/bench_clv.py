"""Benchmark: BG/NBD + Gamma-Gamma fit on one million synthetic customers (issue 3: under 60 s).

The customers are drawn with CDNOW's published parameters, so the fit can also be checked for
recovering them. Timed: the fit on the compressed (frequency, recency, T) rows, and, for scale,
the same fit on one row per customer.

    python -m benchmarks.bench_clv [--customers 1000000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import pandas as pd

from features.synthetic import SyntheticSpec, generate_transactions
from features.transactions import compute_transaction_features
from training.btyd import compress, fit_btyd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    spec = SyntheticSpec(
        customers=args.customers, seed=0, effects=False, refund_rate=0.0, days=546, acquisition_days=84
    )
    start = time.perf_counter()
    generated = generate_transactions(spec)
    as_of = pd.Timestamp(spec.start) + pd.Timedelta(days=spec.days)
    summary = compute_transaction_features(generated.transactions, as_of)
    prepare = time.perf_counter() - start

    start = time.perf_counter()
    model = fit_btyd(summary)
    fit_seconds = time.perf_counter() - start
    rows, _ = compress(
        summary.assign(recency=summary["recency_days"] / 7, T=summary["T_days"] / 7), ["frequency_days", "recency", "T"]
    )

    from lifetimes import BetaGeoFitter

    start = time.perf_counter()
    BetaGeoFitter().fit(summary["frequency_days"], summary["recency_days"] / 7, summary["T_days"] / 7)
    uncompressed = time.perf_counter() - start

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"data: {len(generated.transactions):,} transactions of {args.customers:,} customers "
        f"(generated and summarised in {prepare:.1f} s)"
    )
    print(f"BG/NBD + Gamma-Gamma fit on {len(rows):,} compressed rows: {fit_seconds:.1f} s (target < 60 s)")
    print(f"BG/NBD alone on one row per customer, for comparison: {uncompressed:.1f} s")
    truth = {"bgnbd_r": spec.r, "bgnbd_alpha": spec.alpha, "bgnbd_a": spec.a, "bgnbd_b": spec.b}
    truth |= {"gg_p": spec.p_spend, "gg_q": spec.q, "gg_v": spec.gamma}
    for name, value in truth.items():
        print(f"  {name}: fitted {model.params[name]:.3f}, true {value:.3f}")
    print(f"target met: {'yes' if fit_seconds < 60 else 'NO'}")


if __name__ == "__main__":
    main()
