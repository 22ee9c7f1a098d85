"""Request and response shapes of the scoring API, and turning a request into a checked dataset.

Kept apart from the BentoML service so that batch code and tests can use them without a server.
Every validation problem is reported with its path (``customers[3].transactions[0].amount``), the
value sent and the reason.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from datetime import date, datetime
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticSerializationError, to_json

from training.columns import rows_of
from training.families import DATASET_NAME

OPTIONAL_TRANSACTION_FIELDS = ("category", "order_id", "quantity", "channel", "product_id")
# Names a customer attribute never takes: the customer's id and a transaction's required fields
# (finding 1: an attribute named ``amount`` used to overwrite every amount).
RESERVED_ATTRIBUTE_NAMES = frozenset({"customer_id", "timestamp", "amount"})


def _limit(name: str, default: float) -> float:
    """A limit from the environment (``VALUECAST_<NAME>``); a value that is not a positive number stops
    the server at start with the variable named, rather than serving without the limit."""
    text = os.environ.get(f"VALUECAST_{name}")
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"VALUECAST_{name}={text!r} is not a positive number; unset it for the default {default:g}")
    return value


MAX_CUSTOMERS = int(_limit("MAX_CUSTOMERS", 10_000))
MAX_LEADS = int(_limit("MAX_LEADS", 10_000))
MAX_BODY_BYTES = int(_limit("MAX_BODY_BYTES", 16 * 1024 * 1024))
MAX_TRANSACTIONS = int(_limit("MAX_TRANSACTIONS_PER_CUSTOMER", 100_000))
MAX_FIELDS = int(_limit("MAX_FIELDS", 200))  # attributes of a customer, fields of a lead
MAX_TEXT = int(_limit("MAX_TEXT_LENGTH", 1_000))  # characters in any string value
MAX_NAME = 100  # characters in an attribute or lead field name
MAX_ABS_NUMBER = _limit("MAX_ABS_NUMBER", 1e12)  # amounts, quantities, numeric attributes and lead values
EARLIEST = datetime(1900, 1, 1)
LATEST = datetime(2100, 12, 31, 23, 59, 59)


def _finite_in_range(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    if abs(value) > MAX_ABS_NUMBER:
        raise ValueError(f"must be at most {MAX_ABS_NUMBER:g} in absolute value")
    return value


def _utf8(value: str) -> str:
    """Lone surrogates (``"\\ud800"``) are valid JSON but not text: refused, never a 500 later."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not valid Unicode text ({exc.reason} at character {exc.start})") from None
    return value


# Text pydantic would read as seconds since 1970 ("1998" as 1970-01-01 00:33:18, "19980105" as 1970-08-20)
NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _text_only(value: Any) -> Any:
    """Dates and times are written as ISO 8601 text: a number is not a date (1998 is not 1998-01-01),
    nor is a number written as text, which pydantic would read as seconds since 1970."""
    if not isinstance(value, str | date) or (isinstance(value, str) and NUMBER_TEXT.fullmatch(value)):
        raise ValueError("write dates as ISO 8601 text, e.g. '1998-07-01' or '1998-07-01T10:30:00+02:00'")
    return value


def _in_date_range(value: datetime | date) -> datetime | date:
    naive = value.replace(tzinfo=None) if isinstance(value, datetime) else datetime(value.year, value.month, value.day)
    if not EARLIEST <= naive <= LATEST:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return value


