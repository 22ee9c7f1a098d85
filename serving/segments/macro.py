"""Macro segments in scoring: the profile of a scored population per macro segment.

The segments themselves come from the dataset's ``macro_segment`` champion (:mod:`training.macro_segment`:
found from behaviour, named, registered like the other models), which scoring calls beside the value
models (:func:`serving.scoring.model_scores`), so that a customer has the same macro segment in the
API and in batch. This module summarises the scored customers per segment for the batch report and
``summary.json``: size, share of predicted value, and the mean CLV, churn and purchase probability.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

PROFILE_COLUMNS = (
    "macro_segment",
    "customers",
    "share_of_customers",
    "share_of_value",
    "mean_clv",
    "mean_churn_probability",
    "mean_purchase_probability",
    "description",
)


def profiles(scores: pd.DataFrame) -> pd.DataFrame | None:
    """One row per macro segment of ``scores`` (the output of scoring), the largest share of predicted
    value first; None when the scores have no macro segment column."""
    if "macro_segment" not in scores.columns or scores.empty:
        return None
    frame = scores.assign(macro_segment=scores["macro_segment"].astype(str))
    grouped = frame.groupby("macro_segment", sort=False)
    total = float(frame["clv"].clip(lower=0).sum())
    table = pd.DataFrame(
        {
            "customers": grouped.size(),
            "share_of_customers": grouped.size() / len(frame),
            "share_of_value": grouped["clv"].apply(lambda v: v.clip(lower=0).sum()) / (total if total > 0 else 1.0),
            "mean_clv": grouped["clv"].mean(),
            "mean_churn_probability": grouped["churn_probability"].mean(),
            "mean_purchase_probability": grouped["purchase_probability"].mean(),
        }
    )
    table["description"] = [_describe(row) for row in table.itertuples()]
    table = table.sort_values("share_of_value", ascending=False).rename_axis("macro_segment").reset_index()
    return table[list(PROFILE_COLUMNS)]


def _describe(row: Any) -> str:
    customers, value = row.share_of_customers, row.share_of_value
    ratio = value / customers if customers > 0 else 0.0
    weight = "more" if ratio >= 1.2 else "less" if ratio <= 0.8 else "about as much"
    return (
        f"{customers:.0%} of customers holding {value:.0%} of predicted value ({weight} than their share); "
        f"churn {row.mean_churn_probability:.0%}, purchase {row.mean_purchase_probability:.0%}"
    )
