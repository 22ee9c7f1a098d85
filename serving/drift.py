"""Drift of the champions' inputs and scores, measured at each refresh (issue 16, item 5).

For every customer model a dataset serves (churn, propensity, CLV, macro segments), the reference is what the model
was trained on: its inputs as of its latest training cut-off (read from the run's ``train_cutoffs``
parameter) computed from the same transaction log. The refresh's population as of the new date is
compared with it by the population stability index (PSI) of every model input and of the model's
score; the champion's age (days from its last training cut-off to the refresh) is compared with a
maximum. The thresholds are settings of each refresh (:class:`Thresholds`). Above them the refresh
says "retrain recommended" and why; ``make retrain`` retrains those families through the usual promotion gate.

PSI: bins are the reference's deciles (distinct values for a column with few of them), shares are
smoothed by 1e-4 so an empty bin does not make it infinite. Customary reading: below 0.1 stable,
0.1-0.25 some shift, above 0.25 a shift worth a retrain (the default threshold).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.io import Dataset
from serving.scoring import CUSTOMER_FAMILIES, MACRO_FAMILIES, Champions, Served, shares_features
from training.btyd import BTYD_FEATURES
from training.columns import without_columns
from training.common import CustomerModel

PSI_THRESHOLD = 0.25
SCORE_PSI_THRESHOLD = 0.25
MAX_AGE_DAYS = 180
# Customers drift is measured on: a larger base is sampled (the same customers at both dates). With
# 100,000 customers a PSI over deciles has a sampling error near 2e-4, far below any threshold, and a
# refresh of a million customers does not build every feature table twice more.
DRIFT_SAMPLE = 100_000
SMOOTHING = 1e-4
_LAST_TRAIN_CUTOFF = re.compile(r"train cut-offs \d{4}-\d{2}-\d{2}\.\.(\d{4}-\d{2}-\d{2})")


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (missing values are a bin)."""
    reference = np.asarray(reference, dtype=float)
    current = np.asarray(current, dtype=float)
    known = reference[np.isfinite(reference)]
    distinct = np.unique(known)
    if len(distinct) <= bins:
        edges = (distinct[:-1] + distinct[1:]) / 2 if len(distinct) > 1 else np.array([])
    else:
        edges = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1]))

    def shares(values: np.ndarray) -> np.ndarray:
        finite = np.isfinite(values)
        counts = np.bincount(np.searchsorted(edges, values[finite], side="right"), minlength=len(edges) + 1)
        counts = np.append(counts, (~finite).sum()).astype(float)
        return (counts + SMOOTHING) / (counts.sum() + SMOOTHING * len(counts))

    expected, actual = shares(reference), shares(current)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True)
class Thresholds:
    """Above these a refresh recommends a retrain (``make refresh PSI=... SCORE_PSI=... MAX_AGE_DAYS=...``)."""

    input_psi: float = PSI_THRESHOLD
    score_psi: float = SCORE_PSI_THRESHOLD
    max_age_days: int = MAX_AGE_DAYS

    def __post_init__(self) -> None:
        for name in ("input_psi", "score_psi"):
            value = getattr(self, name)
            if not 0 < value <= 10:
                raise ValueError(f"drift threshold {name} must be in (0, 10]; got {value}")
        if not 1 <= self.max_age_days <= 36_500:
            raise ValueError(f"max_age_days must be 1 .. 36500; got {self.max_age_days}")


@dataclass
class FamilyDrift:
    family: str
    version: str
    reference_cutoff: str
    age_days: int  # days from the data it was trained on (its last training cut-off) to the refresh
    rows: list[dict[str, Any]] = field(default_factory=list)  # kind, name, psi, threshold, drifted
    max_age_days: int = MAX_AGE_DAYS

    @property
    def reasons(self) -> list[str]:
        found = [f"{r['kind']} {r['name']} PSI {r['psi']:.2f} > {r['threshold']:g}" for r in self.rows if r["drifted"]]
        if self.age_days > self.max_age_days:
            found.append(f"trained on data {self.age_days} days older than this refresh (> {self.max_age_days})")
        return found


def reference_cutoff(served: Served, client: Any) -> pd.Timestamp | None:
    """The latest training cut-off of a champion, from its run's ``train_cutoffs`` parameter."""
    text = client.get_run(served.run_id).data.params.get("train_cutoffs", "")
    found = _LAST_TRAIN_CUTOFF.search(text)
    return pd.Timestamp(found.group(1)) if found else None


# Macro segments: the segment numbers, compared as categories (psi bins few distinct values one each).
SCORE_COLUMNS = {
    "churn": "churn_probability",
    "propensity": "purchase_probability",
    "clv": "clv",
    "macro_segment": "macro_segment_id",
}