def _scalar(value: Any) -> Any:
    """A customer attribute or lead value: text, a number, true/false or null, within the limits."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _finite_in_range(value) if isinstance(value, float) else _integer(value)
    if isinstance(value, str):
        return text_within_limits(value)
    raise ValueError("must be text, a number, true/false or null")


def _integer(value: int) -> int:
    if abs(value) > MAX_ABS_NUMBER:
        raise ValueError(f"must be at most {MAX_ABS_NUMBER:g} in absolute value")
    return value


def text_within_limits(value: str) -> str:
    """The value, if within the text length limit and valid Unicode; else ValueError saying which."""
    if len(value) > MAX_TEXT:
        raise ValueError(f"text longer than {MAX_TEXT:,} characters")
    return _utf8(value)


def _key(value: Any) -> str:
    """An id: text or an integer (not true/false), kept as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(_integer(value))
    if not isinstance(value, str):
        raise ValueError("must be text or an integer")
    text = text_within_limits(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


_NUMBER_SCHEMA = {"type": "number", "minimum": -MAX_ABS_NUMBER, "maximum": MAX_ABS_NUMBER}
_TEXT_SCHEMA = {"type": "string", "maxLength": MAX_TEXT}
Number = Annotated[float, Strict(), AfterValidator(_finite_in_range), WithJsonSchema(_NUMBER_SCHEMA)]
Text = Annotated[str, Strict(), AfterValidator(text_within_limits), WithJsonSchema(_TEXT_SCHEMA)]
Key = Annotated[
    str,
    PlainValidator(_key),
    WithJsonSchema({"anyOf": [{**_TEXT_SCHEMA, "minLength": 1, "pattern": r"\S"}, {"type": "integer"}]}),
]
Scalar = Annotated[
    str | bool | int | float | None,
    PlainValidator(_scalar),
    WithJsonSchema({"anyOf": [_TEXT_SCHEMA, _NUMBER_SCHEMA, {"type": "boolean"}, {"type": "null"}]}),
]
_DATE_SCHEMA = {"type": "string", "format": "date", "description": "between 1900-01-01 and 2100-12-31"}
Timestamp = Annotated[
    datetime,
    BeforeValidator(_text_only),
    AfterValidator(_in_date_range),
    WithJsonSchema({**_DATE_SCHEMA, "format": "date-time"}),
]
Day = Annotated[date, BeforeValidator(_text_only), AfterValidator(_in_date_range), WithJsonSchema(_DATE_SCHEMA)]
FieldName = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME, pattern=r"^[^\x00-\x1f\x7f]+$"), AfterValidator(_utf8)
]


def _distinct_names(names: Iterable[str], what: str) -> None:
    """Two names that differ only in case or surrounding blanks mean the same column to a person and
    to a file reader: refused, rather than one silently winning."""
    seen: dict[str, str] = {}
    for name in names:
        key = name.strip().casefold()
        if key in seen:
            raise ValueError(f"{what} '{seen[key]}' and '{name}' differ only in case or blanks; keep one")
        seen[key] = name


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Transaction(_Request):
    """One purchase (or a refund, with a negative amount)."""

    timestamp: Timestamp = Field(description="when; ISO 8601, without a zone it is UTC")
    amount: Number = Field(description="money, in the dataset's currency; negative for a refund")
    category: Text | None = None
    order_id: Key | None = None
    quantity: Number | None = None
    channel: Text | None = None
    product_id: Key | None = None

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"timestamp": "1998-01-05T10:30:00", "amount": 29.97}]}
    )


class Event(_Request):
    """One behaviour event of the customer (an e-mail click, a feature used), as the dataset's events table."""

    timestamp: Timestamp = Field(description="when; ISO 8601, without a zone it is UTC")
    event: FieldName = Field(description="the event's name, as in the dataset's events table")
    value: Number | None = None

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"timestamp": "2011-11-02T09:00:00", "event": "email_click"}]}
    )


class Customer(_Request):
    customer_id: Key = Field(description="the customer's id in your system; unique in the request")
    transactions: list[Transaction] = Field(default_factory=list, max_length=MAX_TRANSACTIONS)
    events: list[Event] | None = Field(
        default=None,
        max_length=MAX_TRANSACTIONS,
        description="the customer's behaviour events ([] for none); required where the dataset's models read "
        "events, ignored elsewhere",
    )
    attributes: dict[FieldName, Scalar] = Field(
        default_factory=dict,
        max_length=MAX_FIELDS,
        description="customer fields, e.g. suppression flags and contact dates; not named like a transaction field",
    )

    @field_validator("attributes")
    @classmethod
    def _no_collisions(cls, attributes: dict[str, Any]) -> dict[str, Any]:
        for name in attributes:
            if name.strip().casefold() in RESERVED_ATTRIBUTE_NAMES:
                raise ValueError(collision(name))
        _distinct_names(attributes, "attributes")
        return attributes


def collision(name: str) -> str:
    return f"attribute '{name}' is named like a transaction field and would overwrite it; rename the attribute"


