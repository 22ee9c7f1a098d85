"""Refresh: score a dataset as of a new date with its champions and say what changed since the last time.

``make refresh DATA=... [AS_OF=...] [OUT=out/refresh/<dataset>]`` runs :func:`refresh`. Everything it
writes lives in OUT:

- ``history/as_of=<date>/part-0.parquet``: every refresh's customers (segment, the facts the segment
  rules read, the main scores, model and segment file versions), a Parquet table partitioned by
  ``as_of`` (hive layout), so that a customer's path through the segments reads back with
  :func:`customer_paths` or any Parquet reader;
- ``refreshes/<date>/``: that refresh against the previous one: ``transitions.csv`` (segment to
  segment: customers and predicted value at both dates), ``transition_matrix.csv`` (the counts as a
  matrix), ``changes.csv`` (every customer whose segment changed, with the previous and the new segment
  and the reason), ``changes/<segment>.entered.csv`` and ``.left.csv`` for CRM import, ``summary.json``
  and, when the changes are delivered to a webhook, ``delivery/`` (:mod:`serving.segments.delivery`).

Customers seen for the first time come from the pseudo-segment ``(new)``; customers of the previous
refresh that are no longer scored go to ``(departed)``. Neither can be a segment's name (segment names
are identifiers), so the matrix always sums to the customers of both dates together.

OUT is replaced as a whole through :func:`serving.batch.atomic_folder`: the history of earlier
refreshes is carried into the new folder (hard links: partitions are never written twice), so a
failed run leaves the previous OUT, history included, as it was.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.config import ConfigError
from features.io import Dataset
from features.pipeline import default_as_of
from serving import drift
from serving.batch import (
    MARKER,
    atomic_folder,
    champion_gains,
    inside,
    load_or_freeze,
    model_scores_of_dataset,
    recover,
    write_csv,
)
from serving.report import ReportInputs, model_facts
from serving.report import render as render_report
from serving.scoring import CUSTOMER_FAMILIES, Champions, NotReadyError, with_segments
from serving.segments.rules import FrozenSegments, tier_of

NEW = "(new)"
DEPARTED = "(departed)"
KIND = "refresh"
PARTITION = re.compile(r"^as_of=(\d{4}-\d{2}-\d{2})$")
HISTORY_FILE = "part-0.parquet"
# The facts the segment rules read (serving.segments.rules.assign): a change in one of them is the reason a
# customer changed segment.
RULE_FACTS = ("value_tier", "past_value_tier", "risk_band", "potential_band", "lapsed")
STRING_COLUMNS = (
    "customer_id",
    "segment",
    "action",
    "value_tier",
    "past_value_tier",
    "risk_band",
    "potential_band",
    "suppression_reason",
    *(f"{family}_model_version" for family in CUSTOMER_FAMILIES),
    "segment_version",
    # where the dataset has a macro segment champion (empty otherwise): a customer's path through the
    # macro segments reads back from the history like the value segments'
    "macro_segment",
    "macro_segment_model_version",
)
BOOL_COLUMNS = ("lapsed", "suppressed")
FLOAT_COLUMNS = (
    "clv",
    "value_at_risk",
    "churn_probability",
    "purchase_probability",
    "p_alive",
    "expected_orders",
    "total_spend",
    "days_since_last_order",
)
HISTORY_COLUMNS = (*STRING_COLUMNS, *BOOL_COLUMNS, *FLOAT_COLUMNS)
CHANGE_COLUMNS = (
    "idempotency_key",
    "customer_id",
    "previous_segment",
    "new_segment",
    "reason",
    "previous_as_of",
    "as_of",
    "previous_value_tier",
    "value_tier",
    "previous_clv",
    "clv",
    "action",
    "suppressed",
    "suppression_reason",
)


@dataclass
class RefreshResult:
    out: Path
    dataset: str
    as_of: pd.Timestamp
    previous_as_of: pd.Timestamp | None
    transitions: pd.DataFrame
    changes: pd.DataFrame
    summary: dict[str, Any]

    @property
    def folder(self) -> Path:
        """This refresh's own folder in OUT (transitions, changes, delivery)."""
        return self.out / "refreshes" / f"{self.as_of:%Y-%m-%d}"


