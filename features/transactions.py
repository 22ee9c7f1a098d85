"""Customer features from a transaction log, as of a cut-off date.

Only transactions dated before ``as_of`` are read, so the features of a cut-off never depend on what
happened after it. Rows are sorted by (customer, timestamp) once, with a packed-integer sort, and one
numba-compiled pass then walks each customer's run of rows: on ten million rows that is an order of
magnitude faster than pandas ``groupby`` or a chain of numpy passes, which are bound by memory
traffic on these machines (docs/benchmarks.md).

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

from collections.abc import Sequence

import numba
import numpy as np
import pandas as pd

from features.attributes import attribute_slug
from features.codes import factorize

NS_PER_DAY = 86_400 * 10**9
# 1970-01-01 was a Thursday: shifting by 3 days makes weeks start on Monday, as pandas' 'W' periods do.
EPOCH_WEEKDAY_SHIFT = 3


def category_column(category: str) -> str:
    return f"category_share_{attribute_slug(category)}"


def top_categories(transactions: pd.DataFrame, as_of: pd.Timestamp | str, k: int) -> list[str]:
    """The k categories with the most purchase spend before ``as_of`` (ties broken by name)."""
    if k == 0 or "category" not in transactions.columns:
        return []
    keep = (transactions["timestamp"] < pd.Timestamp(as_of)).to_numpy() & (transactions["amount"] >= 0).to_numpy()
    codes, names = encode(transactions["category"].astype("category"), keep, missing="(none)")
    totals = np.bincount(codes, weights=transactions["amount"].to_numpy(dtype=np.float64)[keep], minlength=len(names))
    ranked = sorted(range(len(names)), key=lambda i: (-totals[i], names[i]))
    return [str(names[i]) for i in ranked[:k]]


def _kept(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``values[keep]``, without the copy when every row is kept (scoring on the whole log)."""
    return values if keep.all() else values[keep]