def main_score(served: Served, scores: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """The score a family's drift is measured on (the one the segments read)."""
    name = SCORE_COLUMNS[served.family]
    return name, np.asarray(scores[name], dtype=float)


def sampled(dataset: Dataset, limit: int = DRIFT_SAMPLE, seed: int = 0) -> Dataset:
    """The dataset restricted to a random sample of at most ``limit`` customers (features are per
    customer, so each sampled customer's inputs are exactly those of a full build)."""
    from serving.batch import customer_subset

    assert dataset.transactions is not None
    column = dataset.transactions.frame["customer_id"]
    if isinstance(column.dtype, pd.CategoricalDtype):
        ids = column.cat.categories.astype(str)
    else:
        ids = pd.Index(pd.unique(column.astype(str)))
    if len(ids) <= limit:
        return dataset
    chosen = np.sort(np.random.default_rng(seed).choice(len(ids), limit, replace=False))
    return customer_subset(dataset, ids[chosen].tolist())


def measure(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    thresholds: Thresholds | None = None,
) -> list[FamilyDrift]:
    """Drift of each customer champion's inputs and score, as of ``as_of`` against its training data,
    on at most :data:`DRIFT_SAMPLE` customers."""
    from training import tracking

    dataset = sampled(dataset)
    limits = thresholds or Thresholds()

    client = tracking.connect()
    found = []
    built: dict[pd.Timestamp, tuple[CustomerModel, pd.DataFrame]] = {}
    for family in (*CUSTOMER_FAMILIES, *MACRO_FAMILIES):
        served = champions.models.get(family)
        if served is None:
            continue
        cutoff = reference_cutoff(served, client)
        # the age of what it learnt from: the refresh date less its last training cut-off (the day it
        # was trained only where that is unknown), so a refresh of historical data ages it correctly
        since = cutoff if cutoff is not None else pd.Timestamp(served.trained_at).tz_localize(None).normalize()
        age = int((as_of - since).days)
        reference = f"{cutoff:%Y-%m-%d}" if cutoff is not None else ""
        drift = FamilyDrift(family, served.version, reference, age, max_age_days=limits.max_age_days)
        found.append(drift)
        if cutoff is None:
            continue  # a run without the parameter (an older version): only the age is checked
        model = served.model
        before, now = features(model, dataset, cutoff, built), features(model, dataset, as_of, built)
        for column in model.input_columns:
            if column in before and column in now and pd.api.types.is_numeric_dtype(before[column]):
                value = psi(before[column].to_numpy(float), now[column].to_numpy(float))
                drift.rows.append(_row("input", column, value, limits.input_psi))
        name, reference_scores = main_score(served, model.score_columns(before))
        value = psi(reference_scores, main_score(served, model.score_columns(now))[1])
        drift.rows.append(_row("score", name, value, limits.score_psi))
    return found


def features(
    model: CustomerModel,
    dataset: Dataset,
    day: pd.Timestamp,
    built: dict[pd.Timestamp, tuple[CustomerModel, pd.DataFrame]],
) -> pd.DataFrame:
    """``model``'s inputs as of ``day``: built once per day and reused by the models that share them
    (same categories, no attribute encoder; as batch scoring does), each adding its own BG/NBD columns."""
    if day in built and shares_features(model, built[day][0]):
        return model.add_btyd(without_columns(built[day][1], BTYD_FEATURES))
    frame = model.features(dataset, day)
    built.setdefault(day, (model, frame))
    return frame


def _row(kind: str, name: str, value: float, threshold: float) -> dict[str, Any]:
    return {"kind": kind, "name": name, "psi": round(value, 4), "threshold": threshold, "drifted": value > threshold}


def summary(drifts: list[FamilyDrift]) -> dict[str, Any]:
    """The drift section of a refresh's summary.json: per family the reasons, and the families to retrain."""
    return {
        "retrain_recommended": [d.family for d in drifts if d.reasons],
        "families": {
            d.family: {
                "version": d.version,
                "reference_cutoff": d.reference_cutoff,
                "age_days": d.age_days,
                "reasons": d.reasons,
                "psi": {f"{r['kind']}:{r['name']}": r["psi"] for r in d.rows},
                "thresholds": {f"{r['kind']}:{r['name']}": r["threshold"] for r in d.rows},
            }
            for d in drifts
        },
    }


def lines(section: dict[str, Any]) -> list[str]:
    """What make refresh prints about drift."""
    if not section["families"]:
        return ["drift: no customer champion to check"]
    out = []
    for family, facts in section["families"].items():
        if facts["reasons"]:
            out.append(f"retrain recommended: {family} v{facts['version']}: {'; '.join(facts['reasons'])}")
        else:
            worst = max(facts["psi"].items(), key=lambda kv: kv[1], default=("-", 0.0))
            out.append(f"drift: {family} v{facts['version']} stable (largest PSI {worst[1]:.2f}, {worst[0]})")
    return out
