"""Outcomes after a cut-off: what each customer known at ``as_of`` did in the next ``horizon_days``.

- ``purchased``: at least one purchase in [as_of, as_of + horizon); ``purchased_<category>`` per category.
- ``event_<event>`` per event of an events table: the event happened in the window (:func:`event_labels`,
  which also gives the per-category labels: a category purchase is an event).
- ``future_spend``: purchase spend in the window (refunds are reported apart, as ``future_refunds``);
  ``future_orders``: orders in the window.
- ``churned``: for customers with a purchase in the look-back window before ``as_of``, 1 if they
  made no purchase within the horizon, else 0; missing for customers who were not active (they
  cannot churn). Where the customers table has cancellation dates, a cancellation within the
  horizon is churn instead, and customers cancelled before ``as_of`` are left out (missing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from features.events import FROM_CATEGORIES, EventNames
from features.validate import DataError


def label_window_end(as_of: pd.Timestamp, horizon_days: int) -> pd.Timestamp:
    return pd.Timestamp(as_of).normalize() + pd.Timedelta(days=horizon_days)


def check_horizon(transactions: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int) -> None:
    """Refuse labels whose window runs past the data: they would count missing purchases as churn."""
    last_day = transactions["timestamp"].max().normalize()
    end = label_window_end(as_of, horizon_days)
    if end > last_day + pd.Timedelta(days=1):
        raise DataError(
            f"the label window {pd.Timestamp(as_of):%Y-%m-%d} + {horizon_days} days ends {end:%Y-%m-%d}, "
            f"after the last transaction day {last_day:%Y-%m-%d}: choose an AS_OF on or before "
            f"{last_day + pd.Timedelta(days=1) - pd.Timedelta(days=horizon_days):%Y-%m-%d} or a shorter HORIZON_DAYS"
        )


def _codes_in(ids: pd.Index, customer_id: pd.Series) -> np.ndarray:
    """Position of each row's customer in ``ids`` (-1 if absent), via the categories when categorical."""
    if isinstance(customer_id.dtype, pd.CategoricalDtype):
        positions = ids.get_indexer(customer_id.cat.categories.astype("string"))
        codes = customer_id.cat.codes.to_numpy()
        return np.where(codes >= 0, positions[codes], -1)
    return np.asarray(ids.get_indexer(customer_id.astype("string")))


def event_labels(
    code: np.ndarray, n: int, in_window: np.ndarray, event: pd.Series, chosen: Sequence[str], names: EventNames
) -> dict[str, np.ndarray]:
    """Per chosen event, 1 for the ``n`` customers with that event among the rows ``in_window``
    (``code``: each row's customer position 0..n-1, -1 for none). One function for an events table's
    events and a transaction log's category purchases."""
    text = event.to_numpy(dtype=object)
    return {
        names.label(name): (np.bincount(code[in_window & (text == name)], minlength=n) > 0).astype(np.int8)
        for name in chosen
    }


def compute_event_labels(
    events: pd.DataFrame,
    customer_ids: Sequence[str] | pd.Series,
    as_of: pd.Timestamp | str,
    horizon_days: int,
    chosen: Sequence[str],
    names: EventNames,
) -> pd.DataFrame:
    """``event_<event>`` for ``customer_ids``: the event happened in [as_of, as_of + horizon)."""
    as_of = pd.Timestamp(as_of).normalize()
    ids = pd.Index(pd.array(customer_ids, dtype="string"), name="customer_id")
    code = _codes_in(ids, events["customer_id"])
    ts = events["timestamp"]
    in_window = (code >= 0) & (ts >= as_of).to_numpy() & (ts < label_window_end(as_of, horizon_days)).to_numpy()
    labels = event_labels(code, len(ids), in_window, events["event"].astype("string"), chosen, names)
    return pd.DataFrame(labels, index=ids).reset_index()


