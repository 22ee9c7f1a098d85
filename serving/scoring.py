"""Scoring with the champion models: one code path for the API and for batch scoring.

Registered models are per (family, dataset): ``valuecast-churn-cdnow`` scores CDNOW's customers and
nothing else, so training on one dataset never changes what another is scored with.
:func:`load_champions` loads one dataset's ``champion`` versions from the MLflow registry, with that
dataset's own frozen segment file; :func:`load_catalog` loads every served dataset's (the API).
:func:`score_customers` takes a checked dataset (a request's transactions or a whole customer base)
and an as-of date and returns, per customer, every score, the segment columns and the model versions
used. Customers with no transaction before the as-of date are scored as new customers (no history),
not refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.config import ConfigError
from features.io import Dataset
from features.transactions import NS_PER_DAY, SUMMARY_COLUMNS, feature_arrays
from serving.segments.rules import (
    FrozenSegments,
    SegmentRules,
    assign,
    assign_columns,
    latest_frozen,
    load_frozen,
    load_rules,
    missing_frozen,
)
from training import families, tracking
from training.btyd import BTYD_FEATURES
from training.columns import without_columns
from training.common import CustomerModel

# What POST /score and batch scoring combine into one row: their outputs are read by name below.
CUSTOMER_FAMILIES = ("churn", "propensity", "clv")
LEAD_FAMILIES = ("lead_score",)
# POST /score answers with the uplift champion too: alone for a dataset whose customers come as
# attribute rows (Hillstrom), or next to the customer models' columns where a dataset has both.
UPLIFT_FAMILIES = ("uplift",)
# Macro segments come with the customer models' columns where the dataset has a champion of them.
MACRO_FAMILIES = ("macro_segment",)
ENDPOINT_FAMILIES = (*CUSTOMER_FAMILIES, *LEAD_FAMILIES, *UPLIFT_FAMILIES, *MACRO_FAMILIES)
# Families a dataset may go without: their absence is not a problem of the endpoint.
OPTIONAL_FAMILIES = (*UPLIFT_FAMILIES, *MACRO_FAMILIES)
DATASETS_ENV = "VALUECAST_DATASETS"
# Feature columns that describe the gaps between orders: unknown (missing) for a customer without history.
UNKNOWN_FOR_NEW = (
    "days_since_first_order",
    "days_since_last_order",
    "mean_days_between_orders",
    "std_days_between_orders",
)


SUPPRESSION_COLUMNS = ("opted_out", "do_not_contact", "last_contacted", "last_complaint")


class NotReadyError(RuntimeError):
    """A model or the segment file needed for a request is not loaded; the message says which and why."""


@dataclass
class Served:
    """One champion version as loaded for scoring."""

    family: str
    registered_name: str
    version: str
    run_id: str
    trained_at: str
    metrics: dict[str, float]
    dataset: str
    candidate: str | None
    model: Any  # the PythonModel inside the logged pyfunc

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.registered_name,
            "dataset": self.dataset,
            "family": self.family,
            "version": self.version,
            "run_id": self.run_id,
            "trained_at": self.trained_at,
            "candidate": self.candidate,
            "metrics": self.metrics,
        }


@dataclass
class Champions:
    """One dataset's champions and segment file; ``problems`` maps a family (or ``segments``) that
    cannot be used to the reason."""

    dataset: str = ""
    models: dict[str, Served] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    frozen: FrozenSegments | None = None
    segment_file: str | None = None
    loaded_at: float = field(default_factory=time.time)
    broken: set[str] = field(default_factory=set)  # families whose champion failed to load
    # Families (or ``segments``) still served from the previous load because their new champion or
    # segment file failed to load (a reload keeps the last good set), with the reason.
    kept: dict[str, str] = field(default_factory=dict)
    # The suppression rules of a dataset scored by uplift alone (no segment file: no value tiers).
    rules: SegmentRules | None = None

    def versions(self, families_used: tuple[str, ...] | None = None) -> dict[str, str]:
        return {f: s.version for f, s in self.models.items() if families_used is None or f in families_used}

    def has(self, families_needed: tuple[str, ...]) -> bool:
        """Whether this dataset has a champion of every family (loaded, or failed to load: then the
        server is at fault, not the request). A family never registered here, or whose champion
        cannot score this kind of input (a snapshot model), is not had."""
        return all(f in self.models or f in self.broken for f in families_needed)

    def why_not(self, families_needed: tuple[str, ...]) -> str:
        """The problems of the families a request needs, for an error message ('' when none)."""
        return "; ".join(f"{f}: {self.problems[f]}" for f in families_needed if f in self.problems)

    def require(self, families_needed: tuple[str, ...]) -> None:
        missing = [f for f in families_needed if f not in self.models]
        if missing:
            reasons = "; ".join(f"{f}: {self.problems.get(f, self._unregistered(f))}" for f in missing)
            raise NotReadyError(f"model(s) of dataset '{self.dataset}' not available: {reasons}")

    def _unregistered(self, family: str) -> str:
        if not self.dataset:
            return "not loaded"
        return f"no registered model {families.registered_name(family, self.dataset)}"

    @property
    def ready_for_customers(self) -> bool:
        return all(f in self.models for f in CUSTOMER_FAMILIES) and self.frozen is not None

    @property
    def ready_for_leads(self) -> bool:
        return all(f in self.models for f in LEAD_FAMILIES)

    @property
    def ready_for_uplift(self) -> bool:
        return all(f in self.models for f in UPLIFT_FAMILIES) and self.suppression_rules is not None

    @property
    def suppression_rules(self) -> SegmentRules | None:
        """The rules suppression follows: the segment file's where the dataset has one, else the rules file."""
        return self.frozen.rules if self.frozen is not None else self.rules

    def state(self) -> dict[str, Any]:
        """What this dataset can answer, for /readyz and /models."""
        return {
            "customers": self.ready_for_customers,
            "leads": self.ready_for_leads,
            "uplift": self.ready_for_uplift,
            "models": self.versions(),
            "segment_version": self.frozen.version if self.frozen else None,
            "segment_file": self.segment_file,
            "problems": self.problems,
            "kept_from_last_load": self.kept,
        }


