"""Turn a raw table into contract columns, checking every row before anything is computed.

Each problem becomes one message with a count, the first few row numbers and the fix. Rows that
cannot be used go to a quarantine frame with their reason; they are never dropped silently. Only
data that leaves nothing usable (a required column missing, no usable row) stops a run.

Row numbers are 1-based data rows of the file (the header is not counted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.codes import factorize
from features.config import (
    DATE_ORDERS,
    EVENT_REQUIRED,
    TRANSACTION_REQUIRED,
    DatasetConfig,
    TableConfig,
    attribute_name_collisions,
)
from features.expressions import ExpressionError, evaluate_expression, parse_expression

ROW = "_row"
Kind = Literal["transactions", "customers", "leads", "campaigns", "events"]
FIRST_ROWS_SHOWN = 5


class DataError(ValueError):
    """Data that cannot be used at all; the message says which file, column and how to fix it."""


class NoUsableRowsError(DataError):
    """Every row of a table failed a check; ``problems`` say which and why."""

    def __init__(self, message: str, problems: list[Problem]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class Problem:
    """One kind of problem in one column, with how many rows it touches."""

    source: str
    column: str
    reason: str
    count: int
    rows: tuple[int, ...]
    fix: str
    outcome: str = "quarantined"  # what happens to the rows: quarantined, kept, not used for features

    @property
    def quarantined(self) -> bool:
        return self.outcome == "quarantined"

    def message(self) -> str:
        shown = ", ".join(str(r) for r in self.rows)
        more = ", ..." if self.count > len(self.rows) else ""
        return (
            f"{self.source}: column '{self.column}': {self.count:,} row(s) {self.reason} "
            f"(rows {shown}{more}); {self.outcome}. Fix: {self.fix}"
        )


@dataclass
class Checked:
    """A table after checking: usable rows in contract columns, quarantined raw rows, problems."""

    frame: pd.DataFrame
    quarantine: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    # True when the table maps no id column (leads only) and ids are 'row-<n>'; a problem with
    # outcome 'kept' says so too, for commands that print problems.
    row_number_ids: bool = False


@dataclass
class _Collector:
    source: str
    raw: pd.DataFrame
    bad: np.ndarray
    reasons: list[tuple[np.ndarray, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def flag(self, mask: np.ndarray, column: str, reason: str, fix: str, outcome: str = "quarantined") -> None:
        """Record rows failing one check; rows already quarantined for another reason are not counted."""
        mask = np.asarray(mask, dtype=bool) & ~self.bad
        count = int(mask.sum())
        if count == 0:
            return
        rows = tuple(int(r) for r in self.raw[ROW].to_numpy()[np.flatnonzero(mask)[:FIRST_ROWS_SHOWN]])
        self.problems.append(Problem(self.source, column, reason, count, rows, fix, outcome))
        if outcome == "quarantined":
            self.bad |= mask
            self.reasons.append((mask, f"{column}: {reason}"))

    def quarantine_frame(self) -> pd.DataFrame:
        reason = np.full(len(self.raw), "", dtype=object)
        for mask, text in self.reasons:
            reason[mask] = text
        quarantined = self.raw.loc[self.bad].copy()
        quarantined.insert(0, "reason", reason[self.bad])
        return quarantined.rename(columns={ROW: "row"}).set_index("row").reset_index()


def _blank(values: pd.Series) -> np.ndarray:
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy() < 0
    blank = values.isna().to_numpy(dtype=bool, copy=True)
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        blank |= values.astype("string").str.strip().fillna("").eq("").to_numpy(dtype=bool)
    return blank


def _normalise_ids(values: pd.Series) -> pd.Series:
    """Ids as a categorical of stripped text (blank ids missing).

    Float ids that are whole numbers (17850.0, as Online Retail stores them) lose '.0'. The ids are
    factorised once here and the codes reused downstream: hashing ten million id strings is the
    single most expensive step of a feature run, so it must happen only once.
    """
    if pd.api.types.is_float_dtype(values.dtype):
        whole = values.dropna()
        if (whole == np.floor(whole)).all():
            values = values.astype("Int64")
    codes, uniques = factorize(values)
    text = pd.Series(uniques.astype("string"), dtype="string").str.strip()
    blank = text.isna() | text.eq("")
    if blank.any() or text.duplicated().any():
        # Rare: ids that are blank or differ only by surrounding spaces; recode the few uniques.
        recode, text_uniques = pd.factorize(text.mask(blank), use_na_sentinel=True)
        codes = np.where(codes >= 0, recode[np.maximum(codes, 0)], -1)
        text = pd.Series(text_uniques, dtype="string")
    categories = pd.Index(text.to_numpy(dtype=object), dtype="string")
    return pd.Series(pd.Categorical.from_codes(codes, categories=categories), index=values.index)


def _exact_duplicates(
    raw: pd.DataFrame, file_columns: list[str], ids: pd.Series, stamps: pd.Series | None
) -> np.ndarray:
    """Rows that repeat an earlier row in every file column (the first copy is not flagged).

    Exact copies share their id and timestamp, so only rows whose (id, timestamp) pair occurs more
    than once are compared column by column: on a large log that is a small fraction of the rows.
    """
    key = ids.cat.codes.to_numpy().astype(np.int64)
    if stamps is not None:
        # Mixing the timestamp in by multiplication may wrap around; a collision only adds candidates.
        key = key + stamps.to_numpy(dtype="datetime64[ns]").view(np.int64) * np.int64(1_000_003)
    # Keys seen more than once, found by sorting (numpy's integer sort beats hashing here).
    ordered = np.sort(key)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    duplicated = np.zeros(len(raw), dtype=bool)
    if repeated.size == 0:
        return duplicated
    candidate = repeated[np.minimum(np.searchsorted(repeated, key), repeated.size - 1)] == key
    if candidate.any():
        duplicated[candidate] = raw.loc[candidate].duplicated(subset=file_columns, keep="first").to_numpy()
    return duplicated


_SPELLED_NON_FINITE = ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")
# 1.234.567,89 with decimal ',': dots are thousands markers only in groups of three.
_THOUSANDS_DOTS = r"[+-]?\d{1,3}(?:\.\d{3})+(?:,\d*)?"


def parse_numbers(values: pd.Series, decimal: str = ".") -> pd.Series:
    """Numbers as float64; text that is not a number becomes missing (the checks then say so).

    With ``decimal=','`` a comma is the decimal mark ('12,50' is 12.5) and dots are accepted only as
    thousands markers in groups of three ('1.234,56'); '12.5' is then not a number rather than a
    guess.
    """
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("float64")
    text = values.astype("string").str.strip()
    if decimal == ",":
        text = text.mask(text.str.fullmatch(_THOUSANDS_DOTS).fillna(False), text.str.replace(".", "", regex=False))
        text = text.mask(text.str.contains(".", regex=False).fillna(False)).str.replace(",", ".", regex=False)
    return pd.to_numeric(text, errors="coerce").astype("float64")


def _spelled_non_finite(values: pd.Series, parsed: pd.Series) -> np.ndarray:
    """Text spelling out nan or inf: not a typo but a number that cannot be money."""
    suspect = (parsed.isna() | np.isinf(parsed)).to_numpy(dtype=bool)
    spelled = np.zeros(len(values), dtype=bool)
    if suspect.any() and not pd.api.types.is_numeric_dtype(values.dtype):
        text = values[suspect].astype("string").str.strip().str.lower()
        spelled[suspect] = text.isin(_SPELLED_NON_FINITE).fillna(False).to_numpy(dtype=bool)
    return spelled


class AmbiguousDatesError(DataError):
    """Numeric dates that read both day-first and month-first, and no date_format to decide."""

    def __init__(self, message: str, examples: list[str]) -> None:
        super().__init__(message)
        self.examples = examples


# 01-02-2018, 1/2/18, 01.02.2018 13:45 : day and month in an order the text alone does not fix.
_DAY_MONTH = r"^(?P<a>\d{1,2})[./\- ](?P<b>\d{1,2})[./\- ](?P<y>\d{4}|\d{2})(?:[ T]+(?P<time>.+))?$"
_YEAR_FIRST = r"^(?P<y>\d{4})[./](?P<a>\d{1,2})[./](?P<b>\d{1,2})(?:[ T]+(?P<time>.+))?$"


def parse_dates(values: pd.Series, date_format: str | None = None) -> pd.Series:
    """Dates as datetime64[ns] (naive; time-zone aware values in UTC); unparseable text is missing.

    ``date_format`` is a strptime format, or ``day_first`` / ``month_first`` for numeric dates.
    Without it, ISO dates are read (one vectorised pass: the common and the fast case), and other
    numeric dates only when no value reads both ways: a column is read with ONE order of day and
    month, never value by value, so 31-01-2018 is never a reason to read 01-02-2018 as 2 January.
    Raises :class:`AmbiguousDatesError` when the order cannot be known.
    """
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _naive(values)
    text = values.astype("string").str.strip()
    if date_format and date_format not in DATE_ORDERS:
        return _naive(pd.to_datetime(text, format=date_format, errors="coerce"))
    parsed = _naive(pd.to_datetime(text, format="ISO8601", errors="coerce"))
    rest = (parsed.isna() & text.fillna("").ne("")).to_numpy(dtype=bool)
    if not rest.any():
        return parsed
    parsed = parsed.copy()
    parsed[rest] = _parse_other_dates(text[rest], date_format).to_numpy()
    return parsed


def parse_day(value: object, name: str) -> pd.Timestamp | None:
    """A day written YYYY-MM-DD (or a date or timestamp object) as a Timestamp; None or "" for none.
    Anything else raises ValueError naming ``name`` (the option or argument) and the form to use."""
    if value is None or value == "":
        return None
    try:
        day = pd.Timestamp(pd.to_datetime(value, format="%Y-%m-%d"))
    except (ValueError, TypeError):
        day = pd.NaT
    if day is pd.NaT:
        raise ValueError(f"{name}={value!r} is not a date: write it as YYYY-MM-DD, e.g. 1997-10-01")
    return day


def _naive(parsed: pd.Series) -> pd.Series:
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.astype("datetime64[ns]")


def _parse_other_dates(text: pd.Series, order: str | None) -> pd.Series:
    """Dates that are not ISO: numeric day/month/year in one order, year/month/day with slashes or
    dots, and dates with month names ('5 Jan 2020'); anything else is missing.

    Numeric dates are rewritten as ISO text with Arrow's vectorised string kernels and parsed in
    one pass (a million day-first dates take about a second, not the ten of per-value parsing).
    """
    arrow = pa.array(text.array, type=pa.large_string())
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    parts = pc.extract_regex(arrow, _DAY_MONTH)
    numeric = parts.is_valid().to_numpy(zero_copy_only=False)
    if numeric.any():
        first, second = (pc.cast(parts.field(f), pa.int16()).to_numpy(zero_copy_only=False) for f in ("a", "b"))
        order = order or _date_order(text[numeric], first[numeric], second[numeric])
        day, month = ("a", "b") if order == "day_first" else ("b", "a")
        parsed[numeric] = _iso_dates(parts, day, month)[numeric].to_numpy()
    year_first = pc.extract_regex(arrow, _YEAR_FIRST)
    ymd = year_first.is_valid().to_numpy(zero_copy_only=False) & ~numeric
    if ymd.any():
        parsed[ymd] = _iso_dates(year_first, "b", "a")[ymd].to_numpy()
    named = text.str.contains(r"[A-Za-z]{3}", regex=True).fillna(False).to_numpy(dtype=bool) & ~numeric & ~ymd
    if named.any():  # month names leave nothing to guess; dateutil reads them value by value
        parsed[named] = _naive(pd.to_datetime(text[named], format="mixed", errors="coerce")).to_numpy()
    return parsed


def _iso_dates(parts: pa.StructArray, day: str, month: str) -> pd.Series:
    """Parse year/month/day/time fields (extracted text) as 'YYYY-MM-DD[ time]'."""
    year = parts.field("y")
    text_type = year.type
    two_digits = pc.equal(pc.utf8_length(year), 2)
    # strptime's %y rule: 69-99 are 1900s, 00-68 are 2000s
    century = pc.if_else(pc.less(pc.cast(year, pa.int16()), 69), pa.scalar("20", text_type), pa.scalar("19", text_type))
    year = pc.if_else(two_digits, pc.binary_join_element_wise(century, year, pa.scalar("", text_type)), year)
    iso = pc.binary_join_element_wise(
        year,
        pc.utf8_lpad(parts.field(month), 2, "0"),
        pc.utf8_lpad(parts.field(day), 2, "0"),
        pa.scalar("-", text_type),
    )
    # an absent time is an empty match: trim the space it leaves
    iso = pc.utf8_rtrim_whitespace(pc.binary_join_element_wise(iso, parts.field("time"), pa.scalar(" ", text_type)))
    text = pd.Series(iso, dtype=pd.ArrowDtype(text_type)).astype("string")
    return _naive(pd.to_datetime(text, format="ISO8601", errors="coerce"))


def _date_order(text: pd.Series, first: np.ndarray, second: np.ndarray) -> str:
    """The one order of day and month that every value allows; raise when the values cannot tell."""
    both = (first <= 12) & (second <= 12) & (first != second)
    if both.any():
        examples = list(dict.fromkeys(text[both].tolist()))[:3]
        raise AmbiguousDatesError(f"dates such as {examples} read both day-first and month-first", examples)
    day_first, month_first = first > 12, second > 12
    if day_first.any() and month_first.any():
        examples = [text[day_first].iloc[0], text[month_first].iloc[0]]
        raise AmbiguousDatesError(f"dates such as {examples} are written in both orders", examples)
    return "month_first" if month_first.any() else "day_first"


def referenced_columns(expression: str, columns: list[str]) -> list[str]:
    """The file columns an expression names, bare (``UnitPrice``) or in back ticks (```Unit Price```)."""
    try:
        named = parse_expression(expression).columns
    except ExpressionError:
        return []
    return [c for c in columns if c in named]


def _evaluate(raw: pd.DataFrame, name: str, expression: str, source: str, decimal: str = ".") -> pd.Series:
    """A ``derived:`` expression over file columns, checked by features.expressions (never eval)."""
    file_columns = [c for c in raw.columns if c != ROW]
    try:
        parsed = parse_expression(expression)
    except ExpressionError as exc:  # configs are checked on loading; this guards hand-built ones
        raise DataError(f"{source}: derived column '{name}' = '{expression}' is refused: {exc}") from exc
    absent = [c for c in parsed.columns if c not in raw.columns or c == ROW]
    if absent:
        raise DataError(
            f"{source}: derived column '{name}' = '{expression}' names column(s) {absent} that the file "
            f"does not have; the file's columns are {file_columns}. Put names with spaces in `back ticks`"
        )
    values = {c: parse_numbers(raw[c], decimal).to_numpy() for c in parsed.columns}
    result = evaluate_expression(parsed, values)
    return pd.Series(np.broadcast_to(result, (len(raw),)), index=raw.index, dtype="float64")


def _apply_category_keywords(raw: pd.DataFrame, config: DatasetConfig, source: str) -> pd.Series:
    rule = config.category_keywords
    assert rule is not None
    if rule.source not in raw.columns:
        raise DataError(
            f"{source}: category_keywords.source '{rule.source}' is not a column; "
            f"columns are {[c for c in raw.columns if c != ROW]}"
        )
    text = raw[rule.source].astype("string").str.upper().fillna("")
    category = pd.Series(rule.default, index=raw.index, dtype=object)
    assigned = np.zeros(len(raw), dtype=bool)
    for name, words in rule.keywords.items():
        pattern = "|".join(re.escape(word.upper()) for word in words)
        hit = text.str.contains(pattern, regex=True).to_numpy(dtype=bool) & ~assigned
        category[hit] = name
        assigned |= hit
    return category.astype("string")


ID_COLUMN = {
    "transactions": "customer_id",
    "customers": "customer_id",
    "leads": "lead_id",
    "campaigns": "customer_id",
    "events": "customer_id",
}
# campaigns: the arm is required by its config (CampaignTableConfig); scoring maps no arm.
REQUIRED = {
    "transactions": TRANSACTION_REQUIRED,
    "customers": ("customer_id",),
    "leads": (),
    "campaigns": (),
    "events": EVENT_REQUIRED,
}
DATE_COLUMNS = ("timestamp", "signup_date", "cancellation_date", "created_at", "sent_at")
BINARY_COLUMNS = ("converted", "churned", "visit", "conversion")
ROW_ID_PREFIX = "row-"


def check_table(
    raw: pd.DataFrame,
    table: TableConfig,
    config: DatasetConfig,
    kind: Kind,
    source: str,
    *,
    as_of: pd.Timestamp | None = None,
    now: pd.Timestamp | None = None,
) -> Checked:
    """Map a raw table (with a ``_row`` column) onto contract columns and check every row.

    ``as_of`` marks rows dated on or after it as outside the feature window (reported, kept: labels
    use them). ``now`` is the wall clock: rows dated after it cannot be real and are quarantined.
    Leads get calendar columns (:data:`features.config.LEAD_CALENDAR`) from ``created_at``, and
    ids made from their row numbers when no ``lead_id`` is mapped.
    """
    file_columns = [c for c in raw.columns if c != ROW]
    _check_mapping(raw, table, config, kind, source, file_columns)
    raw = _blank_missing_values(raw, config, file_columns)

    collector = _Collector(source, raw, np.zeros(len(raw), dtype=bool))
    out = pd.DataFrame(index=raw.index)
    id_column = ID_COLUMN[kind]
    ids, row_number_ids = _map_ids(raw, table, id_column, collector)
    out[id_column] = ids
    _apply_value_maps(raw, config, collector)
    for name in [c for c in DATE_COLUMNS if c in table.columns]:
        out[name] = _parse_date_column(raw, table, config, name, source, collector)
    if kind == "leads" and "created_at" in out.columns:
        for name, values in lead_calendar(out["created_at"], raw[table.columns["created_at"]]).items():
            out[name] = values
    _parse_number_columns(raw, table, collector, out)
    _add_derived_columns(raw, table, source, collector, out)
    if "amount" in out.columns:
        _flag_amounts(out["amount"], table, collector)
    _carry_contract_columns(raw, table, config, kind, source, out, collector)
    if kind != "events":  # an event row describes one event, not its customer: no attributes
        _add_attributes(raw, table, config, source, file_columns, out, campaign=kind == "campaigns")
    _flag_duplicates(raw, table, file_columns, ids, collector, out.get("timestamp"))
    if "timestamp" in out.columns:
        _flag_dates_outside(out["timestamp"], table.columns["timestamp"], collector, as_of, now)

    out[ROW] = raw[ROW].to_numpy()
    if kind != "transactions":  # only the log is large enough for categorical ids to pay
        out[id_column] = out[id_column].astype("string")
    usable = _usable_rows(out, collector)
    return Checked(usable, collector.quarantine_frame(), collector.problems, row_number_ids)


def _blank_missing_values(raw: pd.DataFrame, config: DatasetConfig, file_columns: list[str]) -> pd.DataFrame:
    """A shallow copy of ``raw`` in which the config's ``missing_values`` markers of text columns are
    missing; columns are replaced, never modified in place."""
    raw = raw.copy(deep=False)
    for column in file_columns:
        if config.missing_values and not pd.api.types.is_numeric_dtype(raw[column].dtype):
            raw[column] = raw[column].mask(raw[column].isin(config.missing_values))
    return raw


def _add_derived_columns(
    raw: pd.DataFrame, table: TableConfig, source: str, collector: _Collector, out: pd.DataFrame
) -> None:
    """The table's ``derived:`` columns into ``out``; rows whose expression gives no number are flagged."""
    for name, expression in table.derived.items():
        values = _evaluate(raw, name, expression, source, table.decimal)
        collector.flag(
            values.isna().to_numpy(),
            expression,
            f"give no number for {name} = {expression}",
            "make sure the columns in the expression hold plain numbers",
        )
        out[name] = values


