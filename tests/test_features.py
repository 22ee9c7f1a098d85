"""Customer features on tiny inline logs, with every expected value worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.transactions import compute_transaction_features, sort_by_customer_and_time, top_categories


def log(rows: list[tuple[str, str, float, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount", "category"]).assign(
        timestamp=lambda f: pd.to_datetime(f["timestamp"])
    )


@pytest.fixture()
def two_customers() -> pd.DataFrame:
    return log(
        [
            # a: three purchase days, two rows on 2024-03-01 (one order: same timestamp), a refund
            ("a", "2024-01-01 10:00", 10.0, "books"),
            ("a", "2024-03-01 09:00", 20.0, "music"),
            ("a", "2024-03-01 09:00", 5.0, "books"),
            ("a", "2024-03-20 12:00", -5.0, "books"),
            ("a", "2024-04-10 08:00", 40.0, "music"),
            # b: one purchase only
            ("b", "2024-02-15 18:30", 30.0, "games"),
            # after the cut-off: must be ignored
            ("a", "2024-05-01 00:00", 999.0, "games"),
            ("c", "2024-05-02 00:00", 1.0, "books"),
        ]
    )


def test_hand_computed_features(two_customers: pd.DataFrame) -> None:
    f = compute_transaction_features(two_customers, "2024-05-01", categories=["music", "books"]).set_index(
        "customer_id"
    )
    assert list(f.index) == ["a", "b"]  # c's only purchase is on the cut-off day: not yet a customer
    a, b = f.loc["a"], f.loc["b"]
    # BTYD by day: purchase days 01-01, 03-01, 04-10; last day of history 04-30.
    assert a["frequency_days"] == 2
    assert a["recency_days"] == 100  # 01-01 -> 04-10
    assert a["T_days"] == 120  # 01-01 -> 04-30
    assert a["monetary_value_days"] == pytest.approx((25 + 40) / 2)
    # weeks start on Monday: 2024-01-01 is a Monday; 03-01 is in the week of 02-26; 04-10 of 04-08.
    assert a["frequency_weeks"] == 2
    assert a["recency_weeks"] == 14
    assert a["T_weeks"] == 17  # week of 04-30 starts 04-29
    assert a["order_count"] == 3
    assert a["total_spend"] == 75
    assert a["avg_order_value"] == 25
    assert a["refund_share"] == pytest.approx(5 / 75)
    assert a["spend_last_30d"] == 40  # since 04-01
    assert a["orders_last_90d"] == 2  # since 2024-02-01
    assert a["spend_last_365d"] == 75
    gaps = np.array([60 - 1 / 24, 40 - 1 / 24])  # 01-01 10:00 -> 03-01 09:00 (leap year) -> 04-10 08:00
    assert a["mean_days_between_orders"] == pytest.approx(gaps.mean())
    assert a["std_days_between_orders"] == pytest.approx(gaps.std(ddof=1))
    assert a["days_since_first_order"] == 121
    assert a["days_since_last_order"] == 21
    # last 90 days (from 02-01): 25 + 40; the 90 before: 10
    assert a["spend_trend_90d"] == pytest.approx((65 - 10) / 75)
    assert a["category_share_music"] == pytest.approx(60 / 75)
    assert a["category_share_books"] == pytest.approx(15 / 75)

    assert b["frequency_days"] == 0
    assert b["recency_days"] == 0
    assert b["monetary_value_days"] == 0
    assert b["T_days"] == 75  # 02-15 -> 04-30
    assert np.isnan(b["mean_days_between_orders"])
    assert np.isnan(b["std_days_between_orders"])
    assert b["category_share_music"] == 0


def test_order_id_defines_orders() -> None:
    tx = log([("a", "2024-01-01 10:00", 10.0, "x"), ("a", "2024-01-01 11:00", 5.0, "x")])
    without = compute_transaction_features(tx, "2024-02-01").iloc[0]
    with_ids = compute_transaction_features(tx.assign(order_id=["o1", "o1"]), "2024-02-01").iloc[0]
    assert without["order_count"] == 2  # two timestamps, two orders
    assert with_ids["order_count"] == 1  # one order id
    assert with_ids["frequency_days"] == without["frequency_days"] == 0


def test_refund_only_customer_has_a_row() -> None:
    tx = log([("a", "2024-01-05", -10.0, "x"), ("b", "2024-01-01", 10.0, "x")])
    f = compute_transaction_features(tx, "2024-02-01").set_index("customer_id")
    assert f.loc["a", "order_count"] == 0
    assert f.loc["a", "refund_share"] == 1.0
    assert f.loc["a", "days_since_first_order"] == 27


def test_top_categories_rank_by_spend_before_cutoff(two_customers: pd.DataFrame) -> None:
    # before 05-01: music 60, games 30, books 15 (the refund is not a purchase); games 999 is after
    assert top_categories(two_customers, "2024-05-01", 2) == ["music", "games"]


def test_input_frame_is_not_changed(two_customers: pd.DataFrame) -> None:
    before = two_customers.copy()
    compute_transaction_features(two_customers, "2024-05-01")
    pd.testing.assert_frame_equal(two_customers, before)


@pytest.mark.parametrize("time_sorted", [True, False])
def test_sort_by_customer_and_time_matches_lexsort(time_sorted: bool) -> None:
    rng = np.random.default_rng(3)
    code = rng.integers(0, 50, 2_000).astype(np.int32)
    ts = rng.integers(0, 100, 2_000).astype(np.int64)
    if time_sorted:
        ts = np.sort(ts)
    np.testing.assert_array_equal(sort_by_customer_and_time(code, ts), np.lexsort((ts, code)))


def test_more_recent_purchase_never_raises_days_since_last_order() -> None:
    base = log([("a", "2024-01-01", 10.0, "x"), ("a", "2024-02-01", 10.0, "x")])
    later = log([("a", "2024-01-01", 10.0, "x"), ("a", "2024-03-01", 10.0, "x")])
    f_base = compute_transaction_features(base, "2024-04-01").iloc[0]
    f_later = compute_transaction_features(later, "2024-04-01").iloc[0]
    assert f_later["days_since_last_order"] < f_base["days_since_last_order"]
    assert f_later["recency_days"] > f_base["recency_days"]
