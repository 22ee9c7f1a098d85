"""Scoring with the champion models: one code path for the API and for batch scoring.

:func:`load_champions` loads the ``champion`` version of each registered model from the MLflow
registry, with the frozen segment file. :func:`score_customers` takes a checked dataset (a request's
transactions or a whole customer base) and an as-of date and returns, per customer, every score,
the segment columns and the model versions used. Customers with no transaction before the as-of
date are scored as new customers (no history), not refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.io import Dataset
from features.transactions import NS_PER_DAY, SUMMARY_COLUMNS, feature_arrays
from serving.segments import FrozenSegments, assign, assign_columns, latest_frozen, load_frozen
from training import tracking
from training.btyd import BTYD_FEATURES
from training.columns import without_columns
from training.common import CustomerModel

REGISTERED = {
    "churn": "valuecast-churn",
    "propensity": "valuecast-propensity",
    "clv": "valuecast-clv",
    "lead_score": "valuecast-lead-score",
}
CUSTOMER_FAMILIES = ("churn", "propensity", "clv")
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
    model: Any  # the PythonModel inside the logged pyfunc

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "name": self.registered_name,
            "version": self.version,
            "run_id": self.run_id,
            "trained_at": self.trained_at,
            "dataset": self.dataset,
            "metrics": self.metrics,
        }


@dataclass
class Champions:
    models: dict[str, Served] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    frozen: FrozenSegments | None = None
    segment_file: str | None = None
    loaded_at: float = field(default_factory=time.time)

    def versions(self) -> dict[str, str]:
        return {family: served.version for family, served in self.models.items()}

    def require(self, families: tuple[str, ...]) -> None:
        missing = [f for f in families if f not in self.models]
        if missing:
            reasons = "; ".join(f"{f}: {self.problems.get(f, 'not loaded')}" for f in missing)
            raise NotReadyError(f"model(s) not available: {reasons}")

    @property
    def ready_for_customers(self) -> bool:
        return all(f in self.models for f in CUSTOMER_FAMILIES) and self.frozen is not None


MAIN_METRICS = ("roc_auc", "pr_auc", "brier", "gini_normalized", "top20_capture", "aggregate_error")


def load_champions(segment_file: Path | None = None) -> Champions:
    """The champion of every registered model there is; what cannot be loaded is kept as a problem."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = tracking.connect()
    champions = Champions()
    for family, name in REGISTERED.items():
        try:
            version = client.get_model_version_by_alias(name, tracking.CHAMPION)
        except MlflowException:
            champions.problems[family] = f"no '{tracking.CHAMPION}' version of {name} in {tracking.tracking_uri()}"
            continue
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}").unwrap_python_model()
        if family in CUSTOMER_FAMILIES and not isinstance(model, CustomerModel):
            champions.problems[family] = (
                f"{name} v{version.version} was trained on a customer snapshot, not a transaction log; "
                "promote a version trained on transactions to score customers"
            )
            continue
        run = client.get_run(version.run_id)
        champions.models[family] = Served(
            family=family,
            registered_name=name,
            version=str(version.version),
            run_id=str(version.run_id),
            trained_at=pd.Timestamp(run.info.start_time, unit="ms", tz="UTC").isoformat(),
            metrics={k: float(v) for k, v in run.data.metrics.items() if k in MAIN_METRICS},
            dataset=str(run.data.tags.get("dataset", "")),
            model=model,
        )
    path = segment_file or latest_frozen()
    if path is None:
        champions.problems["segments"] = "no frozen segment file: run make segments (or make score) first"
    else:
        champions.frozen = load_frozen(path)
        champions.segment_file = str(path)
    return champions


def new_customer_value(column: str) -> float:
    """A feature of a customer without history before the as-of date: unknown for the gaps between
    orders and for attributes, zero for everything counted."""
    return np.nan if column in UNKNOWN_FOR_NEW or column.startswith("attr_") else 0.0


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
    out |= {c: v for c, v in propensity.items() if c.startswith("purchase_probability")}
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
    if _shares_features(model, reference):
        return model.add_btyd(without_columns(features, BTYD_FEATURES))
    return _features_for_everyone(model, dataset, ids, as_of)


def _shares_features(model: CustomerModel, reference: CustomerModel) -> bool:
    return model.categories == reference.categories and model.encoder is None and reference.encoder is None


def histories_problem(champions: Champions) -> str | None:
    """Why :func:`score_histories` cannot score for these champions (None: it can)."""
    models = [champions.models[f].model for f in CUSTOMER_FAMILIES]
    if not all(_shares_features(m, models[0]) for m in models):
        return "the champions read customer attributes or different categories"
    return None


def score_histories(
    champions: Champions,
    ids: list[str],
    code: np.ndarray,
    ts: np.ndarray,
    amount: np.ndarray,
    as_of: pd.Timestamp,
    attributes: dict[str, list[Any]] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`score_customers` for the few customers of one API request, without building pandas
    objects (which cost more than the arithmetic for one customer): same feature code, same models,
    same segment rules, so the same numbers (a test compares the two to 1e-9).

    The transactions are plain purchases and refunds (no order ids, categories or attributes the
    models read: :func:`histories_problem` says when the champions need more): ``code`` is the
    position of each row's customer in ``ids``, ``ts`` int64 nanoseconds (UTC), ``amount`` floats.
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
    settings = clv_model.dataset_config.features
    built = feature_arrays(
        code, n, ts, amount, as_of, windows_days=settings.windows_days, categories=clv_model.categories
    )
    new = np.bincount(code, minlength=n) == 0
    if new.any():
        built = {c: np.where(new, new_customer_value(c), v) for c, v in built.items()}
    clv_features = clv_model.add_btyd(built)
    churn_features = champions.models["churn"].model.add_btyd(built)
    propensity_features = champions.models["propensity"].model.add_btyd(built)
    scores = _model_outputs(champions, clv_features, churn_features, propensity_features)

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