def default_out(dataset: str) -> Path:
    from training.families import check_dataset_name

    return Path("out") / "refresh" / check_dataset_name(dataset)


# ---------------------------------------------------------------------------------------------------
# Pure steps: frames in, frames out.


def history_rows(scores: pd.DataFrame, facts: pd.DataFrame, frozen: FrozenSegments) -> pd.DataFrame:
    """One history row per scored customer: the output of :func:`serving.scoring.with_segments` with
    the segment facts that it does not return (tier of spend so far, lapsed), in fixed column types so
    that every partition of the history has one schema."""
    rules = frozen.rules
    spend = pd.to_numeric(facts["total_spend"], errors="coerce").to_numpy(dtype=float)
    idle = pd.to_numeric(facts["days_since_last_order"], errors="coerce").to_numpy(dtype=float)
    alive = pd.to_numeric(scores["p_alive"], errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):  # the same test as serving.segments.rules.assign_columns
        lapsed = (np.nan_to_num(alive, nan=1.0) < rules.lapsed.p_alive_below) | (
            np.nan_to_num(idle, nan=0.0) > rules.lapsed.days_since_last_order_over
        )
    frame = scores.reset_index(drop=True).assign(
        past_value_tier=tier_of(spend, frozen.past_value_floors),
        lapsed=lapsed,
        total_spend=spend,
        days_since_last_order=idle,
    )
    return normalized(frame)


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """The history columns in their types (missing ones empty), sorted by customer."""
    out = pd.DataFrame(index=frame.index)
    for column in STRING_COLUMNS:
        values = frame[column] if column in frame.columns else pd.Series(None, index=frame.index, dtype=object)
        text = values.astype("string")  # vectorised str(); a Python lambda per value took 9 s per million rows
        out[column] = text.astype(object).where(text.notna(), None)
    for column in BOOL_COLUMNS:
        out[column] = frame[column].astype(bool) if column in frame.columns else False
    for column in FLOAT_COLUMNS:
        if column in frame.columns:
            out[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
        else:
            out[column] = np.nan
    if out["customer_id"].isna().any() or out["customer_id"].duplicated().any():
        raise ValueError("history rows need one row per customer_id")
    return out.sort_values("customer_id", kind="stable").reset_index(drop=True)


def _paired(previous: pd.DataFrame | None, current: pd.DataFrame) -> pd.DataFrame:
    """Previous and current rows side by side, one row per customer of either date (outer join)."""
    before = (previous if previous is not None else current.iloc[0:0]).set_index("customer_id")
    after = current.set_index("customer_id")
    both = before.add_prefix("previous_").join(after, how="outer")
    both["previous_segment"] = both["previous_segment"].astype(object).where(both.index.isin(before.index), NEW)
    both["new_segment"] = both["segment"].astype(object).where(both.index.isin(after.index), DEPARTED)
    return both.rename_axis("customer_id").reset_index().sort_values("customer_id", kind="stable")


def transitions(
    previous: pd.DataFrame | None, current: pd.DataFrame, paired: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Segment to segment: customers and their predicted value (CLV) at the previous and the new date,
    one row per pair that occurs. New customers come from ``(new)``, departed ones go to ``(departed)``;
    the customers column sums to the customers of both dates together. ``paired``: :func:`_paired` of
    the two, when the caller has it already."""
    both = paired if paired is not None else _paired(previous, current)
    both = both.assign(previous_clv=both["previous_clv"].fillna(0.0), clv=both["clv"].fillna(0.0))
    table = (
        both.groupby(["previous_segment", "new_segment"], sort=True)
        .agg(customers=("customer_id", "size"), previous_clv=("previous_clv", "sum"), clv=("clv", "sum"))
        .reset_index()
        .rename(columns={"previous_segment": "from_segment", "new_segment": "to_segment"})
    )
    table["clv_change"] = table["clv"] - table["previous_clv"]
    return table


def transition_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """The counts of :func:`transitions` as a matrix: rows from (``(new)`` first), columns to
    (``(departed)`` last)."""
    matrix = table.pivot_table(
        index="from_segment", columns="to_segment", values="customers", aggfunc="sum", fill_value=0
    )
    rows = sorted(matrix.index, key=lambda s: (s != NEW, s))
    columns = sorted(matrix.columns, key=lambda s: (s == DEPARTED, s))
    return matrix.reindex(index=rows, columns=columns, fill_value=0).astype(int)


def idempotency_key(dataset: str, customer_id: str, as_of: str) -> str:
    """One key per customer and refresh date: a receiver that has seen it has this change already."""
    return hashlib.sha256(json.dumps([dataset, customer_id, as_of]).encode()).hexdigest()[:32]


def reasons(moved: pd.DataFrame, previous_as_of: str | None) -> pd.Series:
    """Why each customer of ``moved`` (rows of :func:`_paired` whose segment changed) is in a new
    segment: the segment facts that changed (``risk_band low -> high; value_tier B -> A``), else a new
    segment file; new and departed customers say so. Column operations: a million rows take seconds."""
    text = pd.Series("", index=moved.index, dtype=object)
    for fact in RULE_FACTS:
        before, after = _words(moved[f"previous_{fact}"]), _words(moved[fact])
        differs = before != after
        said = fact + " " + before + " -> " + after
        text = text.where(~differs, text.where(text == "", text + "; ") + said)
    files = "segment rules changed: segment file " + _words(moved["previous_segment_version"])
    files = files + " -> " + _words(moved["segment_version"])
    same_file = _words(moved["previous_segment_version"]) == _words(moved["segment_version"])
    text = text.where(text != "", files.where(~same_file, "segment rules changed"))
    new = "first refresh" if previous_as_of is None else f"new customer: not scored on {previous_as_of}"
    text = text.where(moved["previous_segment"] != NEW, new)
    return text.where(moved["new_segment"] != DEPARTED, "departed: no longer in the data")


def _words(values: pd.Series) -> pd.Series:
    """Facts as words: yes/no for flags (lapsed), text otherwise (vectorised where the column allows)."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(np.where(values.to_numpy(dtype=bool), "yes", "no"), index=values.index, dtype=object)
    if values.dtype == object:
        return values.map(lambda v: ("yes" if v else "no") if isinstance(v, bool | np.bool_) else str(v))
    return values.astype(str).astype(object)


def changes(
    previous: pd.DataFrame | None,
    current: pd.DataFrame,
    dataset: str,
    as_of: pd.Timestamp,
    previous_as_of: pd.Timestamp | None,
    paired: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every customer whose segment is not the previous refresh's (new and departed ones included):
    previous and new segment, the reason (the segment facts that changed), and an idempotency key per
    customer and ``as_of``. ``paired``: :func:`_paired` of the two, when the caller has it already."""
    both = paired if paired is not None else _paired(previous, current)
    moved = both.loc[both["previous_segment"] != both["new_segment"]].copy()
    after, before = f"{as_of:%Y-%m-%d}", None if previous_as_of is None else f"{previous_as_of:%Y-%m-%d}"
    moved["reason"] = reasons(moved, before)
    moved["previous_as_of"] = before
    moved["as_of"] = after
    moved["idempotency_key"] = [idempotency_key(dataset, c, after) for c in moved["customer_id"]]
    moved["suppressed"] = moved["suppressed"].astype(object).where(moved["suppressed"].notna(), None)
    return moved[list(CHANGE_COLUMNS)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# The I/O layer: OUT, its history and the files of each refresh.


def refreshes_in(out: Path) -> list[pd.Timestamp]:
    """The dates of the refreshes in OUT's history, oldest first."""
    history = Path(out) / "history"
    if not history.is_dir():
        return []
    dates = []
    for path in history.iterdir():
        if path.name.startswith("."):
            continue
        match = PARTITION.fullmatch(path.name)
        if not match or not (path / HISTORY_FILE).is_file():
            raise ConfigError(
                f"{path} is not a refresh partition (history/as_of=YYYY-MM-DD/{HISTORY_FILE}): "
                "remove it, or choose another OUT"
            )
        dates.append(pd.Timestamp(match.group(1)))
    return sorted(dates)


def check_out(out: Path, dataset: str, as_of: pd.Timestamp, force: bool) -> pd.Timestamp | None:
    """Whether ``out`` can take a refresh of ``dataset`` as of ``as_of``; returns the previous
    refresh's date (None: the first). Refreshes go forward: the latest may be run again (it is
    replaced), an earlier date may not, since the later refreshes were compared with what it replaced."""
    out = Path(out)
    if os.path.lexists(out.parent):
        recover(out)  # a crashed swap: the previous OUT is put back before it is read
    if not os.path.lexists(out):
        return None
    marker = out / MARKER
    info: dict[str, Any] = {}
    if out.is_dir() and not out.is_symlink() and marker.is_file():
        try:
            info = json.loads(marker.read_text())
        except ValueError as exc:
            raise ConfigError(f"{marker}: not valid JSON ({exc}); remove OUT={out} or choose another OUT") from exc
        info = info if isinstance(info, dict) else {"unreadable": True}
    if info.get("kind") != KIND or info.get("dataset") != dataset:
        if force or (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
            return None  # replaced by a new history
        if info.get("kind") == KIND:
            what = f"holds the refreshes of dataset '{info.get('dataset')}'"
        elif info:
            what = "holds another command's output (make score?)"
        else:
            what = f"is not a valuecast output folder (no {MARKER} in it)"
        raise ConfigError(
            f"OUT={out} {what}, not refreshes of '{dataset}': choose another OUT (default out/refresh/<dataset>), "
            "or start a new history there with FORCE=1, which replaces it"
        )
    dates = refreshes_in(out)
    if dates and as_of < dates[-1]:
        raise ConfigError(
            f"AS_OF={as_of:%Y-%m-%d} is before the latest refresh in {out} ({dates[-1]:%Y-%m-%d}): refreshes go "
            f"forward in time; give a later AS_OF, run {dates[-1]:%Y-%m-%d} again, or use another OUT"
        )
    earlier = [d for d in dates if d < as_of]
    return earlier[-1] if earlier else None


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold OUT for one refresh at a time (scoring, writing and delivery): two runs at once would each
    carry over the history without the other's partition, and could both send the same changes. The
    lock file ``.<OUT>.lock`` stays beside OUT; the lock goes with the process, even after kill -9."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(
                f"another refresh of OUT={out} is running ({holder}): wait for it to finish, or use another OUT"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def partition(out: Path, as_of: pd.Timestamp) -> Path:
    return Path(out) / "history" / f"as_of={as_of:%Y-%m-%d}" / HISTORY_FILE


def read_partition(out: Path, as_of: pd.Timestamp) -> pd.DataFrame:
    path = partition(out, as_of)
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the refresh of {as_of:%Y-%m-%d} ({exc}); restore or remove it") from exc
    missing = [c for c in HISTORY_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; it was not written by make refresh")
    return normalized(frame)


def read_history(out: Path, customer_ids: list[str] | None = None) -> pd.DataFrame:
    """The history table (one row per customer and refresh, with its ``as_of`` date), optionally for
    some customers only (read with a filter, not the whole table)."""
    import pyarrow.dataset as ds

    folder = Path(out) / "history"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no refresh history here; run make refresh DATA=... OUT={out}")
    table = ds.dataset(folder, format="parquet", partitioning="hive")
    wanted = None if customer_ids is None else ds.field("customer_id").isin([str(c) for c in customer_ids])
    frame = table.to_table(filter=wanted).to_pandas()
    frame["as_of"] = pd.to_datetime(frame["as_of"].astype(str))
    return frame.sort_values(["customer_id", "as_of"], kind="stable").reset_index(drop=True)


def customer_paths(out: Path, customer_ids: list[str] | None = None) -> pd.DataFrame:
    """Each customer's segment at each refresh: one row per customer, one column per ``as_of``
    (empty where the customer was not scored)."""
    history = read_history(out, customer_ids)
    paths = history.pivot(index="customer_id", columns="as_of", values="segment")
    paths.columns = [f"{d:%Y-%m-%d}" for d in paths.columns]
    return paths


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [pa.field(c, pa.string()) for c in STRING_COLUMNS]
    fields += [pa.field(c, pa.bool_()) for c in BOOL_COLUMNS]
    fields += [pa.field(c, pa.float64()) for c in FLOAT_COLUMNS]
    table = pa.Table.from_pandas(frame[list(HISTORY_COLUMNS)], schema=pa.schema(fields), preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(None), path)


def _carry_over(previous_out: Path, work: Path, as_of: pd.Timestamp) -> None:
    """The earlier refreshes into the new folder: history partitions hard-linked (written once, never
    changed), each refresh's folder copied (its delivery ledger grows in place). A refresh of the same
    date keeps its delivery ledger, so changes delivered once are not delivered again."""
    day = f"{as_of:%Y-%m-%d}"
    history = previous_out / "history"
    if history.is_dir():
        for folder in history.iterdir():
            match = PARTITION.fullmatch(folder.name)
            if match and match.group(1) != day:
                (work / "history" / folder.name).mkdir(parents=True)
                _link_or_copy(folder / HISTORY_FILE, work / "history" / folder.name / HISTORY_FILE)
    refreshes = previous_out / "refreshes"
    if refreshes.is_dir():
        for folder in refreshes.iterdir():
            if folder.name == day:
                if (folder / "delivery").is_dir():
                    shutil.copytree(folder / "delivery", work / "refreshes" / day / "delivery", symlinks=True)
            elif PARTITION.fullmatch(f"as_of={folder.name}") and folder.is_dir() and not folder.is_symlink():
                shutil.copytree(folder, work / "refreshes" / folder.name, symlinks=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


def write_refresh(
    out: Path,
    dataset: str,
    as_of: pd.Timestamp,
    current: pd.DataFrame,
    *,
    force: bool = False,
    info: dict[str, Any] | None = None,
    report: ReportInputs | None = None,
) -> RefreshResult:
    """Compare ``current`` (:func:`history_rows` of ``as_of``) with OUT's previous refresh and write the
    new OUT: history partition, transitions, changes, summary and ``report.html``. ``report``: what the
    report knows besides this refresh's own tables (currency, the champions and their gains). OUT is
    replaced only when all is written."""
    out = Path(out)
    as_of = pd.Timestamp(as_of).normalize()
    current = normalized(current)
    previous_as_of = check_out(out, dataset, as_of, force)
    previous = read_partition(out, previous_as_of) if previous_as_of is not None else None
    both = _paired(previous, current)  # once for both: the outer join of a million rows takes seconds
    table = transitions(previous, current, both)
    changed = changes(previous, current, dataset, as_of, previous_as_of, both)
    summary = _summary(dataset, as_of, previous_as_of, previous, current, table, changed, info)
    marker = {"kind": KIND, "dataset": dataset, "as_of": f"{as_of:%Y-%m-%d}"}
    keep_previous = _same_history(out, dataset)
    with atomic_folder(out, marker, force=True) as work:  # check_out refused whatever force must not replace
        if keep_previous:
            _carry_over(out, work, as_of)
        _write_parquet(current, partition(work, as_of))
        folder = work / "refreshes" / f"{as_of:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_csv(table, folder / "transitions.csv")
        transition_matrix(table).rename_axis(index="from_segment", columns=None).reset_index().to_csv(
            folder / "transition_matrix.csv", index=False
        )
        write_csv(changed, folder / "changes.csv")
        summary["changes_by_segment"] = _write_segment_changes(changed, folder / "changes")
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        base = report or ReportInputs("refresh", dataset, f"{as_of:%Y-%m-%d}", None, {})
        (folder / "report.html").write_text(render_report(refresh_report(base, current, summary, table)))
    return RefreshResult(out, dataset, as_of, previous_as_of, table, changed, summary)


def _summary(
    dataset: str,
    as_of: pd.Timestamp,
    previous_as_of: pd.Timestamp | None,
    previous: pd.DataFrame | None,
    current: pd.DataFrame,
    table: pd.DataFrame,
    changed: pd.DataFrame,
    info: dict[str, Any] | None,
) -> dict[str, Any]:
    """The refresh's figures for ``summary.json``: customers on both dates, new, departed and changed,
    customers per segment and total CLV, then the caller's ``info``."""
    return {
        "dataset": dataset,
        "as_of": f"{as_of:%Y-%m-%d}",
        "previous_as_of": None if previous_as_of is None else f"{previous_as_of:%Y-%m-%d}",
        "customers_previous": 0 if previous is None else len(previous),
        "customers": len(current),
        "customers_either": int(table["customers"].sum()),
        "new": int((changed["previous_segment"] == NEW).sum()),
        "departed": int((changed["new_segment"] == DEPARTED).sum()),
        "changed_segment": len(changed),
        "segments": {str(k): int(v) for k, v in current["segment"].value_counts().sort_index().items()},
        "clv": float(current["clv"].sum()),
        "clv_previous": 0.0 if previous is None else float(previous["clv"].sum()),
        **(info or {}),
    }


def _write_segment_changes(changed: pd.DataFrame, lists: Path) -> dict[str, dict[str, int]]:
    """Per segment, the customers who entered and who left it, as ``<segment>.entered.csv`` and
    ``<segment>.left.csv`` in ``lists`` (a new folder); returns how many of each."""
    per_segment: dict[str, dict[str, int]] = {}
    lists.mkdir()
    segments = sorted((set(changed["previous_segment"]) | set(changed["new_segment"])) - {NEW, DEPARTED})
    for segment in segments:
        entered = changed.loc[changed["new_segment"] == segment]
        left = changed.loc[changed["previous_segment"] == segment]
        write_csv(entered, inside(lists, f"{segment}.entered.csv"))
        write_csv(left, inside(lists, f"{segment}.left.csv"))
        per_segment[segment] = {"entered": len(entered), "left": len(left)}
    return per_segment


def refresh_report(
    base: ReportInputs, current: pd.DataFrame, summary: dict[str, Any], table: pd.DataFrame
) -> ReportInputs:
    """The refresh's report: its customers' value, the transitions since the previous refresh (none
    for the first) and the drift the refresh measured, if it did."""
    return replace(
        base,
        kind="refresh",
        scores=current,
        segment_version=summary.get("segment_version"),
        refresh=summary if summary["previous_as_of"] else None,
        transitions=table,
        transition_matrix=transition_matrix(table),
        drift=summary.get("drift"),
    )


def _same_history(out: Path, dataset: str) -> bool:
    """Whether OUT holds this dataset's refreshes, to be carried over (a forced OUT of something else
    is replaced by a new history)."""
    try:
        info = json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(info.get("kind") == KIND and info.get("dataset") == dataset)


def score_for_refresh(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every customer of ``dataset`` as of ``as_of`` with the champions and the dataset's latest segment
    file (frozen on this population when it has none, as make score does): :func:`history_rows`, and
    the versions used."""
    if dataset.transactions is None:
        raise NotReadyError(f"dataset '{dataset.config.name}' has no transaction log to score customers from")
    if champions.dataset and champions.dataset != dataset.config.name:
        raise NotReadyError(f"the champions of dataset '{champions.dataset}' cannot score '{dataset.config.name}'")
    raw, facts = model_scores_of_dataset(champions, dataset, as_of, progress)
    population = f"{dataset.config.name} as of {as_of:%Y-%m-%d}"
    segment_file = load_or_freeze(champions, raw, facts, population, refreeze=False, rules_path=None)
    assert champions.frozen is not None
    scores = with_segments(champions, raw, facts, as_of)
    info = {
        "models": champions.versions(CUSTOMER_FAMILIES),
        "segment_version": champions.frozen.version,
        "segment_file": Path(segment_file).name,
    }
    return history_rows(scores, facts, champions.frozen), info


def refresh(
    champions: Champions,
    dataset: Dataset,
    out: Path | None = None,
    *,
    as_of: pd.Timestamp | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] = lambda done, total: None,
    thresholds: drift.Thresholds | None = None,
) -> RefreshResult:
    """Score ``dataset`` as of ``as_of`` (default: the day after its last transaction) and write the
    refresh into ``out`` (default ``out/refresh/<dataset>``); drift above ``thresholds`` (default
    :class:`serving.drift.Thresholds`) recommends a retrain."""
    name = dataset.config.name
    out = Path(out) if out is not None else default_out(name)
    as_of = pd.Timestamp(as_of).normalize() if as_of is not None else default_as_of(dataset)
    check_out(out, name, as_of, force)  # before minutes of scoring, not after; write_refresh checks again
    current, info = score_for_refresh(champions, dataset, as_of, progress)
    info["drift"] = drift.summary(drift.measure(champions, dataset, as_of, thresholds))
    info["currency"] = dataset.config.currency
    log_drift(name, as_of, info["drift"])
    context = ReportInputs(
        "refresh",
        name,
        f"{as_of:%Y-%m-%d}",
        dataset.config.currency,
        model_facts(champions),
        gains=champion_gains(champions),
    )
    return write_refresh(out, name, as_of, current, force=force, info=info, report=context)


_METRIC_NAME = re.compile(r"[^A-Za-z0-9_.\- /]")


def log_drift(dataset: str, as_of: pd.Timestamp, section: dict[str, Any]) -> None:
    """One MLflow run per refresh (experiment ``refresh-<dataset>``) with every PSI as a metric and the
    recommendation as tags, so that the UI shows drift beside the models."""
    from training import tracking

    tags = {
        "dataset": dataset,
        "as_of": f"{as_of:%Y-%m-%d}",
        "retrain_recommended": ",".join(section["retrain_recommended"]),
    }
    with tracking.run(f"refresh-{dataset}", f"refresh | {dataset} | {as_of:%Y-%m-%d}", tags):
        for family, facts in section["families"].items():
            tracking.log_metrics(
                {_METRIC_NAME.sub("_", f"psi_{family}_{key}"): value for key, value in facts["psi"].items()}
                | {f"age_days_{family}": facts["age_days"]}
            )
            if facts["reasons"]:
                tracking.set_tags({f"retrain_{family}": "; ".join(facts["reasons"])[:5000]})


def latest_drift(out: Path) -> dict[str, Any] | None:
    """The drift section of the newest refresh in ``out`` (None when there is no refresh yet)."""
    days = refreshes_in(Path(out))
    if not days:
        return None
    summary = json.loads((Path(out) / "refreshes" / f"{days[-1]:%Y-%m-%d}" / "summary.json").read_text())
    return summary.get("drift")


def matrix_text(result: RefreshResult) -> str:
    """The transition matrix and the changes per segment, as printed at the end of make refresh."""
    s = result.summary
    since = f"since {s['previous_as_of']}" if s["previous_as_of"] else "(first refresh: everyone is new)"
    lines = [
        f"refresh of {result.dataset} as of {s['as_of']} {since}: {s['customers']:,} customers "
        f"({s['customers_previous']:,} before), {s['new']:,} new, {s['departed']:,} departed, "
        f"{s['changed_segment']:,} changed segment",
        "",
        f"transitions (rows: from, columns: to; customers, {s['customers_either']:,} in all: "
        "the customers of either date)",
        transition_matrix(result.transitions).to_string(),
        "",
        f"{'segment':<16} {'entered':>8} {'left':>8}",
    ]
    lines += [f"{name:<16} {c['entered']:>8,} {c['left']:>8,}" for name, c in s["changes_by_segment"].items()]
    return "\n".join(lines)