def _usable_rows(out: pd.DataFrame, collector: _Collector) -> pd.DataFrame:
    """The rows no check flagged; stop when there are none, saying why."""
    usable = out.loc[~collector.bad].reset_index(drop=True) if collector.bad.any() else out
    if usable.empty:
        summary = "; ".join(p.message() for p in collector.problems) or "the file has no data rows"
        raise NoUsableRowsError(f"{collector.source}: no usable rows. {summary}", collector.problems)
    return usable


def _check_mapping(
    raw: pd.DataFrame, table: TableConfig, config: DatasetConfig, kind: Kind, source: str, file_columns: list[str]
) -> None:
    """Stop when the config names columns the file lacks or leaves a required column unmapped."""
    for name in [*table.columns.values(), *table.exclude]:
        if name not in raw.columns:
            raise DataError(
                f"{source}: the config maps column '{name}', which the file does not have; "
                f"the file's columns are {file_columns}. Fix the column mapping in {config.source_file}"
            )
    missing = [c for c in REQUIRED[kind] if c not in table.columns and c not in table.derived]
    if missing:
        raise DataError(
            f"{source}: required column(s) {missing} are not mapped. Add them under {kind}.columns "
            f"in {config.source_file} (file columns: {file_columns})"
        )


def _map_ids(raw: pd.DataFrame, table: TableConfig, id_column: str, collector: _Collector) -> tuple[pd.Series, bool]:
    """The id column, normalised; leads without a mapped id get 'row-<n>' (reported, kept)."""
    if id_column in table.columns:
        ids = _normalise_ids(raw[table.columns[id_column]])
        collector.flag(
            _blank(ids), table.columns[id_column], f"have an empty {id_column}", f"give every row a {id_column}"
        )
        return ids, False
    ids = _normalise_ids(ROW_ID_PREFIX + raw[ROW].astype("string"))
    collector.flag(
        np.ones(len(raw), dtype=bool),
        id_column,
        f"have no {id_column} column mapped: each id is the row number ('{ROW_ID_PREFIX}1', '{ROW_ID_PREFIX}2', ...)",
        f"map {id_column} under the table's columns to keep your own ids"
        + (" (label_from needs them)" if id_column == "lead_id" else ""),
        outcome="kept",
    )
    return ids, True


