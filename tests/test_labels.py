"""Labels after a cut-off, hand-computed on tiny logs; the horizon must fit in the data."""

from __future__ import annotations

import pandas as pd
import pytest

from features.labels import check_horizon, compute_transaction_labels
from features.validate import DataError


def log(rows: list[tuple[str, str, float, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount", "category"])
    return frame.assign(timestamp=pd.to_datetime(frame["timestamp"], format="mixed"))


@pytest.fixture()
def tx() -> pd.DataFrame:
    return log(
        [
            ("active_buyer", "2024-03-15", 10.0, "books"),
            ("active_buyer", "2024-04-02 10:00", 20.0, "music"),
            ("active_buyer", "2024-04-02 10:00", 5.0, "books"),  # same order
            ("active_buyer", "2024-04-20", 7.0, "books"),
            ("active_buyer", "2024-04-25", -5.0, "books"),  # refund
            ("active_lapsed", "2024-02-01", 10.0, "books"),
            ("old_lapsed", "2022-01-01", 10.0, "books"),  # outside the 365-day look-back
            ("late_buyer", "2024-01-10", 10.0, "games"),
            ("late_buyer", "2024-05-01", 50.0, "games"),  # on the window end: not in the window
            ("end", "2024-06-30", 1.0, "books"),
        ]
    )


def test_hand_computed_labels(tx: pd.DataFrame) -> None:
    ids = ["active_buyer", "active_lapsed", "old_lapsed", "late_buyer"]
    labels = compute_transaction_labels(
        tx, ids, "2024-04-01", 30, churn_lookback_days=365, categories=["books", "music"]
    ).set_index("customer_id")
    buyer = labels.loc["active_buyer"]
    assert buyer["purchased"] == 1
    assert buyer["future_orders"] == 2
    assert buyer["future_spend"] == 32
    assert buyer["future_refunds"] == 5
    assert buyer["churned"] == 0
    assert buyer["purchased_books"] == 1 and buyer["purchased_music"] == 1
    lapsed = labels.loc["active_lapsed"]
    assert lapsed["purchased"] == 0 and lapsed["churned"] == 1
    assert pd.isna(labels.loc["old_lapsed", "churned"])  # not active in the look-back: cannot churn
    assert labels.loc["late_buyer", "purchased"] == 0  # 05-01 is the first day after the window
    assert labels.loc["late_buyer", "churned"] == 1
    assert list(labels.index) == ids


def test_cancellation_dates_define_churn(tx: pd.DataFrame) -> None:
    cancellations = pd.Series(
        pd.to_datetime(["2024-04-10", "2024-03-01", None]), index=["active_buyer", "active_lapsed", "late_buyer"]
    )
    labels = compute_transaction_labels(
        tx, ["active_buyer", "active_lapsed", "late_buyer"], "2024-04-01", 30, cancellations=cancellations
    ).set_index("customer_id")
    assert labels.loc["active_buyer", "churned"] == 1  # cancelled within the window, though it bought
    assert pd.isna(labels.loc["active_lapsed", "churned"])  # cancelled before the cut-off
    assert labels.loc["late_buyer", "churned"] == 0  # never cancelled


def test_horizon_past_the_data_is_refused(tx: pd.DataFrame) -> None:
    check_horizon(tx, pd.Timestamp("2024-06-01"), 30)  # ends 07-01 = day after the last transaction
    with pytest.raises(DataError, match=r"ends 2024-07-02, after the last transaction day 2024-06-30"):
        check_horizon(tx, pd.Timestamp("2024-06-02"), 30)
