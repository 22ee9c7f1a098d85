"""Benchmark: the uplift family on Hillstrom with the protocol of issue [3/5].

For each seed (default 0-4): a 70/30 split stratified by arm and visit, the family's own training
(every candidate per arm and outcome, chosen on a validation split of the 70%), and its figures on
the 30%: Qini AUC and uplift at 30% of every candidate and baseline, the winner's, and the next
best action against everyone-gets-arm-X, no one and random (IPW, per 1,000 customers). Then the
same policy at other costs per e-mail, to show where skipping customers pays. Prints Markdown
tables (mean ± sd over the seeds) for docs/model-quality.md, "Uplift (Hillstrom)".

    python -m benchmarks.bench_uplift [--seeds 0 1 2 3 4] [--data hillstrom]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
import warnings

import pandas as pd

from features.config import load_dataset_config
from features.io import load_dataset
from training import uplift
from training.common import Trained
from training.config import ModelConfig, load_model_config

COSTS = (0.1, 0.25, 0.5, 0.75, 1.0)


def markdown(frame: pd.DataFrame, index: bool = False) -> str:
    """A frame as a Markdown table (pandas' to_markdown needs tabulate, which is not a dependency)."""
    if index:
        frame = frame.reset_index()
    cells = [[f"{v:,.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * frame.shape[1]]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def mean_sd(values: pd.Series, digits: int = 3) -> str:
    spread = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
    return f"{values.mean():.{digits}f}{spread}"


def candidate_table(candidates: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds of each candidate's test Qini AUC and uplift@30%, and how often it won."""
    rows = []
    for (arm, outcome, name), part in candidates.groupby(["arm", "outcome", "candidate"], sort=False):
        rows.append(
            {
                "arm": arm,
                "outcome": outcome,
                "candidate": name + (" (baseline)" if part["baseline"].iloc[0] else ""),
                "Qini AUC": mean_sd(part["test_qini_auc"]),
                "uplift@30%": mean_sd(part["test_uplift_at_30"], 4 if outcome != "spend" else 2),
                "won (seeds)": int(part["winner"].sum()),
            }
        )
    return pd.DataFrame(rows)


def winner_table(candidates: pd.DataFrame) -> pd.DataFrame:
    """The chosen model per (arm, outcome): its test figures, mean ± sd over seeds, with the
    response model and random beside it, and the seeds whose interval excluded random."""
    rows = []
    for (arm, outcome), part in candidates.groupby(["arm", "outcome"], sort=False):
        won = part.loc[part["winner"]]
        response = part.loc[part["candidate"] == "response_model"]
        random = part.loc[part["candidate"] == "random"]
        rows.append(
            {
                "arm": arm,
                "outcome": outcome,
                "chosen (seeds)": ", ".join(f"{k} {v}" for k, v in won["candidate"].value_counts().items()),
                "Qini AUC": mean_sd(won["test_qini_auc"]),
                "uplift@30%": mean_sd(won["test_uplift_at_30"], 4 if outcome != "spend" else 2),
                "response model Qini": mean_sd(response["test_qini_auc"]),
                "random Qini": mean_sd(random["test_qini_auc"]),
                "interval excludes 0": int((won["test_qini_auc_lo"] > 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def policy_summary(policies: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in policies.columns if c.endswith(("_per_1000", "_per_send")) and not c.endswith(("_lo", "_hi"))]
    return policies.groupby("policy", sort=False)[columns].agg(lambda v: mean_sd(v, 2 if "1000" in v.name else 4))


def cost_sweep(trained: Trained, data: uplift.CampaignData, seed: int) -> pd.DataFrame:
    """The next best action with other costs per e-mail, on the same test rows, IPW without intervals."""
    rows = []
    for cost in COSTS:
        model = copy.copy(trained.model)
        assert isinstance(model, uplift.UpliftModel)
        model.settings = model.settings.model_copy(update={"costs": dict.fromkeys(data.arms, cost)})
        table = uplift.policy_table(model, data, seed, bootstrap=0).set_index("policy").loc["next_best_action"]
        rows.append({"cost_per_email": cost, "seed": seed, **table.to_dict()})
    return pd.DataFrame(rows)


def run_seed(dataset: object, base: ModelConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    config = base.model_copy(update={"seed": seed})
    trained = uplift.train(dataset, config)  # type: ignore[arg-type]
    data = uplift.prepare(dataset, config)  # type: ignore[arg-type]  # the same split (same seed)
    candidates = trained.tables["candidates"].assign(seed=seed)
    return candidates, trained.tables["policy"].assign(seed=seed), cost_sweep(trained, data, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="hillstrom")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="default: uplift.seeds of the config")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    dataset_config = load_dataset_config(args.data)
    base = load_model_config("uplift", dataset_config.name)
    seeds = args.seeds if args.seeds is not None else (base.uplift.seeds if base.uplift else [0])
    dataset = load_dataset(dataset_config, kinds=("campaigns", "transactions"))
    start = time.perf_counter()
    results = [run_seed(dataset, base, seed) for seed in seeds]
    seconds = time.perf_counter() - start
    candidates, policies, costs = (pd.concat(parts, ignore_index=True) for parts in zip(*results, strict=True))

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.data}: seeds {seeds}, {seconds:.0f} s in all ({seconds / len(seeds):.0f} s per seed)\n")
    print("Chosen model per arm and outcome (test split, mean ± sd over seeds):\n")
    print(markdown(winner_table(candidates)))
    print("\nEvery candidate (test split, mean ± sd over seeds):\n")
    print(markdown(candidate_table(candidates)))
    print("\nNext best action vs simple policies (IPW on the test split, per 1,000 customers, mean ± sd):\n")
    print(markdown(policy_summary(policies), index=True))
    first = policies.loc[policies["seed"] == seeds[0]].set_index("policy")
    shown = [c for c in first.columns if c.startswith("incremental_") and c.endswith(("_1000", "_lo", "_hi"))]
    print(f"\nSeed {seeds[0]} with 95% bootstrap intervals:\n")
    print(markdown(first[["sent_per_1000", *shown]].round(1), index=True))
    sweep = costs.groupby("cost_per_email")[
        ["sent_per_1000", "incremental_visit_per_1000", "incremental_visit_per_send", "incremental_spend_per_1000"]
    ].mean()
    print("\nNext best action by cost per e-mail (mean over seeds):\n")
    print(markdown(sweep.round(3), index=True))
    print(f"\nrun time: {seconds:.0f} s")


if __name__ == "__main__":
    main()