def _apply_value_maps(raw: pd.DataFrame, config: DatasetConfig, collector: _Collector) -> None:
    """Replace mapped labels by their values in ``raw`` (check_table's own shallow copy)."""
    for column, labels in config.value_maps.items():
        if column not in raw.columns:
            continue
        text = raw[column].astype("string").str.strip()
        known = text.isin([str(k) for k in labels]) | text.isna()
        collector.flag(
            ~known.to_numpy(dtype=bool),
            column,
            f"have a value that is not one of {sorted(str(k) for k in labels)}",
            f"correct the values or add them to value_maps.{column} in the dataset config",
        )
        mapping = {str(k): v for k, v in labels.items()}
        raw[column] = text.map(mapping, na_action="ignore").astype("Float64" if _numeric(mapping) else object)


def _parse_date_column(
    raw: pd.DataFrame, table: TableConfig, config: DatasetConfig, name: str, source: str, collector: _Collector
) -> pd.Series:
    file_column = table.columns[name]
    try:
        parsed = parse_dates(raw[file_column], table.date_format)
    except AmbiguousDatesError as exc:
        raise AmbiguousDatesError(
            f"{source}: column '{file_column}': {exc} and the table has no date_format: set "
            f"date_format: day_first (or month_first, or a strptime format such as '%d-%m-%Y') "
            f"for this table in {config.source_file}",
            exc.examples,
        ) from exc
    unparseable = parsed.isna().to_numpy() & ~_blank(raw[file_column])
    how = {"day_first": " reading the day first", "month_first": " reading the month first"}
    fmt = how.get(table.date_format or "", f" with format '{table.date_format}'" if table.date_format else "")
    collector.flag(
        unparseable,
        file_column,
        f"have a date that cannot be parsed{fmt}",
        "write dates as YYYY-MM-DD[ HH:MM:SS] or set date_format in the dataset config",
    )
    if name == "timestamp":
        collector.flag(
            parsed.isna().to_numpy() & ~unparseable, file_column, "have no timestamp", "give every transaction a date"
        )
    return parsed