MAIN_METRICS = ("roc_auc", "pr_auc", "brier", "gini_normalized", "top20_capture", "aggregate_error")
# Uplift: the primary Qini AUC with its 95% interval, uplift in the top 30%, and each arm's winner on
# each outcome (``womens_e_mail_visit_winner_qini_auc``).
UPLIFT_METRICS = ("qini_auc", "qini_auc_lo", "qini_auc_hi", "uplift_at_30", "uplift_at_30_lo", "uplift_at_30_hi")
UPLIFT_ARM_METRICS = ("_winner_qini_auc", "_winner_qini_auc_lo", "_winner_qini_auc_hi")


def main_metric(family: str, key: str) -> bool:
    """Whether a run metric is one /models shows for the family."""
    if family in UPLIFT_FAMILIES:
        return key in UPLIFT_METRICS or key.endswith(UPLIFT_ARM_METRICS)
    return key in MAIN_METRICS


def _served(client: Any, family: str, name: str, dataset: str, version: Any) -> Served:
    """A champion version loaded for scoring; raises what loading raises."""
    import mlflow

    model = tracking.fitted(mlflow.pyfunc.load_model(f"models:/{name}/{version.version}"))
    run = client.get_run(version.run_id)
    return Served(
        family=family,
        registered_name=name,
        version=str(version.version),
        run_id=str(version.run_id),
        trained_at=pd.Timestamp(run.info.start_time, unit="ms", tz="UTC").isoformat(),
        metrics={k: float(v) for k, v in sorted(run.data.metrics.items()) if main_metric(family, k)},
        dataset=dataset,
        candidate=version.tags.get("candidate"),
        model=model,
    )


def _wrong_kind(family: str, served: Served) -> str | None:
    """Why a champion cannot score its family's entity (None: it can): customer scoring computes
    features from transactions, which a model trained on a snapshot (Telco) does not take."""
    if family in UPLIFT_FAMILIES:
        from training.uplift import UpliftModel

        if isinstance(served.model, UpliftModel):
            return None
        return f"{served.registered_name} v{served.version} is not an uplift model ({type(served.model).__name__})"
    if families.get(family).entity == "customer" and not isinstance(served.model, CustomerModel):
        return (
            f"{served.registered_name} v{served.version} was trained on a customer snapshot, not a transaction "
            f"log; promote a version trained on transactions to score customers"
        )
    return None


