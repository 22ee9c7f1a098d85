"""Behaviour events: what each customer did besides buying (an e-mail click, a feature used, a
purchase in a category), as of a cut-off.

A dataset's events are its ``events`` table when it has one; without one, the category purchases
of its transactions are its events (Online Retail's keyword-map categories), so that purchase
propensity per category and per event are one code path (:func:`dataset_events`). Event names come
from other people's files: they become column names only through :func:`event_slug` (lower-case
letters, digits and ``_``, at most :data:`MAX_EVENT_SLUG` characters), and two names with one slug
stop the run instead of sharing a column.

Features per top-K event, from events strictly before the cut-off: ``count_event_<slug>`` (how many),
``days_since_event_<slug>`` (missing when never), ``share_event_<slug>`` (of the customer's events)
and, when the table maps a value, ``value_event_<slug>`` (its sum). The label ``event_<slug>`` (in
:mod:`features.labels`) is 1 when the customer has the event within the horizon.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from features.config import DatasetConfig
from features.transactions import NS_PER_DAY, top_categories
from features.validate import FIRST_ROWS_SHOWN, ROW, Checked, DataError, NoUsableRowsError, Problem

MAX_EVENT_SLUG = 40
EVENT_SLUG = re.compile(rf"^[a-z0-9][a-z0-9_]{{0,{MAX_EVENT_SLUG - 1}}}$")


def event_slug(name: str) -> str:
    """The part of a column name an event name gives: lower-case letters and digits, other runs as one
    ``_``, cut to :data:`MAX_EVENT_SLUG` characters; '' for a name without a letter or digit."""
    slug = re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")[:MAX_EVENT_SLUG].rstrip("_")
    return slug if EVENT_SLUG.match(slug) else ""


@dataclass(frozen=True)
class EventNames:
    """How a dataset's per-event labels and propensity outputs are named."""

    label_prefix: str
    output_prefix: str

    def label(self, event: str) -> str:
        return self.label_prefix + event_slug(event)

    def output(self, event: str) -> str:
        return self.output_prefix + event_slug(event)


# An events table's events, and a transaction log's category purchases (the names served before
# events existed: ``purchase_probability_<category>`` from ``purchased_<category>``).
FROM_EVENTS = EventNames("event_", "event_probability_")
FROM_CATEGORIES = EventNames("purchased_", "purchase_probability_")


def top_events(events: pd.DataFrame, as_of: pd.Timestamp | str, k: int) -> list[str]:
    """The k events done by the most customers before ``as_of`` (ties broken by name)."""
    if k == 0 or events.empty:
        return []
    before = events.loc[(events["timestamp"] < pd.Timestamp(as_of)).to_numpy(), ["customer_id", "event"]]
    customers = before.drop_duplicates().groupby("event", observed=True).size()
    ranked = sorted(customers.items(), key=lambda item: (-item[1], str(item[0])))
    return [str(name) for name, _ in ranked[:k]]


def dataset_events(
    transactions: pd.DataFrame, events: pd.DataFrame | None, as_of: pd.Timestamp, k: int
) -> tuple[list[str], EventNames]:
    """The top-k events as of ``as_of`` and how they are named: the events table's (most customers),
    or without one the transactions' categories (most purchase spend, as the category features)."""
    if events is not None:
        return top_events(events, as_of, k), FROM_EVENTS
    return top_categories(transactions, as_of, k), FROM_CATEGORIES


def _codes_of(ids: pd.Index, customer_id: pd.Series) -> np.ndarray:
    """Position of each row's customer in ``ids`` (-1 if absent)."""
    return np.asarray(ids.get_indexer(customer_id.astype("string")))