def lead_calendar(created_at: pd.Series, written: pd.Series) -> dict[str, pd.Series]:
    """Model inputs from when a lead came in: day of week (0 = Monday), month, and the hour when the
    dates carry a time of day (a ':' in the text, or a time other than midnight in a date column)."""
    calendar = {
        "created_dow": created_at.dt.day_of_week.astype("float64"),
        "created_month": created_at.dt.month.astype("float64"),
    }
    if pd.api.types.is_datetime64_any_dtype(written.dtype):
        timed = bool((created_at != created_at.dt.normalize()).any())
    else:
        timed = bool(written.astype("string").str.contains(":", regex=False).fillna(False).any())
    if timed:
        calendar["created_hour"] = created_at.dt.hour.astype("float64")
    return calendar


def _parse_number_columns(raw: pd.DataFrame, table: TableConfig, collector: _Collector, out: pd.DataFrame) -> None:
    comma = " or set decimal: ',' for numbers written 12,50" if table.decimal == "." else ""
    example = "12,50" if table.decimal == "," else "12.50"
    numbers = ("amount", "quantity", "converted", "churned", "visit", "conversion", "spend", "value")
    for name in [c for c in numbers if c in table.columns]:
        file_column = table.columns[name]
        parsed = parse_numbers(raw[file_column], table.decimal)
        blank = _blank(raw[file_column])
        if name == "amount":
            collector.flag(
                _spelled_non_finite(raw[file_column], parsed),
                file_column,
                "are not finite numbers (nan or inf spelled out)",
                "write the real amount, or leave the row out",
            )
        collector.flag(
            parsed.isna().to_numpy() & ~blank,
            file_column,
            "are not numbers",
            f"write {name} as a plain number such as {example} (no currency sign or thousands separator){comma}",
        )
        if name == "amount":
            collector.flag(blank, file_column, "have no amount", "give every transaction an amount")
        out[name] = parsed
    for name in BINARY_COLUMNS:
        if name in out.columns and name in table.columns:
            values = out[name]
            collector.flag(
                (values.notna() & ~values.isin([0.0, 1.0])).to_numpy(dtype=bool),
                table.columns[name],
                "are not 0 or 1",
                f"write {name} as 0/1 or map the labels with value_maps",
            )


