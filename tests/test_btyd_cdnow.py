"""The BTYD summary must equal lifetimes' own for every CDNOW customer, by day and by week."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifetimes.utils import summary_data_from_transaction_data

from features.transactions import compute_transaction_features

SUMMARY = ["frequency", "recency", "T", "monetary_value"]


@pytest.mark.parametrize("as_of", ["1998-07-01", "1997-10-01"])
@pytest.mark.parametrize(("freq", "suffix"), [("D", "days"), ("W", "weeks")])
def test_btyd_summary_equals_lifetimes(cdnow_transactions: pd.DataFrame, as_of: str, freq: str, suffix: str) -> None:
    tx = cdnow_transactions
    before = tx.loc[tx["timestamp"] < as_of]
    expected = summary_data_from_transaction_data(
        before,
        "customer_id",
        "timestamp",
        monetary_value_col="amount",
        observation_period_end=pd.Timestamp(as_of) - pd.Timedelta(days=1),
        freq=freq,
    )
    ours = compute_transaction_features(tx, as_of).set_index("customer_id")
    ours = ours[[f"{c}_{suffix}" for c in SUMMARY]].set_axis(SUMMARY, axis=1)

    assert sorted(ours.index) == sorted(expected.index.astype(str))
    ours = ours.loc[expected.index]
    for column in ["frequency", "recency", "T"]:
        np.testing.assert_array_equal(ours[column].to_numpy(), expected[column].to_numpy(), err_msg=column)
    np.testing.assert_allclose(ours["monetary_value"], expected["monetary_value"], rtol=1e-12, atol=1e-9)


def test_all_cdnow_customers_and_purchases_are_read(cdnow_transactions: pd.DataFrame) -> None:
    # Fader & Hardie's CDNOW master file: 23,570 customers, 69,659 purchase records.
    assert cdnow_transactions["customer_id"].nunique() == 23_570
    assert len(cdnow_transactions) == 69_659
    assert cdnow_transactions["timestamp"].min() == pd.Timestamp("1997-01-01")
    assert cdnow_transactions["timestamp"].max() == pd.Timestamp("1998-06-30")