def encode(values: pd.Series, keep: np.ndarray, missing: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dense integer codes of the kept rows and the labels they stand for (only labels in use).

    A categorical column (as the row checks produce for customer ids) is encoded from its codes,
    without hashing its strings again. ``missing`` names a label for missing values.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = _kept(values.cat.codes.to_numpy(), keep).astype(np.int32)
        labels = values.cat.categories.astype("string").to_numpy(dtype=object)
    else:
        # On the Series itself: Arrow-backed text is factorised by Arrow, without Python strings.
        codes, uniques = factorize(values if keep.all() else values[keep])
        labels = uniques.astype("string").to_numpy(dtype=object)
    if (codes < 0).any():
        if missing is None:
            raise ValueError(f"column '{values.name}' has missing values")
        codes = np.where(codes < 0, len(labels), codes)
        labels = np.append(labels, missing)
    used = np.bincount(codes, minlength=len(labels)) > 0
    if not used.all():
        codes = (np.cumsum(used) - 1).astype(np.int32)[codes]
        labels = labels[used]
    return codes, labels


def sort_by_customer_and_time(code: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order by (customer code, timestamp), stable.

    Packs (code, rank of the row in time order) into one uint64 and sorts the values: numpy's
    SIMD sort of plain integers is an order of magnitude faster than ``lexsort`` or ``argsort``
    on ten million rows, and the row index falls out of the low bits.
    """
    m = len(code)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    time_sorted = bool(np.all(ts[1:] >= ts[:-1]))  # logs are usually written in time order
    by_time = None if time_sorted else np.argsort(ts, kind="stable")
    bits = max(1, int(m - 1).bit_length())
    if int(code.max()) >= 1 << (64 - bits):
        return np.lexsort((ts, code))
    key = code.astype(np.uint64) << np.uint64(bits)
    if by_time is None:
        key |= np.arange(m, dtype=np.uint64)
    else:
        rank = np.empty(m, dtype=np.uint64)
        rank[by_time] = np.arange(m, dtype=np.uint64)
        key |= rank
    key.sort()
    position = (key & np.uint64((1 << bits) - 1)).astype(np.int64)
    return position if by_time is None else by_time[position]


# Columns of the per-customer output matrix filled by the kernel.
SUMMARY_COLUMNS = (
    "frequency_days",
    "recency_days",
    "T_days",
    "monetary_value_days",
    "frequency_weeks",
    "recency_weeks",
    "T_weeks",
    "monetary_value_weeks",
    "order_count",
    "total_spend",
    "mean_days_between_orders",
    "std_days_between_orders",
    "first_purchase_day",
    "last_purchase_day",
    "spend_recent_90d",
    "spend_earlier_90d",
)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_to_period(
    period: int, amount: float, count: int, first: int, last: int, first_sum: float
) -> tuple[int, int, int, float]:
    """One purchase into a customer's BTYD periods (days or weeks): count, first, last, first's spend."""
    if period != last:
        count += 1
        if count == 1:
            first = period
        last = period
    if period == first:
        first_sum += amount
    return count, first, last, first_sum


@numba.njit(cache=True, nogil=True, inline="always")
def _welford(n: int, mean: float, m2: float, x: float) -> tuple[int, float, float]:
    """Welford's running count, mean and sum of squared deviations, with one more value ``x``."""
    n += 1
    delta = x - mean
    mean += delta / n
    m2 += delta * (x - mean)
    return n, mean, m2


@numba.njit(cache=True, nogil=True, inline="always")
def _add_in_windows(totals: np.ndarray, c: int, day: int, as_of_day: int, windows: np.ndarray, value: float) -> None:
    """Add ``value`` to customer ``c``'s total of every window (days before ``as_of_day``) holding ``day``."""
    for w in range(windows.shape[0]):
        if day >= as_of_day - windows[w]:
            totals[c, w] += value


@numba.njit(cache=True, nogil=True, inline="always")
def _write_btyd(
    row: np.ndarray, at: int, count: int, first: int, last: int, first_sum: float, total: float, end: int
) -> None:
    """lifetimes' frequency, recency, T and monetary value (periods of days or weeks) into ``row[at:at+4]``."""
    row[at] = count - 1
    row[at + 1] = last - first
    row[at + 2] = end - first
    row[at + 3] = (total - first_sum) / (count - 1) if count > 1 else 0.0


@numba.njit(cache=True, nogil=True)
def _customer_kernel(
    code: np.ndarray,
    ts: np.ndarray,
    amount: np.ndarray,
    order_key: np.ndarray,
    category: np.ndarray,
    windows: np.ndarray,
    as_of_day: int,
    out: np.ndarray,
    window_spend: np.ndarray,
    window_orders: np.ndarray,
    category_spend: np.ndarray,
) -> None:
    """One pass over purchases sorted by (customer, timestamp), one run of rows per customer.

    ``order_key`` marks orders: a new order starts where it changes within a customer's run (order ids,
    or the timestamps themselves). ``category`` holds each row's column in ``category_spend`` or -1.
    """
    end_day = as_of_day - 1  # lifetimes' observation_period_end: the last day of history
    end_week = (end_day + EPOCH_WEEKDAY_SHIFT) // 7
    m = code.shape[0]
    i = 0
    while i < m:
        c = code[i]
        n_days, first_day, last_day, first_day_sum = 0, 0, -(1 << 62), 0.0
        n_weeks, first_week, last_week, first_week_sum = 0, 0, -(1 << 62), 0.0
        total, recent, earlier = 0.0, 0.0, 0.0
        n_orders, last_order_ts = 0, 0
        gap_n, gap_mean, gap_m2 = 0, 0.0, 0.0  # the days between orders
        j = i
        while j < m and code[j] == c:
            a = amount[j]
            day = ts[j] // NS_PER_DAY
            week = (day + EPOCH_WEEKDAY_SHIFT) // 7
            total += a
            n_days, first_day, last_day, first_day_sum = _add_to_period(
                day, a, n_days, first_day, last_day, first_day_sum
            )
            n_weeks, first_week, last_week, first_week_sum = _add_to_period(
                week, a, n_weeks, first_week, last_week, first_week_sum
            )
            if j == i or order_key[j] != order_key[j - 1]:
                n_orders += 1
                if n_orders > 1:
                    gap_n, gap_mean, gap_m2 = _welford(gap_n, gap_mean, gap_m2, (ts[j] - last_order_ts) / NS_PER_DAY)
                last_order_ts = ts[j]
                _add_in_windows(window_orders, c, day, as_of_day, windows, 1.0)
            _add_in_windows(window_spend, c, day, as_of_day, windows, a)
            if day >= as_of_day - 90:
                recent += a
            elif day >= as_of_day - 180:
                earlier += a
            if category[j] >= 0:
                category_spend[c, category[j]] += a
            j += 1
        row = out[c]
        _write_btyd(row, 0, n_days, first_day, last_day, first_day_sum, total, end_day)
        _write_btyd(row, 4, n_weeks, first_week, last_week, first_week_sum, total, end_week)
        row[8] = n_orders
        row[9] = total
        row[10] = gap_mean if gap_n > 0 else np.nan
        row[11] = np.sqrt(gap_m2 / (gap_n - 1)) if gap_n > 1 else np.nan
        row[12] = first_day
        row[13] = last_day
        row[14] = recent
        row[15] = earlier
        i = j


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
    ts_all = transactions["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    keep = ts_all < as_of.value
    code, uniques = encode(transactions["customer_id"], keep)
    order_codes = None
    if "order_id" in transactions.columns:
        order_codes = encode(transactions["order_id"], keep, missing="(none)")[0]
    category_codes, category_names = None, None
    if "category" in transactions.columns:
        category_codes, category_names = encode(transactions["category"], keep, missing="(none)")
    features = feature_arrays(
        code,
        len(uniques),
        _kept(ts_all, keep),
        _kept(transactions["amount"].to_numpy(dtype=np.float64), keep),
        as_of,
        order_codes=order_codes,
        category_codes=category_codes,
        category_names=category_names,
        windows_days=windows_days,
        categories=categories,
        top_k=top_k,
    )
    return pd.DataFrame({"customer_id": pd.array(uniques, dtype="string"), **features}, copy=False)


def feature_arrays(
    code: np.ndarray,
    n: int,
    ts: np.ndarray,
    amount: np.ndarray,
    as_of: pd.Timestamp,
    *,
    order_codes: np.ndarray | None = None,
    category_codes: np.ndarray | None = None,
    category_names: np.ndarray | None = None,
    windows_days: Sequence[int] = (30, 90, 180, 365),
    categories: Sequence[str] | None = None,
    top_k: int = 5,
) -> dict[str, np.ndarray]:
    """The feature columns of customers ``0 .. n-1`` from their rows before ``as_of``: ``code`` (the
    customer of each row), ``ts`` (int64 nanoseconds), ``amount``; optionally order and category codes
    per row. A customer without rows gets the values of an empty history, to be overwritten.

    No pandas: :func:`compute_transaction_features` calls it for a whole log and the scoring API for
    the customers of one request, so both compute every number with the same code.
    """
    as_of_day = as_of.value // NS_PER_DAY
    refund = amount < 0
    refund_amount, first_seen_day = _refund_totals(code[refund], ts[refund], amount[refund], n)

    # Purchases sorted by (customer, timestamp) once; the kernel then reads each customer's rows in a run.
    purchase = ~refund
    if refund.any():
        purchase_code, purchase_ts, purchase_amount = code[purchase], ts[purchase], amount[purchase]
    else:  # no refunds (the usual log): no copies of every row
        purchase_code, purchase_ts, purchase_amount = code, ts, amount
    order = sort_by_customer_and_time(purchase_code, purchase_ts)
    purchase_code, purchase_ts, purchase_amount = purchase_code[order], purchase_ts[order], purchase_amount[order]
    order_key = purchase_ts
    if order_codes is not None:
        order_key = order_codes[purchase][order].astype(np.int64)

    chosen, category = _category_columns(
        category_codes, category_names, purchase, order, amount, categories=categories, top_k=top_k
    )
    windows = np.asarray(windows_days, dtype=np.int64)
    out = np.zeros((n, len(SUMMARY_COLUMNS)))
    window_spend = np.zeros((n, len(windows)))
    window_orders = np.zeros((n, len(windows)))
    category_spend = np.zeros((n, len(chosen)))
    _customer_kernel(
        purchase_code,
        purchase_ts,
        purchase_amount,
        order_key,
        category,
        windows,
        int(as_of_day),
        out,
        window_spend,
        window_orders,
        category_spend,
    )
    summary = dict(zip(SUMMARY_COLUMNS, out.T, strict=True))
    window_columns: dict[str, np.ndarray] = {}
    for position, window in enumerate(windows_days):
        window_columns[f"spend_last_{window}d"] = window_spend[:, position]
        window_columns[f"orders_last_{window}d"] = window_orders[:, position]
    features = _summary_features(summary, window_columns, int(as_of_day), first_seen_day, refund_amount)
    return features | _category_shares(chosen, category_spend, summary["total_spend"])


def _category_columns(
    category_codes: np.ndarray | None,
    category_names: np.ndarray | None,
    purchase: np.ndarray,
    order: np.ndarray,
    amount: np.ndarray,
    *,
    categories: Sequence[str] | None,
    top_k: int,
) -> tuple[list[str], np.ndarray]:
    """The category-share columns (``categories``, or the ``top_k`` by purchase spend) and, for each
    purchase in ``order``, its position among them or -1 (no category, or one without a column).
    ``category_codes`` and ``amount`` are every row's, refunds included."""
    chosen: list[str] = list(categories) if categories is not None else []
    if category_codes is None or category_names is None:
        return chosen, np.full(len(order), -1, dtype=np.int32)
    purchase_categories = category_codes[purchase]
    if categories is None:
        chosen = _top_categories(purchase_categories, amount[purchase], category_names, top_k)
    return chosen, _category_positions(category_names, chosen)[purchase_categories[order]]


def _category_shares(chosen: list[str], category_spend: np.ndarray, total_spend: np.ndarray) -> dict[str, np.ndarray]:
    """Each chosen category's share of a customer's purchase spend (0 without spend)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            category_column(name): np.where(total_spend > 0, category_spend[:, position] / total_spend, 0.0)
            for position, name in enumerate(chosen)
        }


def _refund_totals(
    refund_code: np.ndarray, refund_ts: np.ndarray, refund_amount: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Refunds need no ordering: their total per customer, and the first day seen (for refund-only
    customers, whose history starts there)."""
    totals = np.bincount(refund_code, weights=-refund_amount, minlength=n)
    first_seen_day = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen_day, refund_code, refund_ts // NS_PER_DAY)
    return totals, first_seen_day


def _top_categories(codes: np.ndarray, amount: np.ndarray, names: np.ndarray, top_k: int) -> list[str]:
    """The ``top_k`` categories by purchase amount (ties by name), the share columns' categories."""
    totals = np.bincount(codes, weights=amount, minlength=len(names))
    ranked = sorted(range(len(names)), key=lambda i: (-totals[i], names[i]))
    return [str(names[i]) for i in ranked[:top_k]]


def _category_positions(names: np.ndarray, chosen: list[str]) -> np.ndarray:
    """Category code -> its column among ``chosen`` (-1: not a chosen category)."""
    position_of = {str(name): i for i, name in enumerate(names)}
    column_of = np.full(len(names) + 1, -1, dtype=np.int32)
    for position, name in enumerate(chosen):
        if name in position_of:
            column_of[position_of[name]] = position
    return column_of


def _summary_features(
    summary: dict[str, np.ndarray],
    window_columns: dict[str, np.ndarray],
    as_of_day: int,
    first_seen_day: np.ndarray,
    refund_amount: np.ndarray,
) -> dict[str, np.ndarray]:
    """The features that follow from the kernel's per-customer summary (averages, recency, tenure,
    trend and refund share), with the window columns in their place among them."""
    has_purchase = summary["order_count"] > 0
    total_spend = summary["total_spend"]
    features: dict[str, np.ndarray] = {name: summary[name] for name in SUMMARY_COLUMNS[:10]}
    with np.errstate(invalid="ignore", divide="ignore"):
        features["avg_order_value"] = np.where(has_purchase, total_spend / summary["order_count"], 0.0)
    features.update(window_columns)
    features["mean_days_between_orders"] = summary["mean_days_between_orders"]
    features["std_days_between_orders"] = summary["std_days_between_orders"]
    first_day = np.where(has_purchase, summary["first_purchase_day"], first_seen_day)
    last_day = np.where(has_purchase, summary["last_purchase_day"], first_seen_day)
    features["days_since_first_order"] = (as_of_day - first_day).astype(np.float64)
    features["days_since_last_order"] = (as_of_day - last_day).astype(np.float64)
    # Trend: last 90 days against the 90 before, in [-1, 1] (0 when both are empty).
    recent, earlier = summary["spend_recent_90d"], summary["spend_earlier_90d"]
    with np.errstate(invalid="ignore", divide="ignore"):
        features["spend_trend_90d"] = np.where(recent + earlier > 0, (recent - earlier) / (recent + earlier), 0.0)
        features["refund_share"] = np.where(
            total_spend > 0, refund_amount / total_spend, np.where(refund_amount > 0, 1.0, 0.0)
        )
    return features
