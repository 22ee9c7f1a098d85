"""Feature and label tables for a checked dataset: one row per customer (or lead) as of a cut-off.

Pure functions over a :class:`features.io.Dataset`; reading and writing stay in the command layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from features.attributes import AttributeEncoder
from features.config import CUSTOMER_OPTIONAL, LEAD_OPTIONAL, TRANSACTION_OPTIONAL, TRANSACTION_REQUIRED
from features.events import FROM_EVENTS, event_features, top_events
from features.io import Dataset
from features.labels import check_horizon, compute_event_labels, compute_transaction_labels
from features.transactions import compute_transaction_features, top_categories
from features.validate import ROW, DataError

# Columns with a meaning in the contract; every other column of a table is an attribute.
CONTRACT_COLUMNS = {*TRANSACTION_REQUIRED, *TRANSACTION_OPTIONAL, *CUSTOMER_OPTIONAL, "lead_id", *LEAD_OPTIONAL, ROW}


@dataclass
class FeatureSet:
    """Features plus what is needed to compute the same columns again at another cut-off."""

    frame: pd.DataFrame
    categories: list[str]
    encoder: AttributeEncoder | None
    events: list[str] = field(default_factory=list)  # the events table's top-K events (their features)


def attribute_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in CONTRACT_COLUMNS]


def default_as_of(dataset: Dataset) -> pd.Timestamp:
    """The day after the last transaction: score on everything there is."""
    if dataset.transactions is None:
        return pd.Timestamp.now().normalize()
    return dataset.transactions.frame["timestamp"].max().normalize() + pd.Timedelta(days=1)


def _customer_attributes(dataset: Dataset, as_of: pd.Timestamp) -> pd.DataFrame:
    """Attributes per customer: the customers table, then per-transaction attributes (last value)."""
    parts = []
    if dataset.customers is not None:
        customers = dataset.customers.frame
        if "signup_date" in customers.columns:
            customers = customers.loc[~(customers["signup_date"] >= as_of)]
        latest = customers.drop_duplicates("customer_id", keep="last").set_index("customer_id")
        table = latest[attribute_columns(customers)].copy()
        if "signup_date" in latest.columns:
            table["tenure_days"] = (as_of - latest["signup_date"]).dt.days.astype("float64")
        parts.append(table)
    if dataset.transactions is not None:
        tx = dataset.transactions.frame
        columns = attribute_columns(tx)
        if columns:
            before = tx.loc[tx["timestamp"] < as_of].sort_values(["customer_id", "timestamp"], kind="stable")
            parts.append(before.groupby("customer_id")[columns].last())
    if not parts:
        return pd.DataFrame(index=pd.Index([], name="customer_id", dtype="string"))
    return pd.concat(parts, axis=1) if len(parts) > 1 else parts[0]


def build_customer_features(
    dataset: Dataset,
    as_of: pd.Timestamp | str,
    *,
    categories: Sequence[str] | None = None,
    encoder: AttributeEncoder | None = None,
    events: Sequence[str] | None = None,
) -> FeatureSet:
    """Customer features as of ``as_of`` (transactions strictly before it) with encoded attributes,
    and with an events table the features of its top-K events (:mod:`features.events`).

    Pass the ``categories``, ``events`` and fitted ``encoder`` of an earlier call to get identical columns.
    """
    as_of = pd.Timestamp(as_of).normalize()
    settings = dataset.config.features
    if dataset.transactions is not None:
        tx = dataset.transactions.frame
        if categories is None:
            categories = top_categories(tx, as_of, settings.top_categories)
        frame = compute_transaction_features(tx, as_of, windows_days=settings.windows_days, categories=categories)
        if frame.empty:
            raise DataError(f"dataset '{dataset.config.name}': no transactions before {as_of:%Y-%m-%d}")
    elif dataset.customers is not None:
        frame = dataset.customers.frame[["customer_id"]].drop_duplicates().reset_index(drop=True)
        categories = []
    else:
        raise DataError(f"dataset '{dataset.config.name}' has no customers or transactions (only leads)")

    frame, events = _with_event_features(dataset, frame, as_of, events)
    attributes = _customer_attributes(dataset, as_of)
    if len(attributes.columns):
        aligned = attributes.reindex(pd.Index(frame["customer_id"]))
        if encoder is None:
            encoder = AttributeEncoder(max_levels=settings.max_attribute_levels).fit(aligned, list(aligned.columns))
        encoded = encoder.transform(aligned).reset_index(drop=True)
        frame = pd.concat([frame, encoded], axis=1)
    frame.insert(1, "as_of", as_of)
    return FeatureSet(frame, list(categories or []), encoder, events)


def _with_event_features(
    dataset: Dataset, frame: pd.DataFrame, as_of: pd.Timestamp, events: Sequence[str] | None
) -> tuple[pd.DataFrame, list[str]]:
    """The frame with the features of ``events`` (default: the events table's top-K before ``as_of``)."""
    if dataset.events is None:
        if events:
            raise DataError(
                f"dataset '{dataset.config.name}': the model reads the events {list(events)[:3]}... but the "
                "data has no events table: add the events table the model was trained with"
            )
        return frame, []
    log = dataset.events.frame
    chosen = list(events) if events is not None else top_events(log, as_of, dataset.config.features.top_events)
    columns = event_features(log, frame["customer_id"], as_of, chosen)
    return frame.assign(**columns), chosen


def build_customer_labels(
    dataset: Dataset,
    customer_ids: pd.Series,
    as_of: pd.Timestamp | str,
    horizon_days: int,
    categories: Sequence[str],
    events: Sequence[str] = (),
) -> pd.DataFrame:
    """Outcomes for the customers of a feature table; a snapshot's churn flag where there is no log;
    ``event_<event>`` per event of ``events`` from the events table."""
    as_of = pd.Timestamp(as_of).normalize()
    if dataset.transactions is None:
        customers = dataset.customers.frame if dataset.customers is not None else None
        if customers is None or "churned" not in customers.columns:
            raise DataError(
                f"dataset '{dataset.config.name}': labels need transactions, or a customers table "
                "with a 'churned' column (map it under customers.columns)"
            )
        labels = customers.drop_duplicates("customer_id", keep="last")[["customer_id", "churned"]]
        labels = labels.set_index("customer_id").reindex(pd.Index(customer_ids, name="customer_id"))
        return labels.astype({"churned": "Int8"}).reset_index()
    tx = dataset.transactions.frame
    check_horizon(tx, as_of, horizon_days)
    cancellations = None
    if dataset.customers is not None and "cancellation_date" in dataset.customers.frame.columns:
        cancellations = dataset.customers.frame.drop_duplicates("customer_id", keep="last").set_index("customer_id")[
            "cancellation_date"
        ]
    labels = compute_transaction_labels(
        tx,
        customer_ids,
        as_of,
        horizon_days,
        churn_lookback_days=dataset.config.features.churn_lookback_days,
        categories=categories,
        cancellations=cancellations,
    )
    if events and dataset.events is not None:
        try:
            check_horizon(dataset.events.frame, as_of, horizon_days)
        except DataError as exc:
            raise DataError(f"dataset '{dataset.config.name}', events table: {exc}") from exc
        happened = compute_event_labels(dataset.events.frame, customer_ids, as_of, horizon_days, events, FROM_EVENTS)
        labels = pd.concat([labels, happened.drop(columns=["customer_id"])], axis=1)
    labels.insert(1, "as_of", as_of)
    return labels


def labels_for(dataset: Dataset, features: FeatureSet, as_of: pd.Timestamp | str, horizon_days: int) -> pd.DataFrame:
    """:func:`build_customer_labels` for the customers, categories and events of a feature set."""
    return build_customer_labels(
        dataset, features.frame["customer_id"], as_of, horizon_days, features.categories, features.events
    )


def build_lead_features(dataset: Dataset, encoder: AttributeEncoder | None = None) -> FeatureSet:
    """Encoded lead attributes, with ``converted`` kept as the label where the data has it."""
    if dataset.leads is None:
        raise DataError(f"dataset '{dataset.config.name}' has no leads table")
    leads = dataset.leads.frame
    columns = attribute_columns(leads)
    if encoder is None:
        encoder = AttributeEncoder(max_levels=dataset.config.features.max_attribute_levels).fit(leads, columns)
    encoded = encoder.transform(leads).reset_index(drop=True)
    keep = [c for c in ("lead_id", "created_at", "converted") if c in leads.columns]
    frame = pd.concat([leads[keep].reset_index(drop=True), encoded], axis=1)
    if "converted" in frame.columns:
        frame["converted"] = frame["converted"].astype("Int8")
    return FeatureSet(frame, [], encoder)


def monthly_cutoffs(
    dataset: Dataset, horizon_days: int, *, first: str | None = None, count: int | None = None
) -> list[pd.Timestamp]:
    """Month starts whose label window ends within the data, the latest last.

    The first cut-off leaves at least one horizon of history before it unless ``first`` is given.
    """
    if dataset.transactions is None:
        raise DataError(f"dataset '{dataset.config.name}': cut-offs need a transaction log")
    stamps = dataset.transactions.frame["timestamp"]
    start = stamps.min().normalize()
    last_as_of = stamps.max().normalize() + pd.Timedelta(days=1) - pd.Timedelta(days=horizon_days)
    earliest = pd.Timestamp(first) if first else start + pd.Timedelta(days=horizon_days)
    cutoffs = list(pd.date_range(earliest.to_period("M").to_timestamp(), last_as_of, freq="MS"))
    cutoffs = [c for c in cutoffs if c >= earliest and c <= last_as_of]
    if count is not None:
        cutoffs = cutoffs[-count:]
    if not cutoffs:
        raise DataError(
            f"dataset '{dataset.config.name}': no month start between {earliest:%Y-%m-%d} and "
            f"{last_as_of:%Y-%m-%d} leaves a full {horizon_days}-day label window; use a shorter horizon"
        )
    return cutoffs


def build_training_set(dataset: Dataset, cutoffs: Sequence[pd.Timestamp], horizon_days: int) -> pd.DataFrame:
    """Features and labels at several cut-offs, stacked with the cut-off as a column ``cutoff``.

    Category columns and attribute encoding are fixed by the latest cut-off's history, so that every
    cut-off has the same columns; a split by ``cutoff`` then separates train and test strictly in time.
    """
    ordered = sorted(pd.Timestamp(c).normalize() for c in cutoffs)
    if not ordered:
        raise DataError("no cut-offs given")
    reference = build_customer_features(dataset, ordered[-1])
    parts = []
    for cutoff in ordered:
        features = build_customer_features(
            dataset, cutoff, categories=reference.categories, encoder=reference.encoder, events=reference.events
        )
        labels = build_customer_labels(
            dataset, features.frame["customer_id"], cutoff, horizon_days, reference.categories, reference.events
        )
        joined = features.frame.merge(labels.drop(columns=["as_of"], errors="ignore"), on="customer_id")
        joined.insert(0, "cutoff", cutoff)
        parts.append(joined)
    stacked = pd.concat(parts, ignore_index=True)
    return stacked.drop(columns=["as_of"]).sort_values(["cutoff", "customer_id"], kind="stable", ignore_index=True)