def _flag_amounts(amount: pd.Series, table: TableConfig, collector: _Collector) -> None:
    """Amounts that cannot be money: infinite, or beyond ``max_abs_amount`` (a unit or parse error)."""
    column = table.columns.get("amount") or table.derived.get("amount", "amount")
    values = amount.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        collector.flag(
            np.isinf(values), column, "are not finite numbers (inf)", "write the real amount, or leave the row out"
        )
        collector.flag(
            np.abs(values) > table.max_abs_amount,
            column,
            f"are larger than max_abs_amount ({table.max_abs_amount:,.0f}) in absolute value",
            "correct the amount (a unit or decimal-mark error?) or raise max_abs_amount for this table",
        )


def _carry_contract_columns(
    raw: pd.DataFrame,
    table: TableConfig,
    config: DatasetConfig,
    kind: Kind,
    source: str,
    out: pd.DataFrame,
    collector: _Collector,
) -> None:
    """Optional contract columns carried as they are, and the category from keywords."""
    for name in ("order_id", "product_id", "category", "channel", "do_not_contact", "opted_out"):
        if name in table.columns:
            out[name] = raw[table.columns[name]]
    if kind == "campaigns" and "arm" in table.columns:
        arm = raw[table.columns["arm"]].astype("string").str.strip()
        out["arm"] = arm
        collector.flag(_blank(arm), table.columns["arm"], "have no arm", "give every row the arm it was sent")
    if kind == "events":
        event = raw[table.columns["event"]].astype("string").str.strip()
        out["event"] = event
        collector.flag(
            _blank(event), table.columns["event"], "have no event name", "give every row the event it records"
        )
    if kind == "transactions" and config.category_keywords and "category" not in table.columns:
        out["category"] = _apply_category_keywords(raw, config, source)
    if "category" in out.columns:  # few distinct values: encode once, as the ids
        out["category"] = out["category"].astype("string").astype("category")