def load_champions(
    dataset: str, segment_file: Path | None = None, loaded: Mapping[tuple[str, str], Served] | None = None
) -> Champions:
    """The champion of each family registered for ``dataset``, and its latest frozen segment file.

    A family with no registered model for the dataset is left out, unless the dataset has another
    family scoring the same entity (customers, leads): then it is a problem, since the endpoint needs
    it. A model that fails to load is a problem with the reason; the others still serve. ``loaded``:
    versions already in memory by (registered name, version), reused instead of loaded again (a
    reload after one promotion loads one model, not all of them).
    """
    from mlflow.exceptions import MlflowException

    families.check_dataset_name(dataset)
    client = tracking.connect()
    champions = Champions(dataset=dataset)
    registered: dict[str, str] = {}
    for family in families.names():
        name = families.registered_name(family, dataset)
        try:
            client.get_registered_model(name)
        except MlflowException:
            continue
        registered[family] = name
    # An uplift model scores attribute rows on its own: a dataset with one needs no customer models.
    entities = {families.get(f).entity for f in registered if f in ENDPOINT_FAMILIES and f not in OPTIONAL_FAMILIES}
    for family in families.names():
        if family not in ENDPOINT_FAMILIES:
            continue
        if family not in registered:
            if family not in OPTIONAL_FAMILIES and families.get(family).entity in entities:
                champions.problems[family] = f"no registered model {families.registered_name(family, dataset)}"
            continue
        name = registered[family]
        try:
            version = client.get_model_version_by_alias(name, tracking.CHAMPION)
        except MlflowException:
            champions.problems[family] = _no_champion(client, family, name, dataset)
            continue
        try:
            served = (loaded or {}).get((name, str(version.version))) or _served(client, family, name, dataset, version)
        except Exception as exc:  # a broken artifact must not take the other models down
            champions.problems[family] = f"{name} v{version.version} failed to load: {_failure(exc)}"
            champions.broken.add(family)
            continue
        if (wrong := _wrong_kind(family, served)) is not None:
            champions.problems[family] = wrong
            continue
        champions.models[family] = served
    _attach_segments(champions, segment_file)
    return champions


def _no_champion(client: Any, family: str, name: str, dataset: str) -> str:
    """Why a registered model has no champion, and what to do: train, or promote a challenger that lost
    to its baseline (the gate keeps it out; an operator may still choose to serve it)."""
    from mlflow.exceptions import MlflowException

    store = tracking.redacted(tracking.tracking_uri())  # problems are shown by /models
    try:
        challenger = client.get_model_version_by_alias(name, tracking.CHALLENGER)
    except MlflowException:
        return f"no '{tracking.CHAMPION}' version of {name} in {store}"
    reason = challenger.tags.get("promotion_reason", "it did not pass the promotion gate")
    return (
        f"no '{tracking.CHAMPION}' version of {name} in {store}: v{challenger.version} is a challenger ({reason}); "
        f"serve it anyway with make promote MODEL={family} DATA={dataset} VERSION={challenger.version}, or train "
        f"again with more data"
    )


def _attach_segments(champions: Champions, segment_file: Path | None) -> None:
    """The dataset's latest frozen segment file, when it scores customers at all; for a dataset
    scored by uplift alone, the segment rules file (its suppression rules)."""
    if not champions.has(CUSTOMER_FAMILIES) and segment_file is None:
        if champions.has(UPLIFT_FAMILIES):
            try:
                champions.rules = load_rules()
            except ConfigError as exc:
                champions.problems["segments"] = str(exc)
        return
    path = segment_file or latest_frozen(champions.dataset)
    if path is None:
        champions.problems["segments"] = missing_frozen(champions.dataset)
        return
    try:
        champions.frozen = load_frozen(path)
    except ConfigError as exc:
        champions.problems["segments"] = str(exc)
        return
    champions.segment_file = str(path)


@dataclass
class Catalog:
    """Every served dataset's champions (the API): requests name the dataset they are scored with."""

    datasets: dict[str, Champions] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # store-wide: registry, configuration
    migrated: list[str] = field(default_factory=list)
    kept_lines: list[str] = field(default_factory=list)  # what a reload kept from the last good load
    default: str | None = None
    loaded_at: float = field(default_factory=time.time)

    def having(self, families_needed: tuple[str, ...]) -> list[str]:
        """The datasets with a registered model of every family in ``families_needed``."""
        return sorted(name for name, c in self.datasets.items() if c.has(families_needed))

    @property
    def ready(self) -> bool:
        return any(c.ready_for_customers or c.ready_for_leads or c.ready_for_uplift for c in self.datasets.values())

    def served(self) -> list[Served]:
        return [s for name in sorted(self.datasets) for s in self.datasets[name].models.values()]

    def problem_list(self) -> list[dict[str, str]]:
        """Every problem as {dataset, family, reason}; store-wide ones have an empty dataset."""
        found = [{"dataset": "", "family": key, "reason": reason} for key, reason in self.problems.items()]
        for name in sorted(self.datasets):
            for family, reason in self.datasets[name].problems.items():
                found.append({"dataset": name, "family": family, "reason": reason})
            for family, reason in self.datasets[name].kept.items():
                found.append({"dataset": name, "family": family, "reason": f"serving the last good load: {reason}"})
        return found


