"""Request and response shapes of the scoring API, and turning a request into a checked dataset.

Kept apart from the BentoML service so that batch code and tests can use them without a server.
Every validation problem is reported with its path (``customers[3].transactions[0].amount``), the
value sent and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from training.columns import rows_of
from training.families import DATASET_NAME

OPTIONAL_TRANSACTION_FIELDS = ("category", "order_id", "quantity", "channel", "product_id")
MAX_CUSTOMERS = 10_000
MAX_LEADS = 10_000
Scalar = str | int | float | bool | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Transaction(_Request):
    timestamp: datetime
    amount: float = Field(allow_inf_nan=False)
    category: str | None = None
    order_id: str | int | None = None
    quantity: float | None = Field(default=None, allow_inf_nan=False)
    channel: str | None = None
    product_id: str | int | None = None


class Customer(_Request):
    customer_id: str | int
    transactions: list[Transaction] = Field(default_factory=list)
    attributes: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("customer_id")
    @classmethod
    def _not_blank(cls, value: str | int) -> str:
        text = str(value).strip()
        if not text:
            raise ValueError("customer_id must not be empty")
        return text


# Which dataset's champions score the request: a name as registered model names carry it.
DatasetName = Field(default=None, pattern=DATASET_NAME.pattern)


class ScoreRequest(_Request):
    dataset: str | None = DatasetName
    as_of: date | None = None
    customers: list[Customer] = Field(min_length=1)

    @field_validator("customers")
    @classmethod
    def _unique_ids(cls, customers: list[Customer]) -> list[Customer]:
        seen: set[str] = set()
        for customer in customers:
            if str(customer.customer_id) in seen:
                raise ValueError(f"customer_id '{customer.customer_id}' appears more than once")
            seen.add(str(customer.customer_id))
        return customers


class LeadRequest(_Request):
    dataset: str | None = DatasetName
    leads: list[dict[str, Scalar]] = Field(min_length=1)

    @field_validator("leads")
    @classmethod
    def _have_ids(cls, leads: list[dict[str, Scalar]]) -> list[dict[str, Scalar]]:
        for position, lead in enumerate(leads):
            if lead.get("lead_id") in (None, ""):
                raise ValueError(f"lead {position} has no lead_id")
        return leads


def problems_of(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as {path, value, reason}, the path written as a JSON path into the request."""
    problems = []
    for error in exc.errors(include_url=False):
        path = ""
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        value = error.get("input")
        if isinstance(value, dict | list):
            value = None  # the whole object is not repeated back
        elif isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        problems.append({"path": path or "(body)", "value": value, "reason": error["msg"]})
    return problems


def transactions_frame(request: ScoreRequest) -> pd.DataFrame:
    """The request's transactions in contract column names, each row carrying its customer's attributes."""
    rows: dict[str, list[Any]] = {"customer_id": [], "timestamp": [], "amount": []}
    optional = OPTIONAL_TRANSACTION_FIELDS
    used = {
        name for c in request.customers for t in c.transactions for name in optional if getattr(t, name) is not None
    }
    for name in used:
        rows[name] = []
    attribute_names = sorted({k for c in request.customers for k in c.attributes})
    attributes: dict[str, list[Any]] = {name: [] for name in attribute_names}
    for customer in request.customers:
        for t in customer.transactions:
            rows["customer_id"].append(str(customer.customer_id))
            rows["timestamp"].append(t.timestamp)
            rows["amount"].append(t.amount)
            for name in used:
                value = getattr(t, name)
                rows[name].append(
                    None if value is None else (str(value) if name in ("order_id", "product_id") else value)
                )
            for name in attribute_names:
                attributes[name].append(customer.attributes.get(name))
    frame = pd.DataFrame({**rows, **attributes})
    stamps = pd.to_datetime(frame["timestamp"], utc=True) if len(frame) else pd.Series([], dtype="datetime64[ns, UTC]")
    frame["timestamp"] = stamps.dt.tz_convert(None).astype("datetime64[ns]")
    frame["amount"] = frame["amount"].astype(np.float64)
    return frame


