"""Reading dataset tables and writing outputs: the only file I/O of the feature code.

Outputs are written to a temporary file beside the target and renamed into place, so that a failed
run leaves the previous output intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.config import ConfigError, DatasetConfig, TableConfig, config_dir, resolve_path
from features.validate import ROW, Checked, DataError, Kind, check_table


class DatasetMissingError(FileNotFoundError):
    """A configured file is absent (e.g. ../shared/data not beside the project)."""


@dataclass
class Dataset:
    """The checked tables of one dataset config."""

    config: DatasetConfig
    transactions: Checked | None = None
    customers: Checked | None = None
    leads: Checked | None = None

    def checked_tables(self) -> Iterator[tuple[str, Checked]]:
        for kind in ("transactions", "customers", "leads"):
            checked = getattr(self, kind)
            if checked is not None:
                yield kind, checked


def table_path(config: DatasetConfig, table: TableConfig) -> Path:
    path = resolve_path(table.path, config_dir(config))
    if not path.exists():
        raise DatasetMissingError(
            f"dataset '{config.name}': {path} is absent (data root: set VALUECAST_DATA_ROOT "
            f"to the folder holding '{table.path}')"
        )
    return path


def read_raw_table(path: Path, table: TableConfig) -> pd.DataFrame:
    """Read a table as stored, with a 1-based ``_row`` column; CSV values stay text for checking."""
    fmt = table.format or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path,
                dtype=str,
                sep=r"\s+" if fmt == "whitespace" else ",",
                header=None if table.column_names else 0,
                names=table.column_names,
                keep_default_na=False,
                na_values=[""],
                skipinitialspace=True,
                encoding_errors="replace",
            )
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as {fmt} ({exc})") from exc
    # An empty trailing column from an Excel re-save (Leads.csv) carries nothing: drop it.
    frame = frame.loc[:, [c for c in frame.columns if not (str(c).startswith("Unnamed:") and frame[c].isna().all())]]
    frame[ROW] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return frame


def load_dataset(
    config: DatasetConfig,
    *,
    as_of: pd.Timestamp | None = None,
    now: pd.Timestamp | None = None,
    kinds: tuple[Kind, ...] = ("transactions", "customers", "leads"),
) -> Dataset:
    """Read and check every configured table of the given kinds."""
    dataset = Dataset(config)
    now = now if now is not None else pd.Timestamp.now()
    seen_columns: set[str] = set()
    for kind in kinds:
        table = getattr(config, kind)
        if table is None:
            continue
        path = table_path(config, table)
        raw = read_raw_table(path, table)
        seen_columns |= set(raw.columns)
        checked = check_table(raw, table, config, kind, str(path), as_of=as_of, now=now)
        setattr(dataset, kind, checked)
    unknown = sorted(set(config.value_maps) - seen_columns)
    if unknown and set(kinds) == {"transactions", "customers", "leads"}:
        raise ConfigError(
            f"{config.source_file}: value_maps names column(s) {unknown} that no table has; "
            "check the spelling against the file's header"
        )
    return dataset


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