def transaction_field_collisions(request: ScoreRequest, allowed: Set[str] = frozenset()) -> list[dict[str, Any]]:
    """Attributes named like an optional transaction field (``category``, ``channel``...), a problem
    where customers are scored from transactions: the attribute would be read as every transaction's
    value. ``allowed``: such names that a customer-level model reads (an uplift model's ``channel``);
    :func:`transactions_frame` keeps them out of the transactions."""
    return [
        {"path": f"customers[{position}].attributes", "value": None, "reason": collision(name)}
        for position, customer in enumerate(request.customers)
        for name in customer.attributes
        if is_transaction_field(name) and name not in allowed
    ]


def is_transaction_field(name: str) -> bool:
    return name.strip().casefold() in OPTIONAL_TRANSACTION_FIELDS


# Which dataset's champions score the request: a name as registered model names carry it.
DatasetName = Field(
    default=None,
    pattern=DATASET_NAME.pattern,
    max_length=MAX_NAME,
    description="the dataset whose champions answer; default: the server's default, or the only one that can",
)


class ScoreRequest(_Request):
    dataset: str | None = DatasetName
    as_of: Day | None = Field(default=None, description="score as of this day; default: today (UTC)")
    customers: list[Customer] = Field(min_length=1, max_length=MAX_CUSTOMERS)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "as_of": "1998-07-01",
                    "customers": [
                        {
                            "customer_id": "00042",
                            "transactions": [
                                {"timestamp": "1997-03-02", "amount": 41.5},
                                {"timestamp": "1998-01-05", "amount": 29.97},
                            ],
                            "attributes": {"opted_out": False},
                        }
                    ],
                }
            ]
        },
    )

    @field_validator("customers")
    @classmethod
    def _unique_ids(cls, customers: list[Customer]) -> list[Customer]:
        seen: set[str] = set()
        for customer in customers:
            if str(customer.customer_id) in seen:
                raise ValueError(f"customer_id '{customer.customer_id}' appears more than once")
            seen.add(str(customer.customer_id))
        return customers


Lead = dict[FieldName, Scalar]


class LeadRequest(_Request):
    dataset: str | None = DatasetName
    leads: list[Annotated[Lead, Field(max_length=MAX_FIELDS)]] = Field(
        min_length=1,
        max_length=MAX_LEADS,
        description="each lead: 'lead_id' and the fields of the dataset's leads file, named as in the file",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"dataset": "x_education", "leads": [{"lead_id": "L-1", "Lead Origin": "API", "TotalVisits": 3}]}
            ]
        },
    )

    @field_validator("leads")
    @classmethod
    def _have_ids(cls, leads: list[dict[str, Scalar]]) -> list[dict[str, Scalar]]:
        for position, lead in enumerate(leads):
            if lead.get("lead_id") in (None, ""):
                raise ValueError(f"lead {position} has no lead_id")
            try:
                _distinct_names(lead, f"lead {position}'s fields")
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return leads