def _add_attributes(
    raw: pd.DataFrame,
    table: TableConfig,
    config: DatasetConfig,
    source: str,
    file_columns: list[str],
    out: pd.DataFrame,
    *,
    campaign: bool = False,
) -> None:
    """Every file column not mapped, excluded or used by a rule (or the configured list) as is;
    text numbers written with a decimal comma become numbers."""
    used = set(table.columns.values()) | set(table.exclude)
    if table.label_from is not None and table.label_from.lead_column:
        used.add(table.label_from.lead_column)  # a join key (an e-mail), not something to learn from
    if config.category_keywords:
        used.add(config.category_keywords.source)
    for expression in table.derived.values():
        used |= set(referenced_columns(expression, file_columns))
    attributes = table.attributes if table.attributes is not None else [c for c in file_columns if c not in used]
    for column in attributes:
        if column not in raw.columns:
            raise DataError(f"{source}: attribute column '{column}' is not in the file; columns: {file_columns}")
    collisions = attribute_name_collisions([str(c) for c in attributes], campaign=campaign)
    if collisions:
        raise DataError(
            f"{source}: " + "; ".join(collisions) + f". Add the column to {source and 'the table'}'s exclude, "
            f"map it, or list the attributes to use in {config.source_file}"
        )
    for column in attributes:
        out[column] = _decimal_comma_numbers(raw[column]) if table.decimal == "," else raw[column]


