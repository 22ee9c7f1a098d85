"""Training sets from several cut-offs: same columns at every cut-off, labels strictly after it."""

from __future__ import annotations

import pandas as pd
import pytest

from features.io import Dataset
from features.pipeline import build_customer_features, build_customer_labels, build_training_set, monthly_cutoffs


def test_monthly_cutoffs_leave_a_full_horizon(cdnow: Dataset) -> None:
    cutoffs = monthly_cutoffs(cdnow, 90)
    assert cutoffs[0] == pd.Timestamp("1997-04-01")  # first month start one horizon after 1997-01-01
    assert cutoffs[-1] == pd.Timestamp("1998-04-01")  # + 90 days = 06-30, within the data
    assert monthly_cutoffs(cdnow, 90, count=3) == cutoffs[-3:]


def test_stacked_training_set_matches_single_cutoffs(cdnow: Dataset) -> None:
    cutoffs = [pd.Timestamp("1997-07-01"), pd.Timestamp("1997-10-01")]
    stacked = build_training_set(cdnow, cutoffs, 90)
    assert list(stacked["cutoff"].unique()) == cutoffs
    for cutoff in cutoffs:
        part = stacked.loc[stacked["cutoff"] == cutoff].drop(columns=["cutoff"]).reset_index(drop=True)
        features = build_customer_features(cdnow, cutoff).frame
        labels = build_customer_labels(cdnow, features["customer_id"], cutoff, 90, [])
        assert len(part) == len(features) == len(labels)
        expected = features.drop(columns=["as_of"]).merge(labels.drop(columns=["as_of"]), on="customer_id")
        pd.testing.assert_frame_equal(part, expected.sort_values("customer_id", ignore_index=True))
    # CDNOW's cohort bought first in Q1 1997: all 23,570 are customers by July.
    assert (stacked["cutoff"] == cutoffs[0]).sum() == 23_570


def test_cdnow_labels_match_a_direct_count(cdnow: Dataset, cdnow_transactions: pd.DataFrame) -> None:
    features = build_customer_features(cdnow, "1997-10-01").frame
    labels = build_customer_labels(cdnow, features["customer_id"], "1997-10-01", 90, []).set_index("customer_id")
    window = cdnow_transactions.loc[
        (cdnow_transactions["timestamp"] >= "1997-10-01") & (cdnow_transactions["timestamp"] < "1997-12-30")
    ]
    spend = window.groupby(window["customer_id"].astype(str))["amount"].sum()
    assert labels["future_spend"].sum() == pytest.approx(spend.sum(), rel=1e-9)
    assert labels["purchased"].sum() == spend.size
    assert labels.loc[spend.index, "future_spend"].to_numpy() == pytest.approx(spend.to_numpy(), rel=1e-9)
