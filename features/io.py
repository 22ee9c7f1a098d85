"""Reading dataset tables and writing outputs: the only file I/O of the feature code.

Outputs are written to a temporary file beside the target and renamed into place, so that a failed
run leaves the previous output intact.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.config import (
    LIKELY_SEPARATORS,
    ConfigError,
    DatasetConfig,
    FileOptions,
    TableConfig,
    config_dir,
    resolve_path,
)
from features.quiet import held_warnings
from features.validate import (
    FIRST_ROWS_SHOWN,
    ROW,
    Checked,
    DataError,
    Kind,
    NoUsableRowsError,
    Problem,
    check_table,
    label_from_ids,
)


class DatasetMissingError(FileNotFoundError):
    """A configured file is absent (e.g. ../shared/data not beside the project)."""


@dataclass
class Dataset:
    """The checked tables of one dataset config."""

    config: DatasetConfig
    transactions: Checked | None = None
    customers: Checked | None = None
    leads: Checked | None = None
    campaigns: Checked | None = None
    events: Checked | None = None

    def checked_tables(self) -> Iterator[tuple[str, Checked]]:
        for kind in ("transactions", "customers", "leads", "campaigns", "events"):
            checked = getattr(self, kind)
            if checked is not None:
                yield kind, checked


def table_path(config: DatasetConfig, table: FileOptions) -> Path:
    path = resolve_path(table.path, config_dir(config))
    if not path.exists():
        raise DatasetMissingError(
            f"dataset '{config.name}': {path} is absent (data root: set VALUECAST_DATA_ROOT "
            f"to the folder holding '{table.path}')"
        )
    return path


@dataclass
class RawTable:
    """A file as read: its rows with a 1-based ``_row``, and the lines that could not be rows
    (wrong number of fields, bytes not valid in the encoding) with their reasons."""

    frame: pd.DataFrame
    rejected: pd.DataFrame
    problems: list[Problem]


def read_raw_table(path: Path, table: FileOptions) -> pd.DataFrame:
    """Read a table as stored, with a 1-based ``_row`` column; CSV values stay text for checking.
    Lines that cannot be rows are left out (:func:`read_table` reports them)."""
    return read_table(path, table).frame


def read_table(path: Path, table: FileOptions) -> RawTable:
    """Read a table with its options (separator, encoding); see :class:`RawTable`.

    Clean text files take pandas' C parser in one pass. Only a file the C parser refuses (a line
    with too many fields), or that may hide lines with too few (a blank in the last column), or
    that has undecodable bytes with ``encoding_errors: quarantine``, is read again record by record
    to find the lines at fault; row numbers then stay those of the file.
    """
    fmt = table.format or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    if fmt == "parquet":
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot be read as parquet ({exc})") from exc
        return RawTable(_with_rows(frame), pd.DataFrame(), [])
    try:
        frame = _read_text_fast(path, table, fmt)
    except UnicodeDecodeError:
        if table.encoding_errors == "fail":
            raise DataError(_encoding_message(path, table)) from None
        frame = None
    if frame is None:
        return _read_text_by_records(path, table, fmt)
    if fmt == "csv":
        _check_header(list(frame.columns), path, table)
    return RawTable(_with_rows(_drop_empty_trailing(frame)), pd.DataFrame(), [])


def _csv_options(table: FileOptions, fmt: str) -> dict[str, Any]:
    return {
        "dtype": str,
        "sep": r"\s+" if fmt == "whitespace" else table.separator,
        "header": None if table.column_names else 0,
        "names": table.column_names,
        "keep_default_na": False,
        "na_values": [""],
        "skipinitialspace": True,
        # Without this, pandas silently makes the first column the index when the first data line
        # has one field more than the header.
        "index_col": False,
    }


def _read_text_fast(path: Path, table: FileOptions, fmt: str) -> pd.DataFrame | None:
    """The file through pandas' C parser, or None when some line may have the wrong number of fields."""
    with held_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)  # a first line longer than the header
        try:
            frame = pd.read_csv(path, encoding=table.encoding, encoding_errors="strict", **_csv_options(table, fmt))
        except (pd.errors.ParserError, pd.errors.ParserWarning):
            return None
        except UnicodeDecodeError:
            raise
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot be read as {fmt} ({exc})") from exc
    # The C parser fills a line with too few fields with blanks: a blank in the last column is the
    # only sign of one, so such files are checked line by line.
    # An all-empty last column (an Excel re-save) says nothing; the last column with values does.
    filled = [c for c in frame.columns if frame[c].notna().any()] if fmt == "csv" and frame.shape[1] > 1 else []
    if filled and frame[filled[-1]].isna().any():
        return None
    return frame


