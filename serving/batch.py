"""Batch scoring: every customer of a dataset with the champion models, segments, and the files an
operator pushes into CRM and e-mail tools.

``make score DATA=... OUT=<dir> [AS_OF=...]`` runs :func:`run`: read and check the data, score every
customer with :func:`serving.scoring.score_customers` (the API's code path), score the leads when the
dataset has them, and write into a temporary folder beside OUT that replaces OUT only when everything
is written: a failed or interrupted run leaves the previous output untouched. The same command on the
same data, models and segment file writes the same files.

Outputs: ``scores.parquet`` and ``scores.csv`` (one row per customer), ``leads.parquet``/``leads.csv``,
``summary.json``, ``report.html`` (figures inline), ``lists/<segment>.csv`` (customer_id, contact
fields, segment, action; suppressed customers left out) and ``quarantine.<table>.csv`` for rows that
could not be used, with their reason.

Where the dataset has an uplift champion (:mod:`serving.segments.micro`), the campaign table's customers are
scored by it too: ``next_best_action``, ``expected_incremental_value``, ``micro_segment`` and one
``uplift_<arm>`` per arm in the scores (beside the value columns when the dataset has customer
models, alone for a dataset of attribute rows such as Hillstrom), ``actions/<arm>.csv`` per action
(suppressed customers left out, the highest expected incremental value first), and the action mix in
the summary and the report.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.codes import factorize
from features.config import ConfigError
from features.io import Dataset
from features.pipeline import default_as_of
from serving.report import ReportInputs, horizons, model_facts
from serving.report import render as report_html
from serving.scoring import (
    UPLIFT_FAMILIES,
    Champions,
    NotReadyError,
    model_scores,
    suppression_facts,
    with_segments,
)
from serving.segments import macro, micro
from serving.segments.rules import freeze, latest_frozen, load_frozen, load_rules, summary, write_frozen
from training.uplift import NO_ACTION, arm_slug

CONTACT_PATTERN = re.compile(r"(e-?mail|phone|mobile|first.?name|last.?name|^name$|address|city|zip|postcode)", re.I)
# Customers per chunk: a chunk's working set is ~0.5 GiB; one chunk per core is scored at a time.
CHUNK_CUSTOMERS = 100_000
SAFE_FILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


@dataclass
class BatchResult:
    out: Path
    as_of: pd.Timestamp
    scores: pd.DataFrame
    leads: pd.DataFrame | None
    summary: dict[str, Any]
    segment_file: str


MARKER = ".valuecast-output"
_ACTIVE: set[Path] = set()  # this process's temporaries in use: never stale, whatever their pid says


class OutputInUseError(ConfigError):
    """OUT exists and is not valuecast's output: replacing it would delete someone's files."""


def _temporaries(target: Path) -> list[tuple[Path, int | None]]:
    """Folders beside ``target`` named as :func:`atomic_folder` names them (``.<name>.<pid>.<token>.tmp``
    or ``.old``; ``.<name>.<8 characters>.tmp``/``.old`` of earlier versions, pid None), nothing else."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:(\d+)\.[0-9a-f]{{8}}|[a-z0-9_]{{8}})\.(?:tmp|old)$")
    found = []
    for path in target.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and _key(path) not in _ACTIVE:
            found.append((path, int(match.group(1)) if match.group(1) else None))
    return sorted(found, key=lambda item: _mtime(item[0]))


def _key(path: Path) -> Path:
    """The path with its folder resolved but not itself: a link named like a temporary is not followed."""
    return path.parent.resolve() / path.name


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:  # removed meanwhile by another run's cleanup
        return 0.0


