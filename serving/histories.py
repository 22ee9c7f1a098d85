"""A score request's purchase histories as arrays, for :func:`serving.scoring.score_histories`.

Two ways in, one result:

- :func:`histories_of` reads a request pydantic has validated (every field a Python object);
- :func:`plain_request` reads the JSON body of the usual request directly: pydantic validates the
  request without its purchases (ids, attributes, limits), and the purchases are checked as columns
  with the same rules. It accepts only what the full validation accepts with the same values (naive
  ISO 8601 times, numbers, text categories); for anything else it answers None and the request is
  validated the full way, which reports each problem with its path. A 1,000-customer request spends
  ~4 us per purchase in pydantic's model objects; as columns it is a few numpy passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import itemgetter
from typing import Any

import numba
import numpy as np
from pydantic import ValidationError

from serving.api import (
    EARLIEST,
    LATEST,
    MAX_ABS_NUMBER,
    MAX_TRANSACTIONS,
    OPTIONAL_TRANSACTION_FIELDS,
    ScoreRequest,
    text_within_limits,
)

PLAIN_FIELDS = {"timestamp", "amount"}
CATEGORY_FIELDS = {*PLAIN_FIELDS, "category"}
EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)
# The naive ISO 8601 forms the column check takes ("d": a digit, "T": "T" or a blank), with the
# lengths they come in: a day, minutes, seconds, seconds with 1-6 decimals.
ISO_TEMPLATE = "dddd-dd-ddTdd:dd:dd.dddddd"
ISO_LENGTHS = (10, 16, 19, 21, 22, 23, 24, 25, 26)
# The template per position for the compiled check: 0 a digit, 1 the date-time separator ("T" or a
# blank), otherwise the literal character's code. The parse reads the fields at these positions.
_ISO_KINDS = np.array([{"d": 0, "T": 1}.get(kind, ord(kind)) for kind in ISO_TEMPLATE], dtype=np.int64)
_ISO_LENGTH_OK = np.isin(np.arange(len(ISO_TEMPLATE) + 1), ISO_LENGTHS)
_EARLIEST_US = int(np.datetime64(EARLIEST, "us").astype(np.int64))
_LATEST_US = int(np.datetime64(LATEST, "us").astype(np.int64))


@dataclass
class Histories:
    """A request's customers as arrays for :func:`serving.scoring.score_histories`."""

    ids: list[str]
    code: np.ndarray
    ts: np.ndarray
    amount: np.ndarray
    attributes: dict[str, list[Any]]
    # Per row, the position of its category in ``category_names`` ("(none)" for a missing one, as
    # features.transactions.encode names it); None when no transaction carries a category.
    category: np.ndarray | None = None
    category_names: np.ndarray | None = None


