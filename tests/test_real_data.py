"""Data checks on the real datasets in ../shared/data: what their README says must hold here."""

from __future__ import annotations

import pytest

from features.pipeline import build_customer_features, build_customer_labels, build_lead_features
from tests.conftest import load_real

pytestmark = pytest.mark.real_data


def test_online_retail_every_row_is_accounted_for() -> None:
    dataset = load_real("online_retail")
    assert dataset.transactions is not None
    checked = dataset.transactions
    assert len(checked.frame) + len(checked.quarantine) == 541_909
    reasons = checked.quarantine["reason"]
    assert reasons.str.startswith("CustomerID: have an empty customer_id").sum() == 135_080
    assert checked.frame["customer_id"].nunique() == 4_372
    # README: sum(Quantity * UnitPrice) over every row = 9,747,747.93. Rows with an id plus the
    # quarantined ones must add up to it (quarantine keeps the original values).
    quarantined = (checked.quarantine["Quantity"] * checked.quarantine["UnitPrice"]).sum()
    assert checked.frame["amount"].sum() + quarantined == pytest.approx(9_747_747.93, abs=0.01)
    assert "17850" in set(checked.frame["customer_id"].astype(str))  # float ids lose their '.0'
    assert (checked.frame["amount"] < 0).sum() > 0  # returns are kept, as refunds


def test_online_retail_features_and_labels() -> None:
    dataset = load_real("online_retail")
    features = build_customer_features(dataset, "2011-09-01")
    assert len(features.categories) == 6
    assert "attr_country__united_kingdom" in features.frame.columns
    labels = build_customer_labels(dataset, features.frame["customer_id"], "2011-09-01", 90, features.categories)
    assert 0.3 < labels["purchased"].mean() < 0.8
    assert features.frame["refund_share"].max() > 0


def test_x_education_leads() -> None:
    dataset = load_real("x_education")
    assert dataset.leads is not None
    leads = build_lead_features(dataset).frame
    assert len(leads) == 9_240
    assert int(leads["converted"].sum()) == 3_561
    leaking = ("tags", "lead_quality", "lead_profile", "last_notable_activity", "asymmetrique")
    assert not [c for c in leads.columns if any(word in c for word in leaking)]
    assert not [c for c in leads.columns if c.endswith("__select")]  # 'Select' means not answered


def test_telco_snapshot() -> None:
    dataset = load_real("telco")
    features = build_customer_features(dataset, "2024-01-01").frame
    labels = build_customer_labels(dataset, features["customer_id"], "2024-01-01", 90, [])
    assert len(features) == 7_043
    assert int(labels["churned"].sum()) == 1_869
    # 11 blank TotalCharges (new customers) stay missing, and the column is numeric.
    assert features["attr_totalcharges"].isna().sum() == 11