def configured_datasets() -> list[str] | None:
    """The datasets named by ``VALUECAST_DATASETS`` (comma-separated), each checked; None when unset."""
    raw = os.environ.get(DATASETS_ENV, "").strip()
    if not raw:
        return None
    names = [part.strip() for part in raw.split(",") if part.strip()]
    for name in names:
        try:
            families.check_dataset_name(name)
        except ConfigError as exc:
            raise ConfigError(f"{DATASETS_ENV}: {exc}") from exc
    return list(dict.fromkeys(names))


def load_catalog(
    echo: Callable[[str], object] = print, *, migrate: bool = True, loaded: Catalog | None = None
) -> Catalog:
    """The champions of every dataset to serve: ``VALUECAST_DATASETS``, or by default every dataset
    with a champion in the registry. Models registered under the one-per-family names of earlier
    versions are migrated first (one line each through ``echo``), unless the caller did that itself
    (``migrate=False``: the API's workers take turns at it)."""
    catalog = Catalog(default=default_dataset())
    if migrate:
        catalog.migrated = tracking.migrate_legacy(echo=echo)
    reusable = {(s.registered_name, s.version): s for s in loaded.served()} if loaded is not None else {}
    chosen = configured_datasets()
    if chosen is None:
        chosen = sorted({row["dataset"] for row in tracking.registered_models() if row["champion_version"]})
        if not chosen:
            catalog.problems["registry"] = (
                f"no champion model in {tracking.redacted(tracking.tracking_uri())}: run make train DATA=..."
            )
    for dataset in chosen:
        try:
            catalog.datasets[dataset] = load_champions(dataset, loaded=reusable)
        except Exception as exc:  # one dataset's failure (a lost connection mid-way) leaves the others
            catalog.datasets[dataset] = Champions(dataset=dataset, problems={"dataset": _failure(exc)})
            continue
        if not catalog.datasets[dataset].models and not catalog.datasets[dataset].problems:
            catalog.datasets[dataset].problems["registry"] = (
                f"no registered model of dataset '{dataset}': run make train DATA={dataset}"
            )
    if catalog.default is not None and catalog.default not in catalog.datasets:
        catalog.problems[DEFAULT_DATASET_ENV] = (
            f"{DEFAULT_DATASET_ENV}={catalog.default} is not among the served datasets ({_names(catalog)})"
        )
    return catalog


def _failure(exc: Exception) -> str:
    """An exception as a one-line reason, with any credentials in URIs redacted."""
    return tracking.scrubbed(f"{type(exc).__name__}: {exc}".splitlines()[0])


def keep_last_good(old: Catalog, new: Catalog) -> list[str]:
    """After a reload, serve from ``old`` whatever failed to load in ``new``: a champion whose new
    version's artifact is broken, a segment file that no longer parses, a dataset or the whole store
    that could not be read. What is kept is recorded in each dataset's ``kept`` (shown by /readyz and
    /models) and returned as lines for the /reload answer."""
    lines: list[str] = []
    if new.problems.get("store") and not new.datasets:
        new.datasets = old.datasets
        for champions in new.datasets.values():
            champions.kept["store"] = new.problems["store"]
        return [f"every dataset kept its last good models: {new.problems['store']}"] if old.datasets else []
    for name, before in old.datasets.items():
        after = new.datasets.get(name)
        if after is None:
            continue  # no longer served: the configuration says so
        if "dataset" in after.problems and not after.models:
            before.kept["dataset"] = after.problems["dataset"]
            new.datasets[name] = before
            lines.append(f"{name}: kept its last good models ({after.problems['dataset']})")
            continue
        for family, served in before.models.items():
            if family not in after.models and family in after.broken:
                after.models[family] = served
                after.kept[family] = after.problems.pop(family)
                after.broken.discard(family)
                lines.append(f"{name} {family}: kept v{served.version} ({after.kept[family]})")
        if before.frozen is not None and after.frozen is None and "segments" in after.problems:
            after.frozen, after.segment_file = before.frozen, before.segment_file
            after.kept["segments"] = after.problems.pop("segments")
            lines.append(f"{name} segments: kept {before.segment_file} ({after.kept['segments']})")
    return lines