def histories_of(
    request: ScoreRequest, reserved: set[str], missing_values: Sequence[str] = (), *, with_categories: bool = True
) -> Histories | None:
    """The request as purchase histories (with their categories), or None when it carries more than
    those can hold: order ids or other optional transaction fields, or attributes named in
    ``reserved`` (columns the dataset's value maps check or the contract's names), which the row
    checks read. Timestamps become int64 nanoseconds in UTC (naive times are UTC), as
    :func:`serving.api.transactions_frame` converts them; a category in ``missing_values`` (the
    dataset's) is missing, as the row checks make it. ``with_categories=False`` (the dataset maps
    category values): a request with categories goes the pandas way."""
    code, stamps, amount, categories = [], [], [], []
    for position, customer in enumerate(request.customers):
        for t in customer.transactions:
            if t.model_fields_set - CATEGORY_FIELDS and any(
                getattr(t, name) is not None for name in OPTIONAL_TRANSACTION_FIELDS if name != "category"
            ):
                return None
            code.append(position)
            stamps.append(t.timestamp)
            amount.append(t.amount)
            categories.append(t.category)
    # Integer arithmetic on the datetimes: numpy's conversion of datetime objects is 5x slower.
    if any(stamp.tzinfo is not None for stamp in stamps):
        stamps = [s.astimezone(UTC).replace(tzinfo=None) if s.tzinfo is not None else s for s in stamps]
    ts = np.asarray([(stamp - EPOCH) // MICROSECOND * 1000 for stamp in stamps], dtype=np.int64)
    purchases = Purchases(np.asarray(code, dtype=np.int64), ts, np.asarray(amount, dtype=np.float64), categories)
    return purchases.histories(request, reserved, missing_values, with_categories=with_categories)


@dataclass
class Purchases:
    """A request's purchases as columns: the customer's position per row, times (int64 ns, UTC),
    amounts, and categories (None where a row has none; no list where no row has one)."""

    code: np.ndarray
    ts: np.ndarray
    amount: np.ndarray
    categories: list[str | None] | None

    def histories(
        self,
        request: ScoreRequest,
        reserved: set[str],
        missing_values: Sequence[str] = (),
        *,
        with_categories: bool = True,
    ) -> Histories | None:
        """These purchases with ``request``'s customers (see :func:`histories_of`)."""
        names = {name for customer in request.customers for name in customer.attributes}
        sent = self.categories is not None and any(c is not None for c in self.categories)
        if names & reserved or (sent and not with_categories):
            return None
        ids = [str(c.customer_id) for c in request.customers]
        attributes = {name: [c.attributes.get(name) for c in request.customers] for name in sorted(names)}
        histories = Histories(ids, self.code, self.ts, self.amount, attributes)
        missing = set(missing_values)
        known = [None if c is None or c in missing else c for c in self.categories or ()]
        if any(c is not None for c in known):  # only missing-value markers: no categories, as the row checks see it
            labels: dict[str, int] = {}
            codes = [labels.setdefault("(none)" if c is None else c, len(labels)) for c in known]
            histories.category = np.asarray(codes, dtype=np.int32)
            histories.category_names = np.asarray(list(labels), dtype=object)
        return histories


@dataclass
class PlainBody:
    """A body :func:`plain_request` read: its purchases as columns, and the body itself for the full
    validation where a dataset needs more than histories (an uplift-only dataset, row checks)."""

    purchases: Purchases
    body: Mapping[str, Any]

    def request(self) -> ScoreRequest:
        """The whole body validated the full way (it passes: the column checks accept less)."""
        return ScoreRequest.model_validate(self.body)


def plain_request(body: Any) -> tuple[ScoreRequest, PlainBody] | None:
    """The usual score request read without a model object per purchase: the request validated by
    pydantic without its purchases, and the purchases checked as columns. None when the body holds
    anything the column checks do not take (events, other transaction fields, a zone on a time, a
    text amount, any value out of range, any request pydantic refuses): validate it the full way."""
    if not isinstance(body, dict) or type(customers := body.get("customers")) is not list:
        return None
    if not set(map(type, customers)) <= {dict} or any("events" in c for c in customers):
        return None
    lists = [c.get("transactions", []) for c in customers]
    if not set(map(type, lists)) <= {list} or max(map(len, lists), default=0) > MAX_TRANSACTIONS:
        return None
    rows = [row for one in lists for row in one]
    if not set(map(type, rows)) <= {dict}:
        return None
    fields = set(map(len, rows))
    with_category = 0 if fields <= {2} else sum(map(dict.__contains__, rows, repeat("category")))
    if sum(map(len, rows)) != 2 * len(rows) + with_category:
        return None  # a field other than timestamp, amount and category
    try:
        stamps, amounts = list(map(itemgetter("timestamp"), rows)), list(map(itemgetter("amount"), rows))
    except KeyError:
        return None
    categories = [row.get("category") for row in rows] if with_category else None
    ts, amount = iso_times(stamps), numbers(amounts)
    if ts is None or amount is None or not all(c is None or plain_text(c) for c in categories or ()):
        return None
    try:
        skeleton = ScoreRequest.model_validate({**body, "customers": [{**c, "transactions": []} for c in customers]})
    except ValidationError:
        return None
    code = np.repeat(np.arange(len(lists), dtype=np.int64), [len(one) for one in lists])
    return skeleton, PlainBody(Purchases(code, ts, amount, categories), body)


def iso_times(stamps: list[Any]) -> np.ndarray | None:
    """Naive ISO 8601 texts (``1998-01-05``, ``1998-01-05T10:30``, seconds, up to 6 decimals; "T"
    or a blank) as int64 nanoseconds, if every one is such a text of a real moment within the API's
    date range; otherwise None. What numpy's ``datetime64[us]`` reads from these forms, in one
    compiled pass over the characters (a 1,000-customer request's 20,000 stamps: ~13 ms as numpy
    checks and parses -> 4-6 ms, most of it making the text array; docs/benchmarks.md)."""
    if not set(map(type, stamps)) <= {str}:
        return None
    if not stamps:
        return np.empty(0, dtype=np.int64)
    text = np.asarray(stamps, dtype=str)
    width = text.dtype.itemsize // 4
    lengths = np.char.str_len(text)
    # numpy drops trailing NULs from fixed-width text: the lengths must be Python's too
    if width > len(ISO_TEMPLATE) or int(lengths.sum()) != sum(map(len, stamps)):
        return None
    out = np.empty(len(stamps), dtype=np.int64)
    chars = text.view(np.uint32).reshape(len(stamps), width)
    if not _iso_microseconds(chars, lengths, _ISO_KINDS, _ISO_LENGTH_OK, _EARLIEST_US, _LATEST_US, out):
        return None
    return out * 1000


@numba.njit(cache=True, nogil=True, inline="always")
def _digits(row: np.ndarray, start: int, end: int) -> int:  # pragma: no cover - compiled
    value = 0
    for k in range(start, end):
        value = value * 10 + (row[k] - 48)
    return value


@numba.njit(cache=True, nogil=True)
def _iso_microseconds(  # pragma: no cover - compiled
    chars: np.ndarray,
    lengths: np.ndarray,
    kinds: np.ndarray,
    length_ok: np.ndarray,
    earliest: int,
    latest: int,
    out: np.ndarray,
) -> bool:
    """Each row of ``chars`` (UTF-32 code points, ``lengths`` used) as microseconds since 1970 into
    ``out``; False at the first that does not fit the template (``kinds``, ``length_ok``), is no real
    moment (1998-02-30, 24:00, a 60th second) or lies outside ``earliest``..``latest``."""
    for r in range(chars.shape[0]):
        row, n = chars[r], lengths[r]
        if not length_ok[n]:
            return False
        for k in range(n):
            c, kind = row[k], kinds[k]
            if not (48 <= c <= 57 if kind == 0 else (c == 84 or c == 32) if kind == 1 else c == kind):
                return False
        year, month, day = _digits(row, 0, 4), _digits(row, 5, 7), _digits(row, 8, 10)
        hour = _digits(row, 11, 13) if n > 10 else 0
        minute = _digits(row, 14, 16) if n > 10 else 0
        second = _digits(row, 17, 19) if n > 16 else 0
        fraction = _digits(row, 20, n) * 10 ** (26 - n) if n > 20 else 0
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        month_days = 29 if month == 2 and leap else (28 if month == 2 else (30 if month in (4, 6, 9, 11) else 31))
        if not (1 <= month <= 12 and 1 <= day <= month_days and hour <= 23 and minute <= 59 and second <= 59):
            return False
        # days since 1970-01-01 of a proleptic Gregorian date (Hinnant's days_from_civil)
        y = year - 1 if month <= 2 else year
        era = y // 400
        of_era = y - era * 400
        of_year = (153 * (month + 9 if month <= 2 else month - 3) + 2) // 5 + day - 1
        days = era * 146097 + of_era * 365 + of_era // 4 - of_era // 100 + of_year - 719468
        value = ((days * 24 + hour) * 60 + minute) * 60 + second
        value = value * 1_000_000 + fraction
        if value < earliest or value > latest:
            return False
        out[r] = value
    return True


def numbers(values: list[Any]) -> np.ndarray | None:
    """JSON numbers (not true/false, not text) as float64, if all are finite and within the API's
    limit; otherwise None."""
    kinds = set(map(type, values))
    if not kinds <= {float, int}:
        return None
    if int in kinds and any(type(v) is int and abs(v) > MAX_ABS_NUMBER for v in values):
        return None  # before float64, which would round a huge integer into range
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all() or (array.size and np.abs(array).max() > MAX_ABS_NUMBER):
        return None
    return array


def plain_text(value: Any) -> bool:
    """A category the full validation takes as it is: text that passes the API's own text check
    (:func:`serving.api.text_within_limits`: the length limit, valid Unicode)."""
    if type(value) is not str:
        return False
    try:
        text_within_limits(value)
    except ValueError:
        return False
    return True