def _running(pid: int | None) -> bool:
    """Whether the run that named a temporary is alive: a live run's folders must not be removed."""
    if pid is None or pid == os.getpid():  # this process's in-use ones are in _ACTIVE
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a folder, or a link or file (a forced OUT), without following a link."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(target: Path) -> None:
    """After a crash: put back the previous output when one was moved aside and OUT is missing (a crash
    between the two renames of the swap), then remove the temporaries of runs no longer running."""
    stale = [path for path, pid in _temporaries(target) if not _running(pid)]
    if not os.path.lexists(target):
        moved_aside = [path for path in stale if path.name.endswith(".old")]
        if moved_aside:
            newest = moved_aside[-1]
            previous = newest / "previous"  # earlier versions moved OUT into <old>/previous
            os.rename(previous if previous.is_dir() and not (newest / MARKER).exists() else newest, target)
    for path in stale:
        if os.path.lexists(path):
            _remove(path)


def check_replaceable(target: Path, force: bool) -> None:
    """Refuse to replace anything at OUT but valuecast's own output (a folder with the marker file) or
    an empty folder, unless forced: OUT=~/Documents must not delete ~/Documents."""
    if force or not os.path.lexists(target):
        return
    ours = target.is_dir() and not target.is_symlink() and ((target / MARKER).is_file() or not any(target.iterdir()))
    if not ours:
        raise OutputInUseError(
            f"OUT={target} exists and is not a valuecast output folder (no {MARKER} in it): "
            "choose another OUT, or replace it with --force (make score ... FORCE=1)"
        )