def _with_rows(frame: pd.DataFrame) -> pd.DataFrame:
    frame[ROW] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return frame


def _drop_empty_trailing(frame: pd.DataFrame) -> pd.DataFrame:
    """An empty unnamed column from an Excel re-save (Leads.csv) carries nothing: drop it."""
    return frame.loc[:, [c for c in frame.columns if not (str(c).startswith("Unnamed:") and frame[c].isna().all())]]


def _check_header(columns: list[str], path: Path, table: FileOptions) -> None:
    """A header that did not split names the separator the file seems to use."""
    if len(columns) != 1 or table.column_names:
        return
    name = str(columns[0])
    found = [c for c in LIKELY_SEPARATORS if c != table.separator and c in name]
    if found:
        likely = max(found, key=name.count)
        shown = '"\\t"' if likely == "\t" else f"'{likely}'"
        raise DataError(
            f"{path}: the header has one column '{name}': the file looks separated by {shown}: "
            f"set separator: {shown} for this table"
        )


def _encoding_message(path: Path, table: FileOptions) -> str:
    """Where the first undecodable byte is, and which option to set."""
    data = path.read_bytes()
    try:
        data.decode(table.encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        text = data[start : start + 80].split(b"\n")[0].decode(table.encoding, errors="replace").rstrip("\r")
        other = "latin-1" if codecs.lookup(table.encoding).name == "utf-8" else "utf-8"
        return (
            f"{path}: line {line} is not valid {table.encoding} (byte {data[exc.start : exc.start + 1]!r} "
            f"in {text!r}): set encoding: {other} (or the file's encoding, e.g. cp1252) for this table, "
            "or encoding_errors: quarantine to set such lines aside"
        )
    return f"{path}: cannot be decoded as {table.encoding}: set encoding: to the file's encoding"


def _decode(data: bytes, table: FileOptions) -> tuple[str, dict[int, str]]:
    """The text, and for each line (1-based, the header is line 1) with undecodable bytes, why.

    Such lines are kept with replacement characters only so that the record they belong to can be
    found and quarantined; their values never reach the checks.
    """
    bad: dict[int, str] = {}
    pieces: list[str] = []
    position, line = 0, 1
    while True:
        try:
            pieces.append(data[position:].decode(table.encoding))
            break
        except UnicodeDecodeError as exc:
            at = position + exc.start
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            end = len(data) if end < 0 else end + 1
            line += data.count(b"\n", position, start)
            pieces.append(data[position:start].decode(table.encoding))
            pieces.append(data[start:end].decode(table.encoding, errors="replace"))
            bad[line] = f"byte {data[at : at + 1]!r} is not valid {table.encoding}; set encoding for this table"
            line += data.count(b"\n", start, end)
            position = end
    return "".join(pieces).removeprefix("\ufeff"), bad


def _records(text: str, table: FileOptions, fmt: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each record; quoted fields may span lines in a CSV."""
    lines = (line + "\n" for line in text.split("\n"))
    if fmt == "whitespace":
        for number, line in enumerate(lines, start=1):
            yield number, line.split()
        return
    reader = csv.reader(lines, delimiter=table.separator, skipinitialspace=True)
    previous = 0
    for fields in reader:
        yield previous + 1, fields
        previous = reader.line_num


def _read_text_by_records(path: Path, table: FileOptions, fmt: str) -> RawTable:
    """Split the file into records, set aside those with the wrong number of fields or with
    undecodable bytes, and parse the rest with the C parser (so values read exactly as on the fast path)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    bad_lines: dict[int, str] = {}
    if table.encoding_errors == "fail":
        try:
            text = data.decode(table.encoding).removeprefix("\ufeff")
        except UnicodeDecodeError:
            raise DataError(_encoding_message(path, table)) from None
    else:
        text, bad_lines = _decode(data, table)
    records = _records(text, table, fmt)
    header = list(table.column_names) if table.column_names else next((f for _, f in records if f), [])
    if fmt == "csv":
        _check_header(header, path, table)
    good: list[list[str]] = []
    good_rows: list[int] = []
    rejected: list[tuple[int, str, list[str]]] = []
    row = 0
    for line, fields in records:
        if not fields or (len(fields) == 1 and not fields[0].strip() and len(header) > 1):
            continue  # a blank line is not a row (as in pandas)
        row += 1
        broken = _bad_lines_of(line, fields, bad_lines) if bad_lines else []
        if broken:
            rejected.append((row, f"line {line}: {broken[0]}", fields))
        elif len(fields) != len(header):
            reason = f"line {line}: {len(fields)} fields where the header has {len(header)}"
            rejected.append((row, reason, fields))
        else:
            good.append(fields)
            good_rows.append(row)
    frame = _parse_records(header, good, table, fmt, path)
    frame[ROW] = np.asarray(good_rows, dtype=np.int64)
    return RawTable(frame, *_rejected_frame(rejected, [c for c in frame.columns if c != ROW], str(path), table))


def _bad_lines_of(line: int, fields: list[str], bad_lines: dict[int, str]) -> list[str]:
    last = line + sum(f.count("\n") for f in fields)  # quoted values may span lines
    return [bad_lines[n] for n in range(line, last + 1) if n in bad_lines]


def _parse_records(
    header: list[str], records: list[list[str]], table: FileOptions, fmt: str, path: Path
) -> pd.DataFrame:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=",", lineterminator="\n")
    if not table.column_names:
        writer.writerow(header)
    writer.writerows(records)
    buffer.seek(0)
    options = {**_csv_options(table, fmt), "sep": ","}
    try:
        frame = pd.read_csv(buffer, **options)
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as {fmt} ({exc})") from exc
    return _drop_empty_trailing(frame)


def _rejected_frame(
    rejected: list[tuple[int, str, list[str]]], columns: list[str], source: str, table: FileOptions
) -> tuple[pd.DataFrame, list[Problem]]:
    """Rejected lines in the quarantine's shape (row, reason, the file's columns), and their problems."""
    if not rejected:
        return pd.DataFrame(), []
    width = len(columns)
    frame = pd.DataFrame(
        [[row, reason, *(fields + [None] * width)[:width]] for row, reason, fields in rejected],
        columns=["row", "reason", *columns],
    )
    problems = []
    encoding = frame["reason"].str.contains(" is not valid ", regex=False).to_numpy(dtype=bool)
    kinds = [
        (
            encoding,
            f"have bytes that are not valid {table.encoding}",
            "set encoding: to the file's encoding (e.g. latin-1)",
        ),
        (
            ~encoding,
            "do not have as many fields as the header",
            f"quote values that contain the separator {table.separator!r}, or check separator for this table",
        ),
    ]
    for mask, reason, fix in kinds:
        if mask.any():
            rows = tuple(int(r) for r in frame.loc[mask, "row"].head(FIRST_ROWS_SHOWN))
            problems.append(Problem(source, "(whole line)", reason, int(mask.sum()), rows, fix))
    return frame, problems


def _with_read_problems(checked: Checked, raw: RawTable) -> Checked:
    """Lines rejected on reading join the table's quarantine and problems, in row order."""
    if raw.rejected.empty:
        return checked
    quarantine = pd.concat([checked.quarantine, raw.rejected], ignore_index=True).sort_values("row", kind="stable")
    return replace(checked, quarantine=quarantine.reset_index(drop=True), problems=raw.problems + checked.problems)


def _check(raw: RawTable, table: TableConfig, config: DatasetConfig, kind: Kind, source: str, **when: Any) -> Checked:
    try:
        checked = check_table(raw.frame, table, config, kind, source, **when)
    except NoUsableRowsError as exc:
        if not raw.problems:
            raise
        problems = raw.problems + exc.problems
        summary = "; ".join(p.message() for p in problems)
        raise NoUsableRowsError(f"{source}: no usable rows. {summary}", problems) from exc
    return _with_read_problems(checked, raw)


def _join_label(config: DatasetConfig, table: TableConfig, leads: RawTable, checked: Checked) -> Checked:
    """converted from a second file (``label_from``): 1 for the leads whose id it lists."""
    source = table.label_from
    assert source is not None
    path = table_path(config, source)
    won = read_table(path, source)
    if source.id_column not in won.frame.columns:
        columns = [c for c in won.frame.columns if c != ROW]
        raise DataError(
            f"{path}: leads.label_from.id_column '{source.id_column}' is not a column; the file's columns "
            f"are {columns}. Fix label_from in {config.source_file}"
        )
    if source.lead_column is None:
        keys = checked.frame["lead_id"]
    elif source.lead_column in leads.frame.columns:
        keys = leads.frame.set_index(ROW)[source.lead_column].reindex(checked.frame[ROW].to_numpy())
    else:
        columns = [c for c in leads.frame.columns if c != ROW]
        raise DataError(
            f"leads.label_from.lead_column '{source.lead_column}' is not a column of the leads file; "
            f"its columns are {columns}. Fix label_from in {config.source_file}"
        )
    joined = label_from_ids(checked, keys, won.frame[source.id_column], won.frame[ROW], str(path), source.id_column)
    return replace(joined, problems=joined.problems + won.problems)


def load_dataset(
    config: DatasetConfig,
    *,
    as_of: pd.Timestamp | None = None,
    now: pd.Timestamp | None = None,
    kinds: tuple[Kind, ...] = ("transactions", "customers", "leads", "campaigns", "events"),
) -> Dataset:
    """Read and check every configured table of the given kinds; a campaign log also gets the
    checks of :func:`features.campaigns.check_campaigns` (arms, control, rows per arm, randomisation),
    an event log those of :func:`features.events.check_events` (names, customers the others know)."""
    from features.campaigns import check_campaigns
    from features.events import check_events

    dataset = Dataset(config)
    now = now if now is not None else pd.Timestamp.now()
    seen_columns: set[str] = set()
    for kind in kinds:
        table = getattr(config, kind)
        if table is None:
            continue
        path = table_path(config, table)
        raw = read_table(path, table)
        seen_columns |= set(raw.frame.columns)
        checked = _check(raw, table, config, kind, str(path), as_of=as_of, now=now)
        if table.label_from is not None:
            checked = _join_label(config, table, raw, checked)
        if kind == "campaigns":
            checked = check_campaigns(checked, config.campaigns, str(path), config.source_file)  # type: ignore[arg-type]
        if kind == "events":
            checked = check_events(checked, config, str(path), known_customers(dataset))
        setattr(dataset, kind, checked)
    unknown = sorted(set(config.value_maps) - seen_columns)
    if unknown and {"transactions", "customers", "leads"} <= set(kinds):
        raise ConfigError(
            f"{config.source_file}: value_maps names column(s) {unknown} that no table has; "
            "check the spelling against the file's header"
        )
    return dataset


def known_customers(dataset: Dataset) -> pd.Index | None:
    """The customer ids of the transactions and customers tables read so far (None: neither is)."""
    parts = [
        pd.Series(t.frame["customer_id"].unique()).astype("string")  # a categorical's used values: fast
        for t in (dataset.transactions, dataset.customers)
        if t is not None
    ]
    if not parts:
        return None
    return pd.Index(pd.concat(parts, ignore_index=True).dropna().unique())


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_frame(frame: pd.DataFrame, target: Path) -> None:
    """Write Parquet or CSV (by the file ending) atomically."""
    target = Path(target)
    with atomic_path(target) as tmp:
        if target.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False)
        elif target.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:
            raise ConfigError(f"{target}: write .parquet or .csv")


def quarantine_path(output: Path, kind: str) -> Path:
    """Quarantined rows sit next to the output: ``features.parquet`` -> ``features.quarantine.<kind>.csv``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.quarantine.{kind}.csv")


def write_quarantine(dataset: Dataset, output: Path) -> list[Path]:
    """Write each table's quarantined rows beside the output; remove a stale file when none are left."""
    written = []
    for kind, checked in dataset.checked_tables():
        path = quarantine_path(output, kind)
        if checked.quarantine.empty:
            path.unlink(missing_ok=True)
            continue
        write_frame(checked.quarantine, path)
        written.append(path)
    return written
