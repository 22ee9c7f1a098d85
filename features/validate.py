"""Turn a raw table into contract columns, checking every row before anything is computed.

Each problem becomes one message with a count, the first few row numbers and the fix. Rows that
cannot be used go to a quarantine frame with their reason; they are never dropped silently. Only
data that leaves nothing usable (a required column missing, no usable row) stops a run.

Row numbers are 1-based data rows of the file (the header is not counted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from features.codes import factorize
from features.config import TRANSACTION_REQUIRED, DatasetConfig, TableConfig

ROW = "_row"
Kind = Literal["transactions", "customers", "leads"]
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


def _parse_numbers(values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("float64")
    return pd.to_numeric(values.astype("string").str.strip(), errors="coerce").astype("float64")


def _parse_timestamps(values: pd.Series, fmt: str | None) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        return parsed.astype("datetime64[ns]")
    text = values.astype("string").str.strip()
    if fmt:
        parsed = pd.to_datetime(text, format=fmt, errors="coerce")
    else:
        parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    return parsed.astype("datetime64[ns]")


def referenced_columns(expression: str, columns: list[str]) -> list[str]:
    """The file columns an expression names, bare (``UnitPrice``) or in back ticks (```Unit Price```)."""
    return [c for c in columns if re.search(rf"(?<![\w`]){re.escape(c)}(?![\w`])|`{re.escape(c)}`", expression)]


def _evaluate(raw: pd.DataFrame, name: str, expression: str, source: str) -> pd.Series:
    """An arithmetic expression over file columns (``Quantity * UnitPrice``), numbers parsed first."""
    columns = referenced_columns(expression, [c for c in raw.columns if c != ROW])
    numeric = pd.DataFrame({c: _parse_numbers(raw[c]) for c in columns}, index=raw.index)
    try:
        result = numeric.eval(expression, engine="python")
    except Exception as exc:  # pandas raises many kinds for a bad expression
        raise DataError(
            f"{source}: cannot compute '{name} = {expression}' ({exc}); "
            f"use file columns {[c for c in raw.columns if c != ROW]} and + - * /, "
            "with `back ticks` around names with spaces"
        ) from exc
    return pd.Series(result, index=raw.index, dtype="float64")


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
    """
    id_column = {"transactions": "customer_id", "customers": "customer_id", "leads": "lead_id"}[kind]
    required = {"transactions": TRANSACTION_REQUIRED, "customers": ("customer_id",), "leads": ("lead_id",)}[kind]
    file_columns = [c for c in raw.columns if c != ROW]

    for name in [*table.columns.values(), *table.exclude]:
        if name not in raw.columns:
            raise DataError(
                f"{source}: the config maps column '{name}', which the file does not have; "
                f"the file's columns are {file_columns}. Fix the column mapping in {config.source_file}"
            )
    missing = [c for c in required if c not in table.columns and c not in table.derived]
    if missing:
        raise DataError(
            f"{source}: required column(s) {missing} are not mapped. Add them under {kind}.columns "
            f"in {config.source_file} (file columns: {file_columns})"
        )

    raw = raw.copy(deep=False)  # columns are replaced, never modified in place
    for column in file_columns:
        if config.missing_values and not pd.api.types.is_numeric_dtype(raw[column].dtype):
            raw[column] = raw[column].mask(raw[column].isin(config.missing_values))

    collector = _Collector(source, raw, np.zeros(len(raw), dtype=bool))
    out = pd.DataFrame(index=raw.index)

    ids = _normalise_ids(raw[table.columns[id_column]])
    collector.flag(_blank(ids), table.columns[id_column], f"have an empty {id_column}", f"give every row a {id_column}")
    out[id_column] = ids

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

    date_columns = [c for c in ("timestamp", "signup_date", "cancellation_date", "created_at") if c in table.columns]
    for name in date_columns:
        file_column = table.columns[name]
        parsed = _parse_timestamps(raw[file_column], table.timestamp_format)
        unparseable = parsed.isna().to_numpy() & ~_blank(raw[file_column])
        fmt = f" with format '{table.timestamp_format}'" if table.timestamp_format else ""
        collector.flag(
            unparseable,
            file_column,
            f"have a date that cannot be parsed{fmt}",
            "write dates as YYYY-MM-DD[ HH:MM:SS] or set timestamp_format in the dataset config",
        )
        if name == "timestamp":
            collector.flag(
                parsed.isna().to_numpy() & ~unparseable,
                file_column,
                "have no timestamp",
                "give every transaction a date",
            )
        out[name] = parsed

    numeric_columns = [c for c in ("amount", "quantity", "converted", "churned") if c in table.columns]
    for name in numeric_columns:
        file_column = table.columns[name]
        parsed = _parse_numbers(raw[file_column])
        blank = _blank(raw[file_column])
        collector.flag(
            parsed.isna().to_numpy() & ~blank,
            file_column,
            "are not numbers",
            f"write {name} as a plain number such as 12.50 (no currency sign or thousands separator)",
        )
        if name == "amount":
            collector.flag(blank, file_column, "have no amount", "give every transaction an amount")
        out[name] = parsed
    for name, expression in table.derived.items():
        values = _evaluate(raw, name, expression, source)
        collector.flag(
            values.isna().to_numpy(),
            expression,
            f"give no number for {name} = {expression}",
            "make sure the columns in the expression hold plain numbers",
        )
        out[name] = values
    for name in ("converted", "churned"):
        if name in out.columns:
            values = out[name]
            collector.flag(
                (values.notna() & ~values.isin([0.0, 1.0])).to_numpy(dtype=bool),
                table.columns[name],
                "are not 0 or 1",
                f"write {name} as 0/1 or map the labels with value_maps",
            )
    for name in ("order_id", "product_id", "category", "channel", "do_not_contact", "opted_out"):
        if name in table.columns:
            out[name] = raw[table.columns[name]]
    if kind == "transactions" and config.category_keywords and "category" not in table.columns:
        out["category"] = _apply_category_keywords(raw, config, source)
    if "category" in out.columns:  # few distinct values: encode once, as the ids
        out["category"] = out["category"].astype("string").astype("category")

    used = set(table.columns.values()) | set(table.exclude)
    if config.category_keywords:
        used.add(config.category_keywords.source)
    for expression in table.derived.values():
        used |= set(referenced_columns(expression, file_columns))
    attributes = table.attributes if table.attributes is not None else [c for c in file_columns if c not in used]
    for column in attributes:
        if column not in raw.columns:
            raise DataError(f"{source}: attribute column '{column}' is not in the file; columns: {file_columns}")
        if column in out.columns:
            continue
        out[column] = raw[column]

    duplicated = _exact_duplicates(raw, file_columns, ids, out.get("timestamp"))
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

    if "timestamp" in out.columns:
        stamps = out["timestamp"]
        if now is not None:
            collector.flag(
                (stamps > now).to_numpy(dtype=bool),
                table.columns["timestamp"],
                f"are dated in the future (after {now:%Y-%m-%d %H:%M})",
                "correct the dates; a clock or time-zone error is the usual cause",
            )
        if as_of is not None:
            collector.flag(
                (stamps >= as_of).to_numpy(dtype=bool),
                table.columns["timestamp"],
                f"are dated on or after the as-of date {as_of:%Y-%m-%d}, outside the feature window",
                "nothing to fix if you meant this cut-off; labels use these rows",
                outcome="not used for features",
            )

    out[ROW] = raw[ROW].to_numpy()
    if kind != "transactions":  # only the log is large enough for categorical ids to pay
        out[id_column] = out[id_column].astype("string")
    usable = out.loc[~collector.bad].reset_index(drop=True) if collector.bad.any() else out
    if usable.empty:
        summary = "; ".join(p.message() for p in collector.problems) or "the file has no data rows"
        raise NoUsableRowsError(f"{source}: no usable rows. {summary}", collector.problems)
    return Checked(usable, collector.quarantine_frame(), collector.problems)


def _numeric(mapping: dict[str, object]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in mapping.values())