DEFAULT_DATASET_ENV = "VALUECAST_DEFAULT_DATASET"


def default_dataset() -> str | None:
    """``VALUECAST_DEFAULT_DATASET``, checked: the dataset a request without ``dataset`` is scored with."""
    name = os.environ.get(DEFAULT_DATASET_ENV, "").strip()
    if not name:
        return None
    try:
        return families.check_dataset_name(name)
    except ConfigError as exc:
        raise ConfigError(f"{DEFAULT_DATASET_ENV}: {exc}") from exc


class DatasetChoiceError(ValueError):
    """A request's dataset that cannot be used (unknown, or none named where several could serve):
    the API answers 422 naming the field ``dataset``, its value and the choices."""

    def __init__(self, message: str, value: str | None, choices: list[str]) -> None:
        super().__init__(f"{message}; choose one of: {', '.join(choices) or '(none loaded)'}")
        self.value = value
        self.choices = choices


def choose_dataset(
    catalog: Catalog, requested: str | None, needs: tuple[str, ...], or_needs: tuple[str, ...] = ()
) -> Champions:
    """The champions a request is scored with: the dataset it names; else the catalog's default when
    that dataset has models of these families; else the only dataset that has them. ``or_needs``:
    other families that can answer instead (POST /score: the uplift model of a dataset scored from
    attribute rows); a dataset with both must have both working.

    Raises :class:`DatasetChoiceError` (the request's fault: 422) or :class:`NotReadyError` (the
    server's: 503, with the reason: models that failed to load, no segment file).
    """

    def can(champions: Champions) -> bool:
        return champions.has(needs) or bool(or_needs and champions.has(or_needs))

    able = sorted(name for name, c in catalog.datasets.items() if can(c))
    what = "customers" if needs == CUSTOMER_FAMILIES else "leads"
    name = requested
    if name is None and catalog.default is not None:
        if catalog.default not in catalog.datasets:
            raise NotReadyError(f"{DEFAULT_DATASET_ENV}={catalog.default} is not served (served: {_names(catalog)})")
        if can(catalog.datasets[catalog.default]):
            name = catalog.default
    if name is None:
        if len(able) > 1:
            raise DatasetChoiceError(f"several datasets score {what}: name one in the field 'dataset'", None, able)
        if not able:
            found = catalog.problem_list()
            reasons = "; ".join(f"{p['dataset'] or 'store'} {p['family']}: {p['reason']}" for p in found)
            raise NotReadyError(f"no served dataset has {', '.join(needs)} models ({reasons or 'none registered'})")
        name = able[0]
    if name not in catalog.datasets:
        raise DatasetChoiceError(f"dataset '{name}' is not served here", name, able)
    champions = catalog.datasets[name]
    if not can(champions):
        why = champions.why_not((*needs, *or_needs))
        message = f"dataset '{name}' has no {', '.join(needs)} model to score {what}"
        if or_needs:
            message += f", nor an {', '.join(or_needs)} model"
        raise DatasetChoiceError(message + (f" ({why})" if why else ""), name, able)
    if champions.has(needs):
        champions.require(needs)
        if needs == CUSTOMER_FAMILIES and champions.frozen is None:
            raise NotReadyError(champions.problems.get("segments", f"no frozen segment file for dataset '{name}'"))
    if or_needs and champions.has(or_needs):
        champions.require(or_needs)
        if champions.suppression_rules is None:
            raise NotReadyError(champions.problems.get("segments", f"no segment rules for dataset '{name}'"))
    return champions


def _names(catalog: Catalog) -> str:
    return ", ".join(sorted(catalog.datasets)) or "none"


def new_customer_value(column: str) -> float:
    """A feature of a customer without history before the as-of date: unknown for the gaps between
    orders and for attributes, zero for everything counted."""
    return np.nan if column in UNKNOWN_FOR_NEW or column.startswith(("attr_", "days_since_event_")) else 0.0


