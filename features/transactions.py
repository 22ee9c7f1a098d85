"""Customer features from a transaction log, as of a cut-off date.

Only transactions dated before ``as_of`` are read, so the features of a cut-off never depend on what
happened after it. Everything is computed with sorted numpy arrays and ``reduceat``/``bincount``
rather than pandas ``groupby``: ten million rows fit the 20-second budget on two cores that way.

Conventions (docs/data-contract.md):
- A purchase is a row with amount >= 0; a refund a row with amount < 0.
- The BTYD summary follows ``lifetimes.utils.summary_data_from_transaction_data`` exactly, with
  ``observation_period_end = as_of - 1 day`` (the last day of history): periods are calendar days
  (``_days``) or Monday-based weeks (``_weeks``, pandas' ``W`` periods); frequency is the number of
  periods with a purchase after the first, recency and T are measured between period starts, and
  monetary_value is the mean spend of the repeat periods (0 without repeats).
- An order is one order_id, or, without order ids, one distinct timestamp of a customer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

NS_PER_DAY = 86_400 * 10**9
# 1970-01-01 was a Thursday: shifting by 3 days makes weeks start on Monday, as pandas' 'W' periods do.
EPOCH_WEEKDAY_SHIFT = 3


@dataclass(frozen=True)
class _Sorted:
    """Purchase rows sorted by (customer, timestamp), with the run boundaries needed below."""

    code: np.ndarray
    day: np.ndarray
    ts: np.ndarray
    amount: np.ndarray


def week_of_day(day: np.ndarray | int) -> np.ndarray:
    """Monday-based week number of a day number (days since 1970-01-01)."""
    return (np.asarray(day) + EPOCH_WEEKDAY_SHIFT) // 7


def category_column(category: str) -> str:
    slug = re.sub(r"[^0-9a-z]+", "_", str(category).lower()).strip("_") or "blank"
    return f"category_share_{slug}"


def top_categories(transactions: pd.DataFrame, as_of: pd.Timestamp | str, k: int) -> list[str]:
    """The k categories with the most purchase spend before ``as_of`` (ties broken by name)."""
    if k == 0 or "category" not in transactions.columns:
        return []
    before = transactions.loc[(transactions["timestamp"] < pd.Timestamp(as_of)) & (transactions["amount"] >= 0)]
    return _rank_categories(_category_labels(before["category"].to_numpy()), before["amount"].to_numpy(), k)


def _category_labels(values: np.ndarray) -> np.ndarray:
    return pd.Series(values, dtype="string").fillna("(none)").to_numpy(dtype=object)


def _rank_categories(category: np.ndarray, amount: np.ndarray, k: int) -> list[str]:
    totals = pd.Series(amount).groupby(category).sum()
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return [str(name) for name, _ in ranked[:k]]


def _runs(*keys: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal consecutive key tuples in sorted arrays."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def _per_customer(code_at_run: np.ndarray, values: np.ndarray, n_customers: int) -> np.ndarray:
    return np.bincount(code_at_run, weights=values, minlength=n_customers)


def _btyd_summary(
    code: np.ndarray, period: np.ndarray, period_sum: np.ndarray, end_period: int, n: int
) -> dict[str, np.ndarray]:
    """frequency, recency, T, monetary_value from per-(customer, period) spend, sorted by customer.

    ``code`` and ``period`` hold one entry per (customer, period) with a purchase.
    """
    count = np.bincount(code, minlength=n).astype(np.float64)
    first_run = np.zeros(n, dtype=np.int64)
    has = count > 0
    starts = _runs(code)
    first_run[code[starts]] = starts
    last_run = np.zeros(n, dtype=np.int64)
    ends = np.r_[starts[1:], len(code)] - 1 if len(code) else np.zeros(0, dtype=np.int64)
    last_run[code[ends]] = ends
    first_period = np.where(has, period[first_run] if len(period) else 0, end_period).astype(np.float64)
    last_period = np.where(has, period[last_run] if len(period) else 0, end_period).astype(np.float64)
    total = np.bincount(code, weights=period_sum, minlength=n)
    first_sum = np.where(has, period_sum[first_run] if len(period_sum) else 0.0, 0.0)
    frequency = np.maximum(count - 1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(frequency > 0, (total - first_sum) / np.maximum(frequency, 1), 0.0)
    return {
        "frequency": frequency,
        "recency": np.where(has, last_period - first_period, 0.0),
        "T": end_period - first_period,
        "monetary_value": monetary,
    }


def compute_transaction_features(
    transactions: pd.DataFrame,
    as_of: pd.Timestamp | str,
    *,
    windows_days: Sequence[int] = (30, 90, 180, 365),
    categories: Sequence[str] | None = None,
    top_k: int = 5,
) -> pd.DataFrame:
    """One row per customer with any transaction before ``as_of``; see the module docstring.

    ``categories`` fixes the category-share columns (use the same list across cut-offs); by default
    the ``top_k`` categories by spend before ``as_of``.
    """
    as_of = pd.Timestamp(as_of).normalize()
    as_of_ns = as_of.value
    as_of_day = as_of_ns // NS_PER_DAY
    end_day = as_of_day - 1  # lifetimes' observation_period_end: the last day of history

    ts_all = transactions["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    keep = ts_all < as_of_ns
    ids = transactions["customer_id"].to_numpy()[keep]
    code_all, uniques = pd.factorize(ids, sort=True)
    n = len(uniques)
    ts_all = ts_all[keep]
    amount_all = transactions["amount"].to_numpy(dtype=np.float64)[keep]

    # Sort by (customer, timestamp) once; every later step walks runs of this order.
    order = np.lexsort((ts_all, code_all))
    code_all, ts_all, amount_all = code_all[order], ts_all[order], amount_all[order]
    day_all = ts_all // NS_PER_DAY
    category_all = None
    if "category" in transactions.columns:
        category_all = transactions["category"].to_numpy()[keep][order]
    order_all = None
    if "order_id" in transactions.columns:
        order_all = pd.factorize(transactions["order_id"].to_numpy()[keep][order])[0]

    features: dict[str, np.ndarray] = {}
    is_purchase = amount_all >= 0
    refund_amount = _per_customer(code_all[~is_purchase], -amount_all[~is_purchase], n)
    first_seen_day = np.full(n, end_day, dtype=np.int64)
    first_rows = _runs(code_all)
    first_seen_day[code_all[first_rows]] = day_all[first_rows]

    code, ts, day, amount = (
        code_all[is_purchase],
        ts_all[is_purchase],
        day_all[is_purchase],
        amount_all[is_purchase],
    )

    # BTYD summaries: sum spend per (customer, day), then per (customer, week).
    day_starts = _runs(code, day)
    day_code, day_value = code[day_starts], day[day_starts]
    day_sum = np.add.reduceat(amount, day_starts) if len(day_starts) else np.zeros(0)
    for name, value in _btyd_summary(day_code, day_value, day_sum, int(end_day), n).items():
        features[f"{name}_days"] = value
    week_value = week_of_day(day_value)
    week_starts = _runs(day_code, week_value)
    week_sum = np.add.reduceat(day_sum, week_starts) if len(week_starts) else np.zeros(0)
    weekly = _btyd_summary(day_code[week_starts], week_value[week_starts], week_sum, int(week_of_day(end_day)), n)
    for name, value in weekly.items():
        features[f"{name}_weeks"] = value

    # Orders: distinct order ids, or distinct timestamps, per customer.
    order_starts = _runs(code, order_all[is_purchase]) if order_all is not None else _runs(code, ts)
    order_code, order_ts, order_day = code[order_starts], ts[order_starts], day[order_starts]
    order_count = np.bincount(order_code, minlength=n).astype(np.float64)
    total_spend = _per_customer(code, amount, n)
    features["order_count"] = order_count
    features["total_spend"] = total_spend
    with np.errstate(invalid="ignore", divide="ignore"):
        features["avg_order_value"] = np.where(order_count > 0, total_spend / np.maximum(order_count, 1), 0.0)
    for window in windows_days:
        since = as_of_day - window
        in_window = day >= since
        features[f"spend_last_{window}d"] = _per_customer(code[in_window], amount[in_window], n)
        features[f"orders_last_{window}d"] = np.bincount(order_code[order_day >= since], minlength=n).astype(np.float64)

    # Days between consecutive orders of the same customer.
    same_customer = order_code[1:] == order_code[:-1]
    gap_days = (np.diff(order_ts) / NS_PER_DAY)[same_customer]
    gap_code = order_code[1:][same_customer]
    gap_count = np.bincount(gap_code, minlength=n).astype(np.float64)
    gap_sum = _per_customer(gap_code, gap_days, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap_mean = np.where(gap_count > 0, gap_sum / gap_count, np.nan)
        centred = gap_days - gap_mean[gap_code]
        gap_var = _per_customer(gap_code, centred * centred, n) / (gap_count - 1)
    features["mean_days_between_orders"] = gap_mean
    features["std_days_between_orders"] = np.where(gap_count > 1, np.sqrt(gap_var), np.nan)

    has_purchase = order_count > 0
    first_purchase_day = np.where(has_purchase, as_of_day - features["T_days"] - 1, first_seen_day)
    last_purchase_day = np.where(has_purchase, first_purchase_day + features["recency_days"], first_seen_day)
    features["days_since_first_order"] = (as_of_day - first_purchase_day).astype(np.float64)
    features["days_since_last_order"] = (as_of_day - last_purchase_day).astype(np.float64)

    # Trend: last 90 days against the 90 before, in [-1, 1] (0 when both are empty).
    recent_mask = day >= as_of_day - 90
    recent = _per_customer(code[recent_mask], amount[recent_mask], n)
    earlier_mask = (day >= as_of_day - 180) & (day < as_of_day - 90)
    earlier = _per_customer(code[earlier_mask], amount[earlier_mask], n)
    with np.errstate(invalid="ignore", divide="ignore"):
        features["spend_trend_90d"] = np.where(recent + earlier > 0, (recent - earlier) / (recent + earlier), 0.0)
        features["refund_share"] = np.where(
            total_spend > 0, refund_amount / total_spend, np.where(refund_amount > 0, 1.0, 0.0)
        )

    if category_all is not None:
        category = _category_labels(category_all[is_purchase])
        chosen = list(categories) if categories is not None else _rank_categories(category, amount, top_k)
        for name in chosen:
            mask = category == name
            spend = _per_customer(code[mask], amount[mask], n)
            with np.errstate(invalid="ignore", divide="ignore"):
                features[category_column(name)] = np.where(total_spend > 0, spend / total_spend, 0.0)

    result = pd.DataFrame(features)
    result.insert(0, "customer_id", pd.array(uniques, dtype="string"))
    return result