def problems_of(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic's errors as {path, value, reason}, the path written as a JSON path into the request."""
    problems = []
    for error in exc.errors(include_url=False, include_context=False):
        path = ""
        for part in (*prefix, *error["loc"]):
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        reason = error["msg"].removeprefix("Value error, ")
        problems.append({"path": path or "(body)", "value": echo(error.get("input")), "reason": reason})
    return problems


def echo(value: Any) -> Any:
    """A value sent, safe to repeat in an answer: objects and lists are not repeated, long values are cut,
    text that is not valid Unicode is escaped (encoding it would fail), non-finite numbers become text."""
    if isinstance(value, dict | list):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        value = str(value)
    if isinstance(value, str):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value if len(value) <= 200 else value[:200] + "..."
    return value


def transactions_frame(request: ScoreRequest) -> pd.DataFrame:
    """The request's transactions in contract column names, each row carrying its customer's attributes."""
    rows: dict[str, list[Any]] = {"customer_id": [], "timestamp": [], "amount": []}
    optional = OPTIONAL_TRANSACTION_FIELDS
    used = {
        name for c in request.customers for t in c.transactions for name in optional if getattr(t, name) is not None
    }
    for name in used:
        rows[name] = []
    # customer attributes, never one named like a transaction field (see transaction_field_collisions)
    attribute_names = sorted({k for c in request.customers for k in c.attributes if not is_transaction_field(k)})
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


def events_frame(request: ScoreRequest) -> pd.DataFrame:
    """The request's events in the events table's contract names (customer_id, timestamp, event, value)."""
    rows = [(str(c.customer_id), e.timestamp, e.event, e.value) for c in request.customers for e in (c.events or [])]
    frame = pd.DataFrame(rows, columns=["customer_id", "timestamp", "event", "value"])
    stamps = pd.to_datetime(frame["timestamp"], utc=True) if len(frame) else pd.Series([], dtype="datetime64[ns, UTC]")
    frame["timestamp"] = stamps.dt.tz_convert(None).astype("datetime64[ns]")
    return frame.astype({"value": np.float64})


def missing_events(request: ScoreRequest, read: Sequence[str]) -> list[dict[str, Any]]:
    """Customers sent without ``events`` to models that read them: their scores would be those of a
    customer who never did any event, so the request is refused instead (send [] for none)."""
    reason = f"the dataset's models read the customers' events ({', '.join(read)}): send events, [] for none"
    return [
        {"path": f"customers[{position}].events", "value": None, "reason": reason}
        for position, customer in enumerate(request.customers)
        if customer.events is None
    ]


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


def _json_list(array: np.ndarray) -> list[Any]:
    """A column as JSON-ready values; numbers without a Python call per value."""
    values = array.tolist()
    if array.dtype.kind == "f":
        for position in np.flatnonzero(~np.isfinite(array)).tolist():
            values[position] = None
    elif array.dtype.kind not in "biu" and not set(map(type, values)) <= {str, bool, int, type(None)}:
        values = [_json_value(v) for v in values]
    return values


class FastJSONResponse(JSONResponse):
    """A JSON answer encoded by pydantic-core's serializer (Rust) instead of ``json.dumps``: 8 ms
    instead of 34 ms for a 1,000-customer answer. The same JSON as ``JSONResponse``'s (UTF-8,
    compact, keys in order; floats in their shortest round-trip form, which may be spelt differently,
    e.g. ``1e-5`` for ``1e-05``, and parse to the same numbers). A non-finite number (the records turn
    them into null, so only a bug sends one) or a type the serializer does not know goes to
    ``json.dumps``, which refuses it as before."""

    def render(self, content: Any) -> bytes:
        try:
            encoded = to_json(content)
        except PydanticSerializationError:
            return super().render(content)
        if b"NaN" in encoded or b"Infinity" in encoded:  # also any text holding those words: dumps decides
            return super().render(content)
        return encoded


def column_records(columns: Mapping[str, np.ndarray], names: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`to_json_records` for a dict of equal-length arrays, the columns ``names`` in that order."""
    lists = [_json_list(np.asarray(columns[name])) for name in names]
    if not lists:
        return [{} for _ in range(rows_of(columns))]
    return [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]


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


def event_problems(request: ScoreRequest, problems: list[Any]) -> list[dict[str, Any]]:
    """Row problems of the request's events as paths into the request."""
    positions = [(ci, ei) for ci, c in enumerate(request.customers) for ei in range(len(c.events or []))]
    found = []
    for problem in problems:
        for row in problem.rows:
            ci, ei = positions[row - 1]
            event = (request.customers[ci].events or [])[ei]
            value = _plain(getattr(event, problem.column, None))
            path = f"customers[{ci}].events[{ei}].{problem.column}"
            found.append({"path": path, "value": value, "reason": f"{problem.reason}; {problem.fix}"})
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


# Answers, as documented in /openapi.json (the routes build them as plain JSON for speed; tests check
# real answers against these shapes).
class Problem(BaseModel):
    path: str = Field(description="where in the request, e.g. customers[3].transactions[0].amount; (body) for all")
    value: Any = Field(description="the value sent (objects and lists are not repeated; long text is cut)")
    reason: str


class ErrorBody(BaseModel):
    error: str
    problems: list[Problem] | None = Field(default=None, description="one entry per field that is wrong")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "the request has invalid fields",
                    "problems": [
                        {
                            "path": "customers[0].transactions[0].amount",
                            "value": "ten",
                            "reason": "Input should be a valid number",
                        }
                    ],
                }
            ]
        }
    )