@contextmanager
def atomic_folder(target: Path, marker: dict[str, Any] | None = None, *, force: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``target`` that replaces it only when the block succeeds.

    The old output is renamed aside before the new one is renamed in and removed after, so a crash at
    any point leaves either folder findable; :func:`recover` puts it back on the next run. ``marker``
    (JSON, deterministic so the same run writes the same files) goes into ``MARKER`` and is what lets
    the next run replace this folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    check_replaceable(target, force)
    stem = f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    work, old = target.parent / f"{stem}.tmp", target.parent / f"{stem}.old"
    umask = os.umask(0)
    os.umask(umask)
    work.mkdir(mode=0o777 & ~umask)
    _ACTIVE.update({_key(work), _key(old)})
    try:
        yield work
        # no timestamp in the marker: the same run must write the same bytes (the folder's mtime says when)
        (work / MARKER).write_text(json.dumps({"written_by": "valuecast", **(marker or {})}, sort_keys=True) + "\n")
        if os.path.lexists(target):
            os.rename(target, old)
        os.rename(work, target)
        if os.path.lexists(old):
            _remove(old)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
        _ACTIVE.difference_update({_key(work), _key(old)})


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """CSV through Arrow's writer: ten times pandas' speed on a million rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), path)


def chunk_ids(ids: list[str], size: int) -> list[list[str]]:
    """``ids`` cut into runs of ``size`` consecutive ids (one empty run when there are none)."""
    return [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]


def customer_subset(dataset: Dataset, ids: list[str], rows: np.ndarray | None = None) -> Dataset:
    """The dataset restricted to some customers (features are per customer, so scores do not change);
    ``rows``: their row positions when known already."""
    assert dataset.transactions is not None
    tx = dataset.transactions.frame
    keep = rows if rows is not None else rows_of_customers(tx["customer_id"], ids)
    checked = type(dataset.transactions)(
        tx.iloc[keep] if rows is not None else tx.loc[keep],
        dataset.transactions.quarantine,
        dataset.transactions.problems,
    )
    events = dataset.events
    if events is not None:
        events = type(events)(events.frame.loc[rows_of_customers(events.frame["customer_id"], ids)], events.quarantine)
    return Dataset(
        dataset.config, transactions=checked, customers=dataset.customers, leads=dataset.leads, events=events
    )


def rows_of_customers(customer_id: pd.Series, ids: list[str]) -> np.ndarray:
    """Rows whose customer is one of ``ids`` (a mask)."""
    return id_positions(customer_id, ids) >= 0


def id_positions(customer_id: pd.Series, ids: list[str]) -> np.ndarray:
    """Each row's customer's place in ``ids`` (-1: not among them), through the category codes (ids
    as text are factorised first): one lookup per distinct customer, not per row, in Arrow (a
    million ids: 0.4 s against 0.7 s for pandas' ``get_indexer`` on Python strings)."""
    if isinstance(customer_id.dtype, pd.CategoricalDtype):
        codes, distinct = customer_id.cat.codes.to_numpy(), customer_id.cat.categories
    else:
        codes, distinct = factorize(customer_id)
    known = pa.array(distinct.astype("string[pyarrow]").array)
    position = pc.index_in(known, value_set=pa.array(ids, pa.string())).fill_null(-1).to_numpy()
    return np.where(codes >= 0, position[codes], -1)


def rows_by_chunk(place: np.ndarray, size: int, chunks: int) -> list[np.ndarray]:
    """Row positions of each chunk (``size`` consecutive ids each, as :func:`chunk_ids` cuts them),
    from each row's place among the ids (:func:`id_positions`): one pass over the rows instead of one
    lookup of every id per chunk; every chunk's rows in the file's order."""
    small = np.int16 if chunks < np.iinfo(np.int16).max else np.int64  # NumPy radix-sorts 16-bit keys
    chunk_of_row = np.where(place >= 0, place // size, chunks).astype(small)  # chunks: not scored
    order = np.argsort(chunk_of_row, kind="stable")  # rows keep their order within a chunk
    bounds = np.searchsorted(chunk_of_row[order], np.arange(chunks + 1))
    return [order[bounds[k] : bounds[k + 1]] for k in range(chunks)]


def customer_table(dataset: Dataset) -> pd.DataFrame | None:
    """The customers table's latest row per customer (flags, contact fields), indexed by customer_id."""
    if dataset.customers is None:
        return None
    frame = dataset.customers.frame.drop(columns=["_row"], errors="ignore")
    frame = frame.assign(customer_id=frame["customer_id"].astype(str))
    return frame.drop_duplicates("customer_id", keep="last").set_index("customer_id")


def customer_ids(dataset: Dataset, as_of: pd.Timestamp, also: list[str] | None = None) -> list[str]:
    """Every customer with a transaction before ``as_of``, every customer of the customers table and
    the ids in ``also`` (the campaign table's, when an uplift model scores them too), sorted."""
    assert dataset.transactions is not None
    tx = dataset.transactions.frame
    before = (tx["timestamp"] < as_of).to_numpy()
    column = tx["customer_id"]
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()[before]
        present = np.bincount(codes[codes >= 0], minlength=len(column.cat.categories)) > 0  # no sort of 10M codes
        ids = set(column.cat.categories[present].astype(object).tolist())
    else:
        ids = set(pd.unique(column[before].astype(str)).tolist())
    customers = customer_table(dataset)
    if customers is not None:
        ids |= set(customers.index)
    return sorted(ids | set(also or []))


def uses_uplift(champions: Champions, dataset: Dataset) -> bool:
    """Whether the dataset's customers get uplift columns: an uplift champion and a campaign table."""
    return champions.has(UPLIFT_FAMILIES) and dataset.campaigns is not None


def campaign_ids(champions: Champions, dataset: Dataset) -> list[str]:
    """The campaign table's customers when the uplift model scores them (value scores are given to
    them too, as new customers where they have no history), else none."""
    if not uses_uplift(champions, dataset):
        return []
    assert dataset.campaigns is not None
    return list(pd.unique(dataset.campaigns.frame["customer_id"].astype(str)))


def model_scores_of_dataset(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    progress: Callable[[int, int], None] = lambda done, total: None,
    workers: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Model scores and segment facts of :func:`customer_ids`, in chunks of customers (features are
    per customer, so chunking changes no number beyond rounding: a few CLV values 1 ulp apart).

    ``workers``: chunks scored at a time (default: one per core). With more than one, chunks are
    scored side by side on threads, each with one OpenMP thread for xgboost, in place of one chunk
    at a time with xgboost on every core: a chunk's features, BG/NBD formulas and tables run on one
    core, and xgboost, numba's kernel and numpy release the GIL, so both cores stay busy (1M
    customers on 2 cores: scoring 30 s against 44 s, the same numbers)."""
    from threadpoolctl import threadpool_limits

    ids = customer_ids(dataset, as_of, campaign_ids(champions, dataset))
    customers = customer_table(dataset)
    chunks = chunk_ids(ids, CHUNK_CUSTOMERS)
    rows = None
    if len(chunks) > 1:
        assert dataset.transactions is not None
        rows = rows_by_chunk(id_positions(dataset.transactions.frame["customer_id"], ids), CHUNK_CUSTOMERS, len(chunks))
    workers = max(1, min(len(chunks), workers or os.cpu_count() or 1))

    def score(number: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        part = dataset if rows is None else customer_subset(dataset, chunks[number], rows[number])
        with threadpool_limits(1, user_api="openmp") if workers > 1 else nullcontext():  # this thread's own limit
            return model_scores(champions, part, as_of, chunks[number], attributes=customers)

    scores, facts = [], []
    pool = ThreadPoolExecutor(workers, thread_name_prefix="valuecast-chunk")
    try:
        for number, (chunk_scores, chunk_facts) in enumerate(pool.map(score, range(len(chunks))), start=1):
            scores.append(chunk_scores)
            facts.append(chunk_facts)
            progress(number, len(chunks))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error or Ctrl-C: no new chunk starts
    return pd.concat(scores, ignore_index=True), pd.concat(facts, ignore_index=True)


def score_dataset(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> pd.DataFrame:
    """Every customer's scores and segment (the frozen segment file must be loaded)."""
    scores, facts = model_scores_of_dataset(champions, dataset, as_of, progress)
    return with_segments(champions, scores, facts, as_of)


def load_or_freeze(
    champions: Champions,
    scores: pd.DataFrame,
    facts: pd.DataFrame,
    population: str,
    refreeze: bool,
    rules_path: Path | None,
) -> str:
    """Use the dataset's latest frozen segment file (the API's), or freeze one on this scored
    population into the dataset's folder."""
    path = None if refreeze else latest_frozen(champions.dataset)
    if path is not None:
        champions.frozen = load_frozen(path)
        return str(path)
    frozen = freeze(pd.concat([scores, facts], axis=1), load_rules(rules_path), population)
    champions.frozen = frozen
    return str(write_frozen(frozen, champions.dataset))


def champion_gains(champions: Champions) -> dict[str, pd.DataFrame]:
    """Each champion's decile table on its test window, as its training run logged it
    (``tables/deciles.csv``), by family: the report's gains charts. A run without one is left out."""
    from training import tracking

    found = {}
    for family, served in sorted(champions.models.items()):
        if family in UPLIFT_FAMILIES:
            continue  # its Qini curves are the uplift section's
        table = tracking.logged_table(served.run_id, "deciles")
        if table is not None and {"decile", "customers", "actual_sum"} <= set(table.columns):
            found[family] = table
    return found


def report_inputs(
    champions: Champions, dataset: Dataset, scores: pd.DataFrame | None, info: dict[str, Any]
) -> ReportInputs:
    """What the report of a batch run shows: its scores and figures, the champions' test-window gains,
    the macro segments' profiles where the dataset has a macro segment champion, the action mix and
    Qini curves where an uplift model scored the customers."""
    return ReportInputs(
        kind="value" if scores is not None else "uplift",
        dataset=dataset.config.name,
        as_of=info["as_of"],
        currency=dataset.config.currency,
        models=model_facts(champions),
        scores=scores,
        segment_version=info.get("segment_version"),
        gains=champion_gains(champions) if scores is not None else {},
        uplift=info.get("uplift"),
        uplift_images=micro.qini_images(champions) if "uplift" in info else {},
        leads=info.get("leads"),
        quarantined=info.get("quarantined", {}),
        macro_profiles=pd.DataFrame(info["macro_segments"]) if info.get("macro_segments") else None,
    )


def segment_lists(scores: pd.DataFrame, customers: pd.DataFrame | None, folder: Path) -> dict[str, int]:
    """One CSV per segment for static-list import; suppressed customers are left out."""
    folder.mkdir(parents=True, exist_ok=True)
    keep = scores.loc[~scores["suppressed"].astype(bool), ["customer_id", "segment", "action"]]
    contact_columns = [
        c for c in (customers.columns if customers is not None else []) if CONTACT_PATTERN.search(str(c))
    ]
    if contact_columns and customers is not None:
        keep = keep.join(customers[contact_columns], on="customer_id")
        keep = keep[["customer_id", *contact_columns, "segment", "action"]]
    counts = {}
    for segment, rows in keep.groupby("segment", sort=True):
        write_csv(rows, inside(folder, f"{segment}.csv"))
        counts[str(segment)] = len(rows)
    return counts


def inside(folder: Path, name: str) -> Path:
    """``folder/name``, checked to stay inside ``folder``: names built from data (segments, tables)
    must never write elsewhere, whatever slipped past the checks of the rules file."""
    path = folder / name
    if not SAFE_FILE_NAME.fullmatch(name) or not path.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(
            f"refusing to write {name!r}: it would not be a plain file inside {folder}; "
            "name segments with lower-case letters, digits, '_' or '-' only"
        )
    return path


def run(
    champions: Champions,
    dataset: Dataset,
    out: Path,
    *,
    as_of: pd.Timestamp | None = None,
    refreeze: bool = False,
    rules_path: Path | None = None,
    engine: str = "local",
    force: bool = False,
    progress: Callable[[str, int, int], None] = lambda step, done, total: None,
) -> BatchResult:
    """Score every customer (and lead) of ``dataset`` into ``out`` with ``champions``, which must be
    that dataset's own: another dataset's models and tiers would give its numbers to these customers.
    ``force``: replace whatever is at ``out``, even when it is not valuecast's output."""
    if dataset.transactions is None and not uses_uplift(champions, dataset):
        raise NotReadyError(f"dataset '{dataset.config.name}' has no transaction log to score customers from")
    if dataset.transactions is None and engine == "spark":
        raise ConfigError(
            f"dataset '{dataset.config.name}' is scored from its campaign table's rows by the uplift model alone, "
            "on the local engine: leave out ENGINE=spark"
        )
    if champions.dataset and champions.dataset != dataset.config.name:
        raise NotReadyError(
            f"the champions of dataset '{champions.dataset}' cannot score dataset '{dataset.config.name}': "
            f"load_champions('{dataset.config.name}')"
        )
    as_of = pd.Timestamp(as_of).normalize() if as_of is not None else default_as_of(dataset)
    marker = {"dataset": dataset.config.name, "as_of": f"{as_of:%Y-%m-%d}"}
    with atomic_folder(out, marker, force=force) as work:  # nothing replaces OUT unless every step below succeeds
        if dataset.transactions is None:  # customers as attribute rows (Hillstrom): the uplift model alone
            scores, info = _score_uplift_into(work, champions, dataset, as_of, rules_path, progress)
            leads, segment_file = None, ""
        else:
            scores, leads, info, segment_file = _score_into(
                work, champions, dataset, as_of, refreeze, rules_path, engine, progress
            )
    progress("writing", 1, 1)
    return BatchResult(out, as_of, scores, leads, info, segment_file)


def _score_into(
    work: Path,
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    refreeze: bool,
    rules_path: Path | None,
    engine: str,
    progress: Callable[[str, int, int], None],
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, Any], str]:
    """Every step of :func:`run`, writing into the temporary folder ``work``."""
    scores, segment_file = _customer_scores(
        champions,
        dataset,
        as_of,
        engine=engine,
        freeze=(refreeze, rules_path),
        progress=progress,
    )
    if uses_uplift(champions, dataset):  # the uplift columns of the same customers
        progress("scoring uplift", 0, 1)
        scores = with_uplift(champions, dataset, scores)
        progress("scoring uplift", 1, 1)
    leads = _lead_scores(champions, dataset)
    info = _run_info(champions, dataset, as_of, engine, scores, leads, segment_file)
    progress("writing", 0, 1)
    # Arrow writes the scores' CSV (formatting every number: seconds on a million rows) without the
    # GIL on a thread, while this one writes the rest and renders the report.
    with ThreadPoolExecutor(1, thread_name_prefix="valuecast-csv") as writer:
        csv_written = writer.submit(write_csv, scores.copy(deep=False), work / "scores.csv")
        scores.to_parquet(work / "scores.parquet", index=False)
        if leads is not None:
            leads.to_parquet(work / "leads.parquet", index=False)
            write_csv(leads, work / "leads.csv")
        info["lists"] = segment_lists(scores, customer_table(dataset), work / "lists")
        if uses_uplift(champions, dataset):
            info["action_lists"] = action_lists(scores, customer_table(dataset), work / "actions")
        info["quarantined"] = write_quarantine(dataset, work)
        (work / "report.html").write_text(report_html(report_inputs(champions, dataset, scores, info)))
        (work / "summary.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        csv_written.result()
    return scores, leads, info, segment_file


def _customer_scores(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    *,
    engine: str,
    freeze: tuple[bool, Path | None],
    progress: Callable[[str, int, int], None],
) -> tuple[pd.DataFrame, str]:
    """Every customer's scores and segments on ``engine``, and the segment file they were cut with;
    ``freeze``: (cut anew on this population, the rules file), as :func:`load_or_freeze` takes them."""
    refreeze, rules_path = freeze
    population = f"{dataset.config.name} as of {as_of:%Y-%m-%d}"
    if engine != "spark":
        raw, facts = model_scores_of_dataset(
            champions, dataset, as_of, lambda d, t: progress("scoring customers", d, t)
        )
        segment_file = load_or_freeze(champions, raw, facts, population, refreeze, rules_path)
        return with_segments(champions, raw, facts, as_of), segment_file
    from serving import spark_engine

    if refreeze or latest_frozen(champions.dataset) is None:  # cut-offs need the whole population: one local pass
        raw, facts = model_scores_of_dataset(champions, dataset, as_of)
        segment_file = load_or_freeze(champions, raw, facts, population, refreeze, rules_path)
    else:
        segment_file = load_or_freeze(champions, pd.DataFrame(), pd.DataFrame(), population, False, rules_path)
    progress("scoring customers on Spark", 0, 1)
    scores = spark_engine.score_dataset(
        champions,
        dataset,
        as_of,
        customer_ids(dataset, as_of, campaign_ids(champions, dataset)),
        customer_table(dataset),
    )
    progress("scoring customers on Spark", 1, 1)
    return scores, segment_file


def _lead_scores(champions: Champions, dataset: Dataset) -> pd.DataFrame | None:
    """The dataset's leads scored by its lead-score champion (their rows as read, the usable ones), if both exist."""
    if dataset.leads is None or "lead_score" not in champions.models:
        return None
    model = champions.models["lead_score"].model
    table = dataset.config.leads
    assert table is not None
    from features.io import read_raw_table, table_path

    raw = read_raw_table(table_path(dataset.config, table), table)
    raw = raw.loc[raw["_row"].isin(dataset.leads.frame["_row"])].drop(columns=["_row"])
    leads = model.predict(None, raw)
    leads["model_version"] = champions.models["lead_score"].version
    return leads


def _run_info(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    engine: str,
    scores: pd.DataFrame,
    leads: pd.DataFrame | None,
    segment_file: str,
) -> dict[str, Any]:
    """The run's summary.json before the files are written: what was scored with what, and the figures."""
    assert champions.frozen is not None
    info: dict[str, Any] = {
        "dataset": dataset.config.name,
        "currency": dataset.config.currency,
        "horizons": horizons(champions),
        "engine": engine,
        "as_of": f"{as_of:%Y-%m-%d}",
        "models": champions.versions(),
        "segment_version": champions.frozen.version,
        "segment_file": Path(segment_file).name,
        "summary": summary(scores),
        "leads": None
        if leads is None
        else {"leads": len(leads), "tiers": leads["tier"].value_counts().sort_index().to_dict()},
    }
    if uses_uplift(champions, dataset):
        info["uplift"] = micro.action_mix(scores)
    if (macro_profiles := macro.profiles(scores)) is not None:
        info["macro_segments"] = macro_profiles.to_dict(orient="records")
    return info


def write_quarantine(dataset: Dataset, work: Path) -> dict[str, int]:
    """Rows that could not be used, with their reason, per table; their counts."""
    quarantined: dict[str, int] = {}
    for kind, checked in dataset.checked_tables():
        if not checked.quarantine.empty:
            checked.quarantine.to_csv(inside(work, f"quarantine.{kind}.csv"), index=False)
            quarantined[kind] = len(checked.quarantine)
    return quarantined


def with_uplift(champions: Champions, dataset: Dataset, scores: pd.DataFrame) -> pd.DataFrame:
    """The value scores with the uplift columns of the same customers (:func:`serving.segments.micro.join_uplift`:
    one set of suppression columns; do-not-disturb suppresses the value action too). Customers
    without a campaign row get empty uplift columns."""
    scored, _ = micro.score_campaign_customers(champions, dataset)
    aligned = scored.set_index("customer_id").reindex(scores["customer_id"].astype(str)).reset_index()
    aligned["do_not_disturb"] = aligned["do_not_disturb"].astype("boolean")
    joined = micro.join_uplift(champions, {c: scores[c].to_numpy() for c in scores.columns}, aligned)
    frame = pd.DataFrame(joined)
    return frame.astype({"suppressed": bool})


def _score_uplift_into(
    work: Path,
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    rules_path: Path | None,
    progress: Callable[[str, int, int], None],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A dataset whose customers are attribute rows (Hillstrom): every customer of the campaign
    table scored by the uplift model alone, suppressed by the segment rules' flags and contact dates
    and do-not-disturb; written into ``work``."""
    if rules_path is not None:
        champions.rules = load_rules(rules_path)
    progress("scoring uplift", 0, 1)
    scored, facts = micro.score_campaign_customers(champions, dataset, customer_table(dataset))
    scores = micro.with_suppression(champions, scored, suppression_facts(facts, as_of), as_of)
    progress("scoring uplift", 1, 1)
    mix = micro.action_mix(scores)
    info: dict[str, Any] = {
        "dataset": dataset.config.name,
        "currency": dataset.config.currency,
        "engine": "local",
        "as_of": f"{as_of:%Y-%m-%d}",
        "models": champions.versions(),
        "segment_version": None,
        "segment_file": None,
        "summary": {"customers": len(scores), "suppressed": int(scores["suppressed"].sum())},
        "uplift": mix,
        "leads": None,
    }
    progress("writing", 0, 1)
    scores.to_parquet(work / "scores.parquet", index=False)
    write_csv(scores, work / "scores.csv")
    info["action_lists"] = action_lists(scores, customer_table(dataset), work / "actions")
    info["quarantined"] = write_quarantine(dataset, work)
    (work / "report.html").write_text(report_html(report_inputs(champions, dataset, None, info)))
    (work / "summary.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    return scores, info


LIST_COLUMNS = ("value_tier", "risk_band", "segment", "clv", "value_at_risk")
TIER_ORDER = {"A": 0, "B": 1, "C": 2, "D": 3}
RISK_ORDER = {"high": 0, "medium": 1, "low": 2}


def action_lists(scores: pd.DataFrame, customers: pd.DataFrame | None, folder: Path) -> dict[str, int]:
    """One CSV per next best action (``actions/<arm>.csv``; none for ``no_action``) for CRM import:
    customer_id, contact fields, the action, its expected incremental value, the micro segment, the
    arm's uplift (and the value tier and segment where the dataset has them); suppressed customers
    left out. Order is priority: the highest expected incremental value first; where the dataset has
    value tiers, tier A first, and within a tier the high churn-risk band first, so that a valuable
    customer at risk whom the arm persuades gets it before others."""
    folder.mkdir(parents=True, exist_ok=True)
    acting = scores["next_best_action"].notna() & (scores["next_best_action"] != NO_ACTION)
    keep = scores.loc[acting & ~scores["suppressed"].astype(bool)]
    contact = [c for c in (customers.columns if customers is not None else []) if CONTACT_PATTERN.search(str(c))]
    counts: dict[str, int] = {}
    slugs: dict[str, str] = {}
    for action, rows in keep.groupby("next_best_action", sort=True):
        slug = arm_slug(str(action))
        if slug in slugs:
            raise ConfigError(f"arms '{slugs[slug]}' and '{action}' would both be written to actions/{slug}.csv")
        slugs[slug] = str(action)
        columns = ["customer_id", "next_best_action", "expected_incremental_value", "micro_segment"]
        columns += [f"uplift_{slug}", *[c for c in LIST_COLUMNS if c in rows.columns]]
        listed = rows[columns].sort_values(
            ["expected_incremental_value", "customer_id"], ascending=[False, True], kind="stable"
        )
        if "value_tier" in rows.columns and "risk_band" in rows.columns:
            rank = pd.DataFrame(
                {
                    "tier": rows.loc[listed.index, "value_tier"].map(TIER_ORDER).fillna(len(TIER_ORDER)),
                    "risk": rows.loc[listed.index, "risk_band"].map(RISK_ORDER).fillna(len(RISK_ORDER)),
                }
            )
            listed = listed.loc[rank.sort_values(["tier", "risk"], kind="stable").index]
        if contact and customers is not None:
            listed = listed.join(customers[contact], on="customer_id")[["customer_id", *contact, *columns[1:]]]
        write_csv(listed, inside(folder, f"{slug}.csv"))
        counts[str(action)] = len(listed)
    return counts


def action_mix_table(mix: dict[str, Any]) -> list[str]:
    """Lines of the action mix: customers and expected incremental value per next best action."""
    lines = [f"{'next best action':<24} {'customers':>10} {'expected incremental value':>26}"]
    lines += [
        f"{action:<24} {count:>10,} {mix['expected_incremental_value'][action]:>26,.2f}"
        for action, count in mix["actions"].items()
    ]
    reasons = ", ".join(f"{reason}: {count:,}" for reason, count in mix["suppression_reasons"].items())
    return [*lines, f"{mix['suppressed']:,} suppressed" + (f" ({reasons})" if reasons else "")]


def summary_table(result: BatchResult) -> str:
    """The table printed at the end: customers per segment; value and value at risk per tier; the 20/80
    check; the next best actions where an uplift model scored the customers."""
    s = result.summary["summary"]
    mix = result.summary.get("uplift")
    if "segments" not in s:  # scored by the uplift model alone
        return "\n".join(action_mix_table(mix)) if mix else ""
    lines = [f"{'segment':<14} {'customers':>10}"]
    lines += [f"{name:<14} {count:>10,}" for name, count in s["segments"].items()]
    lines += ["", f"{'tier':<6} {'predicted value':>16} {'value at risk':>14}"]
    lines += [
        f"{tier:<6} {s['value_by_tier'][tier]:>16,.0f} {s['value_at_risk_by_tier'][tier]:>14,.0f}"
        for tier in ("A", "B", "C", "D")
    ]
    lines += [
        "",
        f"20/80 check: tier A is {s['tier_a_share_of_customers']:.1%} of customers and holds "
        f"{s['tier_a_share_of_value']:.1%} of predicted value; {s['suppressed']:,} suppressed",
    ]
    if mix:
        lines += ["", *action_mix_table(mix)]
    return "\n".join(lines)