def event_features(
    events: pd.DataFrame, customer_ids: Sequence[str] | pd.Series, as_of: pd.Timestamp, chosen: Sequence[str]
) -> dict[str, np.ndarray]:
    """Count, days since the latest, share of the customer's events (and value) per chosen event,
    from the events strictly before ``as_of``, for ``customer_ids`` in their order."""
    ids = pd.Index(pd.array(customer_ids, dtype="string"))
    n = len(ids)
    ts = events["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    code = _codes_of(ids, events["customer_id"])
    keep = (code >= 0) & (ts < as_of.value)
    code, ts = code[keep], ts[keep]
    names = events["event"].astype("string").to_numpy(dtype=object)[keep]
    total = np.bincount(code, minlength=n).astype(np.float64)
    values = events["value"].to_numpy(dtype=np.float64)[keep] if "value" in events.columns else None
    out: dict[str, np.ndarray] = {}
    for name in chosen:
        slug = event_slug(name)
        hit = names == name
        count = np.bincount(code[hit], minlength=n).astype(np.float64)
        latest = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(latest, code[hit], ts[hit])
        days = ((as_of.value - latest) // NS_PER_DAY).astype(np.float64)
        out[f"count_event_{slug}"] = count
        out[f"days_since_event_{slug}"] = np.where(count > 0, days, np.nan)
        out[f"share_event_{slug}"] = np.divide(count, total, out=np.zeros(n), where=total > 0)
        if values is not None:
            out[f"value_event_{slug}"] = np.bincount(code[hit], weights=np.nan_to_num(values[hit]), minlength=n)
    return out


def check_events(checked: Checked, config: DatasetConfig, source: str, known: pd.Index | None) -> Checked:
    """The checks that need the whole table: event names (how many, their slugs, no two with one slug)
    and customers the other tables do not know (``known``: their ids; None skips it), set aside."""
    assert config.events is not None
    column = config.events.columns["event"]
    frame = checked.frame
    names = pd.Series(frame["event"].astype("string").unique()).dropna()
    if len(names) > config.events.max_distinct_events:
        raise DataError(
            f"{source}: column '{column}' holds {len(names):,} distinct events, more than max_distinct_events "
            f"({config.events.max_distinct_events:,}): map a column of event types (not free text or ids) to "
            f"event, or raise events.max_distinct_events in {config.source_file}"
        )
    slugs = names.map(event_slug)
    clash = slugs[slugs.ne("") & slugs.duplicated(keep=False)]
    if len(clash):
        pair = sorted(names[slugs == clash.iloc[0]].tolist())[:2]
        raise DataError(
            f"{source}: column '{column}': events {pair[0]!r} and {pair[1]!r} both become the column name "
            f"event_{clash.iloc[0]}: write each event one way in the file"
        )
    unnamed = set(names[slugs.eq("")])
    bad = [
        (
            frame["event"].isin(unnamed).to_numpy(dtype=bool),
            column,
            "have an event name without a letter or digit",
            "name events with letters or digits (they become column names)",
        ),
    ]
    if known is not None:
        unknown = ~frame["customer_id"].astype("string").isin(known).to_numpy(dtype=bool)
        bad.append(
            (
                unknown,
                config.events.columns["customer_id"],
                "have a customer_id that no transaction or customers row has",
                "check that the events file writes customer ids as the transactions do",
            )
        )
    return _set_aside(checked, source, bad)


def _set_aside(checked: Checked, source: str, bad: list[tuple[np.ndarray, str, str, str]]) -> Checked:
    """Rows failing a table-wide check, moved to the quarantine with their reason and a problem each."""
    frame, quarantined, problems = checked.frame, [checked.quarantine], list(checked.problems)
    taken = np.zeros(len(frame), dtype=bool)
    for mask, column, reason, fix in bad:
        mask = mask & ~taken
        if not mask.any():
            continue
        rows = tuple(int(r) for r in frame.loc[mask, ROW].head(FIRST_ROWS_SHOWN))
        problems.append(Problem(source, column, reason, int(mask.sum()), rows, fix))
        part = frame.loc[mask].rename(columns={ROW: "row"})
        quarantined.append(part.assign(reason=f"{column}: {reason}")[["row", "reason", *part.columns.drop("row")]])
        taken |= mask
    if not taken.any():
        return checked
    if taken.all():
        summary = "; ".join(p.message() for p in problems)
        raise NoUsableRowsError(f"{source}: no usable rows. {summary}", problems)
    quarantine = pd.concat([q for q in quarantined if not q.empty], ignore_index=True).sort_values("row")
    usable = frame.loc[~taken].reset_index(drop=True)
    return replace(checked, frame=usable, quarantine=quarantine.reset_index(drop=True), problems=problems)