class CustomerScore(BaseModel):
    customer_id: str
    churn_probability: float | None = None
    purchase_probability: float | None = None
    purchase_probability_by_category: dict[str, float | None] = Field(default_factory=dict)
    event_probability_by_event: dict[str, float | None] | None = Field(
        default=None, description="where the dataset's propensity model reads an events table: P(event) per event"
    )
    p_alive: float | None = None
    expected_orders: float | None = None
    expected_order_value: float | None = None
    clv: float | None = None
    value_at_risk: float | None = None
    value_tier: str | None = None
    risk_band: str | None = None
    potential_band: str | None = None
    segment: str | None = None
    action: str | None = None
    suppressed: bool | None = None
    suppression_reason: str | None = None
    macro_segment: str | None = Field(
        default=None,
        description="the customer's macro segment (needs-based group found from behaviour, named from what sets it "
        "apart); present where the dataset has a macro_segment champion",
    )

    model_config = ConfigDict(extra="allow")


class ScoreResponse(BaseModel):
    dataset: str
    as_of: str = Field(description="the day scored as of, YYYY-MM-DD")
    customers: list[CustomerScore]
    models: dict[str, str] = Field(description="family -> registered model version used")
    segment_version: str | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dataset": "cdnow",
                    "as_of": "1998-07-01",
                    "customers": [
                        {
                            "customer_id": "00042",
                            "churn_probability": 0.62,
                            "purchase_probability": 0.31,
                            "purchase_probability_by_category": {},
                            "p_alive": 0.55,
                            "expected_orders": 0.8,
                            "expected_order_value": 35.1,
                            "clv": 28.4,
                            "value_at_risk": 17.6,
                            "value_tier": "B",
                            "risk_band": "high",
                            "potential_band": "medium",
                            "segment": "at_risk_valuable",
                            "action": "retention offer",
                            "suppressed": False,
                            "suppression_reason": None,
                        }
                    ],
                    "models": {"churn": "3", "propensity": "2", "clv": "4"},
                    "segment_version": "2026-11-30T12:00:00+00:00",
                }
            ]
        }
    )


class LeadScore(BaseModel):
    lead_id: str
    probability: float | None
    score: float | None = Field(description="0-100")
    tier: str | None
    reasons_up: list[str]
    reasons_down: list[str]

    model_config = ConfigDict(extra="allow")


class LeadResponse(BaseModel):
    dataset: str
    leads: list[LeadScore]
    model_version: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dataset": "x_education",
                    "leads": [
                        {
                            "lead_id": "L-1",
                            "probability": 0.82,
                            "score": 82,
                            "tier": "hot",
                            "reasons_up": ["Lead Origin = Lead Add Form", "Total Time Spent on Website high"],
                            "reasons_down": ["Do Not Email = Yes"],
                        }
                    ],
                    "model_version": "4",
                }
            ]
        }
    )


class ModelInfo(BaseModel):
    name: str
    dataset: str
    family: str
    version: str
    run_id: str
    trained_at: str
    candidate: str | None
    metrics: dict[str, float]


class DatasetProblem(BaseModel):
    dataset: str = Field(description="empty for store-wide problems")
    family: str
    reason: str


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    problems: list[DatasetProblem]
    datasets: dict[str, dict[str, Any]]
    default_dataset: str | None
    loaded_at: str


class ReloadResponse(BaseModel):
    reloaded: bool = Field(description="true when everything loaded")
    versions: dict[str, dict[str, str]]
    kept: list[str] = Field(description="what failed to load and is served from the last good load")
    problems: list[DatasetProblem]


class Readiness(BaseModel):
    ready: bool
    datasets: dict[str, dict[str, Any]]
    problems: dict[str, str]
    worker: int | None = Field(
        None, description="the worker that answered (1 to VALUECAST_WORKERS): each loads the models on its own"
    )


def too_many(exc: ValidationError) -> str | None:
    """The 413 message when the request holds more customers or leads than one request may."""
    for error in exc.errors(include_url=False):
        if error["type"] == "too_long" and error["loc"] in (("customers",), ("leads",)):
            what = str(error["loc"][0])
            limit = MAX_CUSTOMERS if what == "customers" else MAX_LEADS
            return f"{len(error['input']):,} {what} in one request; send at most {limit:,}"
    return None
