"""``make compare``: the runs of an experiment side by side, sorted by a metric, and a figure.

Pure functions over MLflow's run table (``mlflow.search_runs``: ``params.*``, ``metrics.*`` and
``tags.*`` columns); :mod:`training.tracking` fetches it. Baseline child runs are left out (their
figures are on their parent's row as ``baseline``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from experiments.sweep import LOWER_IS_BETTER

# Settings shown when they differ between the listed runs (the ones a sweep searches, and the knobs
# people change by hand), in this order.
KEY_PARAMS = (
    "xgb_max_depth",
    "xgb_learning_rate",
    "xgb_n_estimators",
    "xgb_min_child_weight",
    "xgb_subsample",
    "xgb_colsample_bytree",
    "xgb_reg_lambda",
    "xgb_objective",
    "calibration",
    "feed_btyd",
    "horizon_days",
    "exclude_features",
)


def default_metric(runs: pd.DataFrame) -> str:
    """The runs' primary metric; for a sweep, the one its trials are chosen by (``val_<metric>``)."""
    tags = runs.get("tags.primary_metric", pd.Series(dtype=object)).dropna()
    if tags.empty:
        return "roc_auc"
    sweep = runs.get("tags.sweep", pd.Series(dtype=object)).eq("true").any()
    primary = str(tags.str.removeprefix("val_").mode().iloc[0])
    return f"val_{primary}" if sweep else primary


def _baseline(runs: pd.DataFrame, metric: str) -> pd.Series:
    """Per run, the best baseline's figure on the same metric and window (``[val_]baseline_<name>_<m>``)."""
    prefix, bare = ("val_", metric.removeprefix("val_")) if metric.startswith("val_") else ("", metric)
    columns = [
        c
        for c in runs.columns
        if c.startswith(f"metrics.{prefix}baseline_") and c.endswith(f"_{bare}") and not c.endswith(f"_val_{bare}")
    ]
    if not columns:
        return pd.Series(np.nan, index=runs.index)
    values = runs[columns].astype(float)
    return values.min(axis=1) if bare in LOWER_IS_BETTER else values.max(axis=1)


def comparison_table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per run (baselines and a training run's other candidates left out), best first: run name,
    model, the key settings that differ between runs, the metric, the best baseline on it, a few more
    metrics, the registered version."""
    if runs.empty:
        raise ValueError("the experiment has no runs yet")
    baseline = runs.get("tags.baseline", pd.Series(index=runs.index, dtype=object)).eq("true")
    # a training run's candidates are its child runs (tag winner): the parent already is the winner
    candidate = runs.get("tags.winner", pd.Series(index=runs.index, dtype=object)).notna()
    listed = runs.loc[~baseline & ~candidate].copy()
    column = f"metrics.{metric}"
    if column not in listed.columns or listed[column].isna().all():
        known = sorted(c.removeprefix("metrics.") for c in listed.columns if c.startswith("metrics."))
        known = [k for k in known if "baseline_" not in k]
        raise ValueError(f"no run has the metric '{metric}'; the runs have: {', '.join(known)}")
    table = pd.DataFrame(
        {
            "run": listed.get("tags.mlflow.runName", pd.Series("", index=listed.index)),
            "model": listed.get("tags.model", pd.Series("", index=listed.index)),
            "status": listed["status"],
        }
    )
    for key in KEY_PARAMS:
        values = listed.get(f"params.{key}")
        if values is not None and values.dropna().nunique() > 1:
            table[key.removeprefix("xgb_")] = values
    table[metric] = listed[column].astype(float)
    table["baseline"] = _baseline(listed, metric)
    prefix, bare = ("val_", metric.removeprefix("val_")) if metric.startswith("val_") else ("", metric)
    for other in ("pr_auc", "brier", "lift_top_decile", "top20_capture", "aggregate_error"):
        name = f"{prefix}{other}"
        if other != bare and f"metrics.{name}" in listed.columns:
            table[name] = listed[f"metrics.{name}"].astype(float)
    if prefix and f"metrics.{bare}" in listed.columns:  # a sweep's best settings on the test window
        table[f"test_{bare}"] = listed[f"metrics.{bare}"].astype(float)
    for name, tag in (("version", "tags.registered_version"), ("alias", "tags.promotion_alias")):
        table[name] = listed.get(tag, pd.Series(index=listed.index, dtype=object)).fillna("")
    table["run_id"] = listed["run_id"]
    ascending = bare in LOWER_IS_BETTER
    table = table.dropna(subset=[metric]).sort_values(metric, ascending=ascending, kind="stable")
    return table.reset_index(drop=True)


def comparison_figure(table: pd.DataFrame, metric: str, title: str, top: int = 25) -> Any:
    """Horizontal bars of the metric per run (best on top), the best baseline as a marker."""
    from matplotlib.figure import Figure

    shown = table.head(top).iloc[::-1]
    labels = [str(r)[:60] for r in shown["run"]]
    figure = Figure(figsize=(8, 1.2 + 0.32 * len(shown)), layout="constrained")
    axes = figure.add_subplot()
    axes.barh(labels, shown[metric], color="tab:blue", label="model")
    if shown["baseline"].notna().any():
        axes.scatter(shown["baseline"], labels, color="tab:orange", marker="|", s=200, zorder=3, label="best baseline")
    values = pd.concat([shown[metric], shown["baseline"]]).dropna()
    if not values.empty:
        low, high = float(values.min()), float(values.max())
        pad = max((high - low) * 0.15, 1e-3)
        axes.set_xlim(max(low - pad, 0.0) if low >= 0 else low - pad, high + pad)
    axes.set(xlabel=metric, title=title)
    axes.legend(loc="best", fontsize="small")
    return figure