def _features_for_everyone(model: CustomerModel, dataset: Dataset, ids: pd.Index, as_of: pd.Timestamp) -> pd.DataFrame:
    """The model's features for every id, new customers (no history before as_of) with empty history."""
    assert dataset.transactions is not None
    tx = dataset.transactions.frame
    if bool((tx["timestamp"] < as_of).any()):
        built = model.features(dataset, as_of)
    else:  # nobody has history: the columns the models read, to be filled as for new customers
        columns = dict.fromkeys([*SUMMARY_COLUMNS, *model.columns, "days_since_last_order"])
        built = pd.DataFrame(
            {"customer_id": pd.Series([], dtype="string"), **{c: pd.Series([], dtype="float64") for c in columns}}
        )
    built = built.assign(customer_id=built["customer_id"].astype(str)).set_index("customer_id")
    frame = built.reindex(ids)
    new = built.index.get_indexer(ids) < 0  # hash lookup: isin on Arrow strings walks them in Python
    if new.any():
        counted = [c for c in frame.columns if c != "as_of" and new_customer_value(c) == 0.0]
        frame.loc[new, counted] = frame.loc[new, counted].fillna(0.0)
        frame["as_of"] = as_of
    frame = frame.reset_index()
    for column in frame.columns:  # reindexing can leave object columns; the models read floats
        if column not in ("customer_id", "as_of") and not pd.api.types.is_float_dtype(frame[column].dtype):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return model.add_btyd(frame)