def _future_orders(transactions: pd.DataFrame, code: np.ndarray, window_purchase: np.ndarray, n: int) -> np.ndarray:
    """Orders per customer among the purchases in the window: distinct order ids, or distinct
    timestamps where the log has no order id."""
    if "order_id" in transactions.columns:
        order_key = pd.factorize(transactions["order_id"])[0]
    else:
        order_key = transactions["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    orders = pd.DataFrame({"code": code[window_purchase], "order": order_key[window_purchase]})
    return np.bincount(orders.drop_duplicates()["code"].to_numpy(), minlength=n)


def _window_outcomes(
    transactions: pd.DataFrame, ids: pd.Index, code: np.ndarray, in_window: np.ndarray, purchase: np.ndarray
) -> pd.DataFrame:
    """``purchased``, ``future_spend``, ``future_refunds`` and ``future_orders`` from the rows in the window."""
    n = len(ids)
    amount = transactions["amount"].to_numpy()
    window_purchase = in_window & purchase
    future_spend = np.bincount(code[window_purchase], weights=amount[window_purchase], minlength=n)
    refund = in_window & ~purchase
    future_refunds = np.bincount(code[refund], weights=-amount[refund], minlength=n)
    future_orders = _future_orders(transactions, code, window_purchase, n)

    labels = pd.DataFrame(index=ids)
    labels["purchased"] = (future_orders > 0).astype(np.int8)
    labels["future_spend"] = future_spend
    labels["future_refunds"] = future_refunds
    labels["future_orders"] = future_orders.astype(np.int64)
    return labels


def _churn_labels(
    ids: pd.Index,
    was_active: np.ndarray,
    future_orders: np.ndarray,
    cancellations: pd.Series | None,
    as_of: pd.Timestamp,
    end: pd.Timestamp,
) -> pd.Series:
    """``churned``: no purchase in the window for the customers active before it; where there are
    cancellation dates, a cancellation in the window instead (missing for those cancelled before)."""
    churned = pd.Series(pd.NA, index=ids, dtype="Int8")
    churned[was_active] = (future_orders[was_active] == 0).astype(np.int8)
    if cancellations is not None:
        cancel = pd.to_datetime(cancellations.reindex(ids))
        gone = (cancel < as_of).to_numpy(dtype=bool)
        within = ((cancel >= as_of) & (cancel < end)).to_numpy(dtype=bool)
        churned = pd.Series(within.astype(np.int8), index=ids, dtype="Int8")
        churned[gone] = pd.NA
    return churned


def compute_transaction_labels(
    transactions: pd.DataFrame,
    customer_ids: Sequence[str] | pd.Series,
    as_of: pd.Timestamp | str,
    horizon_days: int,
    *,
    churn_lookback_days: int = 365,
    categories: Sequence[str] = (),
    cancellations: pd.Series | None = None,
) -> pd.DataFrame:
    """Labels for ``customer_ids`` (the customers of the features as of the same cut-off).

    ``cancellations`` maps customer_id to a cancellation timestamp (missing: not cancelled).
    """
    as_of = pd.Timestamp(as_of).normalize()
    end = label_window_end(as_of, horizon_days)
    ids = pd.Index(pd.array(customer_ids, dtype="string"), name="customer_id")
    ts = transactions["timestamp"]
    lookback = as_of - pd.Timedelta(days=churn_lookback_days)

    code = _codes_in(ids, transactions["customer_id"])
    known = code >= 0
    in_window = known & (ts >= as_of).to_numpy() & (ts < end).to_numpy()
    purchase = (transactions["amount"] >= 0).to_numpy()
    n = len(ids)

    labels = _window_outcomes(transactions, ids, code, in_window, purchase)
    active = known & purchase & (ts >= lookback).to_numpy() & (ts < as_of).to_numpy()
    was_active = np.bincount(code[active], minlength=n) > 0
    future_orders = labels["future_orders"].to_numpy()
    labels["churned"] = _churn_labels(ids, was_active, future_orders, cancellations, as_of, end)

    if "category" in transactions.columns:
        category = transactions["category"].astype("string").fillna("(none)")
        window_purchase = in_window & purchase
        for column, values in event_labels(code, n, window_purchase, category, categories, FROM_CATEGORIES).items():
            labels[column] = values
    labels["label_window_days"] = horizon_days
    return labels.reset_index()
