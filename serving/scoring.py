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
from features.transactions import SUMMARY_COLUMNS
from serving.segments import FrozenSegments, assign, latest_frozen, load_frozen
from training import tracking
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
        numeric = [c for c in frame.columns if c not in UNKNOWN_FOR_NEW and not c.startswith("attr_") and c != "as_of"]
        frame.loc[new, numeric] = frame.loc[new, numeric].fillna(0.0)
        frame["as_of"] = as_of
    frame = frame.reset_index()
    for column in frame.columns:  # reindexing can leave object columns; the models read floats
        if column not in ("customer_id", "as_of") and not pd.api.types.is_float_dtype(frame[column].dtype):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return model.add_btyd(frame)


def _days_since(tx: pd.DataFrame, mask: np.ndarray, ids: pd.Index, as_of: pd.Timestamp) -> np.ndarray:
    rows = tx.loc[mask]
    last = rows.groupby(rows["customer_id"].astype(str))["timestamp"].max()
    days = (as_of - last).dt.days.reindex(ids)
    return days.to_numpy(dtype=float)


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
    result["as_of"] = pd.Timestamp(as_of).strftime("%Y-%m-%d")
    for family in CUSTOMER_FAMILIES:
        result[f"{family}_model_version"] = champions.models[family].version
    result["segment_version"] = frozen.version
    return result


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

    out = pd.DataFrame({"customer_id": ids})
    clv_model = champions.models["clv"].model
    clv_features = _features_for_everyone(clv_model, dataset, ids, as_of)
    churn_model = champions.models["churn"].model
    propensity_model = champions.models["propensity"].model
    churn_features = _reuse_or_build(churn_model, clv_model, clv_features, dataset, ids, as_of)
    propensity_features = _reuse_or_build(propensity_model, clv_model, clv_features, dataset, ids, as_of)

    churn = churn_model.score_features(churn_features)
    propensity = propensity_model.score_features(propensity_features)
    value = clv_model.score_features(clv_features)
    out["churn_probability"] = churn["churn_probability"].to_numpy()
    for column in propensity.columns:
        if column.startswith("purchase_probability"):
            out[column] = propensity[column].to_numpy()
    for column in ("p_alive", "expected_orders", "expected_order_value", "expected_spend", "clv"):
        out[column] = value[column].to_numpy()

    facts = pd.DataFrame(index=out.index)
    facts["total_spend"] = clv_features["total_spend"].to_numpy()
    facts["days_since_last_order"] = clv_features["days_since_last_order"].to_numpy()
    before = (tx["timestamp"] < as_of).to_numpy()
    facts["days_since_last_refund"] = _days_since(tx, before & (tx["amount"] < 0).to_numpy(), ids, as_of)
    if attributes is None:
        flag_columns = [c for c in SUPPRESSION_COLUMNS if c in tx.columns]
        attributes = tx.groupby(tx["customer_id"].astype(str))[flag_columns].last() if flag_columns else None
    if attributes is not None:
        for column in SUPPRESSION_COLUMNS:
            if column not in attributes.columns:
                continue
            latest = attributes[column].reindex(ids)
            if column.startswith("last_"):
                stamps = pd.to_datetime(latest, errors="coerce", utc=True).dt.tz_convert(None)
                name = "days_since_last_contact" if column == "last_contacted" else "days_since_last_complaint"
                facts[name] = (as_of - stamps).dt.days.to_numpy(dtype=float)
            else:
                facts[column] = latest.to_numpy()
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
    if model.categories == reference.categories and model.encoder is None and reference.encoder is None:
        return model.add_btyd(features.drop(columns=["btyd_expected_orders", "btyd_p_alive"], errors="ignore"))
    return _features_for_everyone(model, dataset, ids, as_of)