def days_since_last(code: np.ndarray, ts: np.ndarray, n: int, as_of: pd.Timestamp) -> np.ndarray:
    """Whole days from each customer's latest row (``code``: customer 0..n-1, -1 for none; ``ts``:
    int64 nanoseconds, all before ``as_of``) to ``as_of``; NaN for customers without rows."""
    known = code >= 0
    latest = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, code[known], ts[known])
    days = ((as_of.value - latest) // NS_PER_DAY).astype(np.float64)
    return np.where(latest == np.iinfo(np.int64).min, np.nan, days)


def suppression_facts(attributes: Any, as_of: pd.Timestamp) -> dict[str, np.ndarray]:
    """The suppression flags and the days since the last contact and complaint, per customer, from
    ``attributes``: a DataFrame or a dict of columns aligned with the customers (missing: None/NaN)."""
    facts: dict[str, np.ndarray] = {}
    for column in SUPPRESSION_COLUMNS:
        if column not in attributes:
            continue
        latest = attributes[column]
        if column.startswith("last_"):
            stamps = pd.Series(pd.to_datetime(pd.Series(latest, dtype=object), errors="coerce", utc=True))
            name = "days_since_last_contact" if column == "last_contacted" else "days_since_last_complaint"
            facts[name] = (as_of - stamps.dt.tz_convert(None)).dt.days.to_numpy(dtype=float)
        else:
            facts[column] = np.asarray(latest, dtype=object)
    return facts


def utc_today() -> pd.Timestamp:
    """The day a request without ``as_of`` is scored at, in the API and the Python API alike: today in UTC."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()


def score_customers(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp | str,
    customer_ids: list[str] | None = None,
    attributes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every score and the segment of each customer (``customer_ids``, default all in the dataset).

    ``attributes`` (indexed by customer_id) carries the suppression flags and contact dates when they
    do not come with the transactions (API requests).
    """
    if champions.frozen is None:
        raise NotReadyError(champions.problems.get("segments", "no frozen segment file loaded"))
    scores, facts = model_scores(champions, dataset, as_of, customer_ids, attributes)
    return with_segments(champions, scores, facts, as_of)


def with_segments(
    champions: Champions, scores: pd.DataFrame, facts: pd.DataFrame, as_of: pd.Timestamp | str
) -> pd.DataFrame:
    """Model scores plus the segment columns, the as-of date and the versions used: the output row."""
    frozen = champions.frozen
    if frozen is None:
        raise NotReadyError(champions.problems.get("segments", "no frozen segment file loaded"))
    segments = assign(pd.concat([scores, facts], axis=1), frozen)
    result = pd.concat([scores, segments], axis=1)
    return result.assign(**_stamps(champions, frozen, as_of))


def _stamps(champions: Champions, frozen: FrozenSegments, as_of: pd.Timestamp | str) -> dict[str, str]:
    """The columns every output row carries: as-of date, model versions, segment file version."""
    stamps = {"as_of": pd.Timestamp(as_of).strftime("%Y-%m-%d")}
    for family in CUSTOMER_FAMILIES:
        stamps[f"{family}_model_version"] = champions.models[family].version
    for family in MACRO_FAMILIES:
        if family in champions.models:
            stamps[f"{family}_model_version"] = champions.models[family].version
    stamps["segment_version"] = frozen.version
    return stamps


def _model_outputs(
    champions: Champions, clv_features: Any, churn_features: Any, propensity_features: Any
) -> dict[str, np.ndarray]:
    """The three customer models' scores from their feature tables (DataFrames or dicts of arrays)."""
    churn = champions.models["churn"].model.score_columns(churn_features)
    propensity = champions.models["propensity"].model.score_columns(propensity_features)
    value = champions.models["clv"].model.score_columns(clv_features)
    out = {"churn_probability": churn["churn_probability"]}
    out |= {c: v for c, v in propensity.items() if c.startswith(("purchase_probability", "event_probability_"))}
    out |= {c: value[c] for c in ("p_alive", "expected_orders", "expected_order_value", "expected_spend", "clv")}
    return out


def model_scores(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp | str,
    customer_ids: list[str] | None = None,
    attributes: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The three customer models' scores, and the customer facts the segment rules read."""
    champions.require(CUSTOMER_FAMILIES)
    assert dataset.transactions is not None
    as_of = pd.Timestamp(as_of).normalize()
    tx = dataset.transactions.frame
    if customer_ids is None:
        customer_ids = list(pd.unique(tx["customer_id"].astype(str)))
    ids = pd.Index([str(c) for c in customer_ids], name="customer_id")

    clv_model = champions.models["clv"].model
    clv_features = _features_for_everyone(clv_model, dataset, ids, as_of)
    churn_model = champions.models["churn"].model
    propensity_model = champions.models["propensity"].model
    churn_features = _reuse_or_build(churn_model, clv_model, clv_features, dataset, ids, as_of)
    propensity_features = _reuse_or_build(propensity_model, clv_model, clv_features, dataset, ids, as_of)
    out = pd.DataFrame(
        {"customer_id": ids, **_model_outputs(champions, clv_features, churn_features, propensity_features)}
    )
    if (macro := macro_model(champions)) is not None:
        macro_features = _reuse_or_build(macro, clv_model, clv_features, dataset, ids, as_of)
        out["macro_segment"] = macro.score_columns(macro_features)["macro_segment"]

    facts = pd.DataFrame(index=out.index)
    facts["total_spend"] = clv_features["total_spend"].to_numpy()
    facts["days_since_last_order"] = clv_features["days_since_last_order"].to_numpy()
    refunds = tx.loc[(tx["timestamp"] < as_of).to_numpy() & (tx["amount"] < 0).to_numpy()]
    facts["days_since_last_refund"] = days_since_last(
        ids.get_indexer(refunds["customer_id"].astype(str)),
        refunds["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64),
        len(ids),
        as_of,
    )
    if attributes is None:
        flag_columns = [c for c in SUPPRESSION_COLUMNS if c in tx.columns]
        attributes = tx.groupby(tx["customer_id"].astype(str))[flag_columns].last() if flag_columns else None
    if attributes is not None:
        aligned = {c: attributes[c].reindex(ids) for c in SUPPRESSION_COLUMNS if c in attributes.columns}
        for name, values in suppression_facts(aligned, as_of).items():
            facts[name] = values
    return out, facts


def _reuse_or_build(
    model: CustomerModel,
    reference: CustomerModel,
    features: pd.DataFrame,
    dataset: Dataset,
    ids: pd.Index,
    as_of: pd.Timestamp,
) -> pd.DataFrame:
    """Features are computed once when two models were trained with the same categories and no
    attribute encoder (the usual case for one dataset); otherwise each model gets its own."""
    if shares_features(model, reference):
        return model.add_btyd(without_columns(features, BTYD_FEATURES))
    return _features_for_everyone(model, dataset, ids, as_of)


def shares_features(model: CustomerModel, reference: CustomerModel) -> bool:
    """Whether ``model`` reads the feature table built for ``reference`` (same categories and events, no
    attributes, no columns of its own such as the macro segments' Q4 share)."""
    return (
        model.categories == reference.categories
        and model.encoder is None
        and reference.encoder is None
        and model.reads_events == reference.reads_events
        and not model.own_features
        and not reference.own_features
    )


def macro_model(champions: Champions) -> CustomerModel | None:
    """The dataset's macro segment champion, None where it has none."""
    served = champions.models.get(MACRO_FAMILIES[0])
    return served.model if served is not None else None


def events_read(champions: Champions) -> list[str]:
    """The events table's events the customer champions read (none: transactions are all they need)."""
    return sorted(
        {e for f in CUSTOMER_FAMILIES if f in champions.models for e in champions.models[f].model.reads_events}
    )


def histories_problem(champions: Champions) -> str | None:
    """Why :func:`score_histories` cannot score for these champions (None: it can)."""
    models = [champions.models[f].model for f in (*CUSTOMER_FAMILIES, *MACRO_FAMILIES) if f in champions.models]
    if events_read(champions):
        return "the champions read the customers' events"
    if not all(shares_features(m, models[0]) for m in models):
        return "the champions read customer attributes, different categories or columns of their own (a Q4 share)"
    return None


def score_histories(
    champions: Champions,
    ids: list[str],
    code: np.ndarray,
    ts: np.ndarray,
    amount: np.ndarray,
    as_of: pd.Timestamp,
    attributes: dict[str, list[Any]] | None = None,
    category: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`score_customers` for the few customers of one API request, without building pandas
    objects (which cost more than the arithmetic for one customer): same feature code, same models,
    same segment rules, so the same numbers (a test compares the two to 1e-9).

    The transactions are purchases and refunds with their categories (no order ids or attributes
    the models read: :func:`histories_problem` says when the champions need more): ``code`` is the
    position of each row's customer in ``ids``, ``ts`` int64 nanoseconds (UTC), ``amount`` floats,
    ``category`` (codes per row, their names) as :func:`features.transactions.encode` gives them.
    ``attributes``: suppression flags and contact dates, one list per column aligned with ``ids``.
    """
    champions.require(CUSTOMER_FAMILIES)
    frozen = champions.frozen
    if frozen is None:
        raise NotReadyError(champions.problems.get("segments", "no frozen segment file loaded"))
    if (problem := histories_problem(champions)) is not None:
        raise ValueError(f"cannot score histories without pandas: {problem}; use score_customers")
    as_of = pd.Timestamp(as_of).normalize()
    n = len(ids)
    clv_model = champions.models["clv"].model
    before = ts < as_of.value
    code, ts, amount = code[before], ts[before], amount[before]
    if category is not None:
        category = (category[0][before], category[1])
    built = _history_features(clv_model, n, code, ts, amount, as_of, category)
    clv_features = clv_model.add_btyd(built)
    churn_features = champions.models["churn"].model.add_btyd(built)
    propensity_features = champions.models["propensity"].model.add_btyd(built)
    scores = _model_outputs(champions, clv_features, churn_features, propensity_features)
    if (macro := macro_model(champions)) is not None:
        scores["macro_segment"] = macro.score_columns(built)["macro_segment"]

    refund = amount < 0
    facts = {
        "total_spend": built["total_spend"],
        "days_since_last_order": built["days_since_last_order"],
        "days_since_last_refund": days_since_last(code[refund], ts[refund], n, as_of),
        **suppression_facts(attributes or {}, as_of),
    }
    segments = assign_columns({**scores, **facts}, frozen)
    stamps = {k: np.full(n, v, dtype=object) for k, v in _stamps(champions, frozen, as_of).items()}
    return {"customer_id": np.asarray(ids, dtype=object), **scores, **segments, **stamps}


def warm_up(champions: Champions) -> None:
    """Score one customer without purchases where :func:`score_histories` can, so that work done once
    per model (the compiled walk of each booster's trees, :mod:`training.tree_predict`) happens while
    the models load and not in the first request."""
    if champions.has(CUSTOMER_FAMILIES) and champions.frozen is not None and histories_problem(champions) is None:
        none = np.zeros(0, dtype=np.int64)
        score_histories(champions, ["warm-up"], none, none, np.zeros(0), utc_today())


def _history_features(
    clv_model: CustomerModel,
    n: int,
    code: np.ndarray,
    ts: np.ndarray,
    amount: np.ndarray,
    as_of: pd.Timestamp,
    category: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """The features of :func:`score_histories`' customers from their rows before ``as_of``, with the
    champions' settings; a customer without rows gets a new customer's values."""
    built = feature_arrays(
        code,
        n,
        ts,
        amount,
        as_of,
        windows_days=clv_model.dataset_config.features.windows_days,
        categories=clv_model.categories,
        category_codes=category[0] if category is not None else None,
        category_names=category[1] if category is not None else None,
    )
    new = np.bincount(code, minlength=n) == 0
    if new.any():
        built = {c: np.where(new, new_customer_value(c), v) for c, v in built.items()}
    return built
