"""Benchmark: look-alike quality on CDNOW and Online Retail, the positive-unlabelled classifier next to
the nearest-neighbour baseline.

Protocol (issue 16, item 3): hide a random 20% of the seed, rank every customer outside the other
80%, and count the hidden members among the top N, with N the default audience size (the seed's
size); random finds N / (customers ranked) of them. Repeated for several random hold-outs (the
classifier's folds follow the same random state); mean ± sd.

Seeds, both "tier A" under the shipped segment rules (the customers who together make up the top
50% of value, configs/segments.yaml), without trained champions:

- ``past-value tier A``: tier A of spend so far at the end of the data (the rules'
  ``past_value_tier``). It is a function of the features themselves (``total_spend`` is one), so
  this measures whether the method finds a seed that is written in the inputs: an easy case.
- ``realised-value tier A``: tier A of the spend in the 180 days after an earlier cut-off, with the
  features as of that cut-off: what a perfect CLV model's tier A would hold. Nothing of it is in the
  inputs, so this is the harder, honest case.

    python -m benchmarks.bench_lookalike [--data cdnow online_retail] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
import pandas as pd

from features.config import load_dataset_config
from features.io import load_dataset
from features.labels import compute_transaction_labels
from serving.segments.lookalike import METHODS, Population, customer_population, measure_quality
from serving.segments.rules import freeze, load_rules

# An earlier cut-off per dataset that leaves 180 days of data after it.
CUTOFFS = {"cdnow": "1998-01-01", "online_retail": "2011-06-01", "cdnow_sample": "1998-01-01"}
HORIZON_DAYS = 180


def realised_tier_a(population: Population, transactions: pd.DataFrame) -> list[str]:
    """Customers of the population in tier A of their spend in the HORIZON_DAYS after its cut-off."""
    labels = compute_transaction_labels(transactions, population.ids, population.as_of, HORIZON_DAYS)
    spend = labels["future_spend"].to_numpy(dtype=float)
    frozen = freeze(pd.DataFrame({"clv": spend, "total_spend": spend}), load_rules(), "realised spend")
    return [str(i) for i in population.ids[spend >= frozen.value_floors["A"]]]


def measure(name: str, population: Population, seed: list[str], repeats: int) -> list[dict[str, object]]:
    rows = []
    for method in METHODS:
        for state in range(repeats):
            start = time.perf_counter()
            quality = measure_quality(population, seed, method, len(seed), random_state=state)
            rows.append(
                {"seed": name, **quality.as_dict(), "random_state": state, "seconds": time.perf_counter() - start}
            )
    return rows


def mean_sd(values: pd.Series, digits: int = 3) -> str:
    return (
        f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
        if len(values) > 1
        else f"{values.mean():.{digits}f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["cdnow", "online_retail"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"# look-alike quality: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    for data in args.data:
        dataset = load_dataset(load_dataset_config(data))
        assert dataset.transactions is not None
        rows: list[dict[str, object]] = []
        now = customer_population(dataset)
        past = [str(i) for i in now.ids[(now.facts["past_value_tier"] == "A").to_numpy()]]
        rows += measure("past-value tier A", now, past, args.repeats)
        earlier = customer_population(dataset, pd.Timestamp(CUTOFFS[data]))
        rows += measure(
            f"realised-value tier A ({HORIZON_DAYS} d after {CUTOFFS[data]})",
            earlier,
            realised_tier_a(earlier, dataset.transactions.frame),
            args.repeats,
        )
        table = pd.DataFrame(rows)
        print(f"\n## {data}: {len(now.ids):,} customers; seeds and N = seed size; {args.repeats} random hold-outs\n")
        print("| seed | customers | seed size | hidden | N | method | recall@N | random | lift | seconds |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for (seed, method), part in table.groupby(["seed", "method"], sort=False):
            customers = len(now.ids) if seed.startswith("past") else len(earlier.ids)
            print(
                f"| {seed} | {customers:,} | {part['top_n'].iat[0]:,} | {part['hidden'].iat[0]:,} | "
                f"{part['top_n'].iat[0]:,} | {method} | {mean_sd(part['recall_at_n'])} | "
                f"{part['random_recall_at_n'].mean():.3f} | {mean_sd(part['lift'], 2)} | "
                f"{np.mean(part['seconds']):.1f} |"
            )


if __name__ == "__main__":
    main()