def customer_attributes(request: ScoreRequest) -> pd.DataFrame:
    """One row per customer with its attributes (the suppression flags and contact dates live here)."""
    frame = pd.DataFrame([{"customer_id": str(c.customer_id), **c.attributes} for c in request.customers])
    return frame.set_index("customer_id")


def _json_value(value: Any) -> Any:
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA:
        return None
    return value


def to_json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: NaN becomes null, numpy scalars become Python numbers."""
    return [{k: _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def column_records(columns: Mapping[str, np.ndarray], names: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`to_json_records` for a dict of equal-length arrays, the columns ``names`` in that order."""
    lists = [[_json_value(v) for v in np.asarray(columns[name]).tolist()] for name in names]
    if not lists:
        return [{} for _ in range(rows_of(columns))]
    return [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]


PLAIN_FIELDS = {"timestamp", "amount"}
EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)


@dataclass
class Histories:
    """A request's customers as arrays for :func:`serving.scoring.score_histories`."""

    ids: list[str]
    code: np.ndarray
    ts: np.ndarray
    amount: np.ndarray
    attributes: dict[str, list[Any]]


def histories_of(request: ScoreRequest, reserved: set[str]) -> Histories | None:
    """The request as plain purchase histories, or None when it carries more than those can hold:
    order ids, categories or other optional transaction fields, or attributes named in ``reserved``
    (columns the dataset's value maps check or the contract's names), which the row checks read.
    Timestamps become int64 nanoseconds in UTC (naive times are UTC), as :func:`transactions_frame`
    converts them."""
    ids, code, stamps, amount = [], [], [], []
    names: set[str] = set()
    for position, customer in enumerate(request.customers):
        ids.append(str(customer.customer_id))
        names.update(customer.attributes)
        for t in customer.transactions:
            if t.model_fields_set - PLAIN_FIELDS and any(
                getattr(t, name) is not None for name in OPTIONAL_TRANSACTION_FIELDS
            ):
                return None
            code.append(position)
            stamps.append(t.timestamp)
            amount.append(t.amount)
    if names & reserved:
        return None
    # Integer arithmetic on the datetimes: numpy's conversion of datetime objects is 5x slower.
    if any(stamp.tzinfo is not None for stamp in stamps):
        stamps = [s.astimezone(UTC).replace(tzinfo=None) if s.tzinfo is not None else s for s in stamps]
    ts = np.asarray([(stamp - EPOCH) // MICROSECOND * 1000 for stamp in stamps], dtype=np.int64)
    attributes = {name: [c.attributes.get(name) for c in request.customers] for name in sorted(names)}
    return Histories(ids, np.asarray(code, dtype=np.int64), ts, np.asarray(amount, dtype=np.float64), attributes)


TRANSACTION_FIELDS = set(Transaction.model_fields)


def transaction_positions(request: ScoreRequest) -> list[tuple[int, int]]:
    """(customer index, transaction index) of each row of :func:`transactions_frame`, in order."""
    return [(ci, ti) for ci, c in enumerate(request.customers) for ti in range(len(c.transactions))]


def transaction_problems(request: ScoreRequest, problems: list[Any]) -> list[dict[str, Any]]:
    """Row problems of the request's transactions as paths into the request."""
    positions = transaction_positions(request)
    found = []
    for problem in problems:
        for row in problem.rows:
            ci, ti = positions[row - 1]
            customer = request.customers[ci]
            if problem.column in TRANSACTION_FIELDS:
                path = f"customers[{ci}].transactions[{ti}].{problem.column}"
                value = getattr(customer.transactions[ti], problem.column)
            else:
                path = f"customers[{ci}].attributes.{problem.column}"
                value = customer.attributes.get(problem.column)
            found.append({"path": path, "value": _plain(value), "reason": f"{problem.reason}; {problem.fix}"})
    return found


def lead_problems(request: LeadRequest, id_column: str, problems: list[Any]) -> list[dict[str, Any]]:
    found = []
    for problem in problems:
        for row in problem.rows:
            name = "lead_id" if problem.column == id_column else problem.column
            value = request.leads[row - 1].get(name)
            found.append(
                {"path": f"leads[{row - 1}].{name}", "value": value, "reason": f"{problem.reason}; {problem.fix}"}
            )
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