def _decimal_comma_numbers(values: pd.Series) -> pd.Series:
    """A text column whose every value is a decimal-comma number, as numbers; others unchanged."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values
    text = values.astype("string")
    if not text.str.contains(",", regex=False).fillna(False).any():
        return values
    parsed = parse_numbers(values, ",")
    return parsed if bool((parsed.notna() | _blank(values)).all()) else values


def _flag_duplicates(
    raw: pd.DataFrame,
    table: TableConfig,
    file_columns: list[str],
    ids: pd.Series,
    collector: _Collector,
    stamps: pd.Series | None,
) -> None:
    duplicated = _exact_duplicates(raw, file_columns, ids, stamps)
    if table.duplicates == "keep":
        collector.flag(
            duplicated,
            "(all columns)",
            "repeat an earlier row exactly and are kept as real purchases (duplicates: keep)",
            "nothing, if identical rows are real repeat purchases",
            outcome="kept",
        )
    else:
        collector.flag(
            duplicated,
            "(all columns)",
            "repeat an earlier row exactly",
            "remove the copies, add an order id column, or set duplicates: keep if they are real repeats",
        )


def _flag_dates_outside(
    stamps: pd.Series,
    column: str,
    collector: _Collector,
    as_of: pd.Timestamp | None,
    now: pd.Timestamp | None,
) -> None:
    if now is not None:
        collector.flag(
            (stamps > now).to_numpy(dtype=bool),
            column,
            f"are dated in the future (after {now:%Y-%m-%d %H:%M})",
            "correct the dates; a clock or time-zone error is the usual cause",
        )
    if as_of is not None:
        collector.flag(
            (stamps >= as_of).to_numpy(dtype=bool),
            column,
            f"are dated on or after the as-of date {as_of:%Y-%m-%d}, outside the feature window",
            "nothing to fix if you meant this cut-off; labels use these rows",
            outcome="not used for features",
        )


def label_from_ids(
    checked: Checked, lead_keys: pd.Series, won_ids: pd.Series, won_rows: pd.Series, source: str, column: str
) -> Checked:
    """``converted`` = 1 for leads whose key is among ``won_ids`` (another file's id column), else 0.

    ``lead_keys`` is aligned with ``checked.frame`` (its lead ids, or another column of the leads
    file such as an e-mail). Won ids that match no usable lead are reported (count and the first
    few) as not used: usually ids written differently in the two files, or quarantined leads.
    """
    keys = _normalise_ids(lead_keys.reset_index(drop=True)).astype("string")
    won = _normalise_ids(won_ids.reset_index(drop=True)).astype("string")
    frame = checked.frame.assign(converted=keys.isin(set(won.dropna())).astype("float64").to_numpy())
    unmatched = (won.notna() & ~won.isin(set(keys.dropna()))).to_numpy(dtype=bool)
    problems = list(checked.problems)
    if unmatched.any():
        examples = list(dict.fromkeys(won[unmatched].astype(str)))[:FIRST_ROWS_SHOWN]
        rows = tuple(int(r) for r in won_rows.to_numpy()[np.flatnonzero(unmatched)[:FIRST_ROWS_SHOWN]])
        problems.append(
            Problem(
                source,
                column,
                f"hold ids that match no usable lead (e.g. {examples})",
                int(unmatched.sum()),
                rows,
                "check that this column holds the same ids as the leads file's id column",
                outcome="not used",
            )
        )
    return replace(checked, frame=frame, problems=problems)


def _numeric(mapping: dict[str, object]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in mapping.values())
