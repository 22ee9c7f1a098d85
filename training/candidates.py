"""Candidates: every model a family trains, the baselines among them, and the honest choice of one.

Each classifier family fits the same kinds of candidate on the same rows:

- ``xgboost``: gradient boosting with calibrated probabilities (:func:`training.common.fit_classifier`);
- ``logistic_regression``: a regularised logistic regression on transformed features (log1p of
  skewed non-negative counts and money, missing values imputed, standardised; attributes arrive
  one-hot encoded), its strength chosen by cross-validation on the training rows;
- the baselines themselves: BG/NBD (1 - P(alive), expected purchases) and the RFM logistic regression
  for customers, a plain logistic regression on the one-hot attributes for snapshots and leads;
- ``blend``: the mean of the xgboost and logistic-regression probabilities.

The winner is the candidate with the best primary metric on the **validation** data (a window before
the test window, or cross-validation on the training part): never on the test window, which is only
scored to report. Ties go to the candidate listed first (the simpler). Whatever wins is what ships,
baselines included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from training.columns import feature_matrix
from training.evaluation import Report

# Simplest first: on a tie the simpler candidate wins.
CHURN_BASELINES = ("bgnbd_1_minus_p_alive", "bgnbd_expected_purchases", "rfm_logistic_regression")
PROPENSITY_BASELINES = ("bgnbd_p_alive", "bgnbd_expected_purchases", "rfm_logistic_regression")
MODEL_CANDIDATES = ("logistic_regression", "xgboost", "blend")
SNAPSHOT_BASELINES = ("plain_logistic_regression",)
SNAPSHOT_CANDIDATES = (*SNAPSHOT_BASELINES, *MODEL_CANDIDATES)
CLV_BASELINES = ("last_year_spend", "bgnbd_gamma_gamma")
CLV_CANDIDATES = (*CLV_BASELINES, "glm", "xgboost", "blend")
BASELINE_NAMES = frozenset({*CHURN_BASELINES, *PROPENSITY_BASELINES, *SNAPSHOT_BASELINES, *CLV_BASELINES})
# BG/NBD baselines score one column that the model adds (training.common.CustomerModel.add_btyd), turned
# into a score that rises with the outcome: churn falls with P(alive) and expected purchases E[X],
# P(no purchase) = exp(-E[X]); a purchase rises with them, 1 - exp(-E[X]).
BGNBD_SCORES = {
    "churn": {
        "bgnbd_1_minus_p_alive": ("btyd_p_alive", "one_minus"),
        "bgnbd_expected_purchases": ("btyd_expected_orders", "exp_neg"),
    },
    "propensity": {
        "bgnbd_p_alive": ("btyd_p_alive", "identity"),
        "bgnbd_expected_purchases": ("btyd_expected_orders", "one_minus_exp_neg"),
    },
}
BGNBD_NAMES = frozenset(name for scores in BGNBD_SCORES.values() for name in scores)
# A baseline within this much of the winner on the test window counts as a tie (bootstrap noise of
# ROC AUC on a few thousand rows is ten times larger).
TIE_TOLERANCE = 0.001


def for_ranking(config: Any) -> Any:
    """The config for fitting candidates on validation folds: xgboost without its probability
    calibration. Calibration is a monotone map fitted on out-of-fold predictions (a sigmoid keeps the
    ranking exactly, isotonic up to ties), so ROC AUC is the same without it, at a sixth of the cost
    (one booster instead of five folds and a refit)."""
    return config.model_copy(update={"calibration": "none"})


def candidates_for(kind: str) -> tuple[str, ...]:
    """The candidates of a customer classifier (``churn`` or ``propensity``), simplest first."""
    return (*(CHURN_BASELINES if kind == "churn" else PROPENSITY_BASELINES), *MODEL_CANDIDATES)


class SkewedLog1p(BaseEstimator, TransformerMixin):
    """log1p of the columns that are non-negative and right-skewed on the training rows (counts and
    money), so that a linear model sees orders of magnitude rather than raw amounts."""

    def __init__(self, skew_threshold: float = 1.0) -> None:
        self.skew_threshold = skew_threshold

    def fit(self, x: Any, y: Any = None) -> SkewedLog1p:
        from scipy.stats import skew

        values = np.asarray(x, dtype=float)
        chosen = []
        for j in range(values.shape[1]):
            column = values[:, j][np.isfinite(values[:, j])]
            if len(column) > 2 and column.min() >= 0 and column.max() > 1 and skew(column) > self.skew_threshold:
                chosen.append(j)
        self.columns_ = np.asarray(chosen, dtype=int)
        self.n_features_in_ = values.shape[1]
        return self

    def transform(self, x: Any) -> np.ndarray:
        values = np.array(x, dtype=float, copy=True)
        if len(self.columns_):
            values[:, self.columns_] = np.log1p(np.clip(values[:, self.columns_], 0.0, None))
        return values


class ClipToRange(BaseEstimator, TransformerMixin):
    """Each column clipped to the range it had on the training rows (missing values stay missing)."""

    def fit(self, x: Any, y: Any = None) -> ClipToRange:
        values = np.asarray(x, dtype=float)
        finite = np.where(np.isfinite(values), values, np.nan)
        ranged = ~np.isnan(finite).all(axis=0)  # an all-missing column: no range, no clipping
        self.low_ = np.full(values.shape[1], -np.inf)
        self.high_ = np.full(values.shape[1], np.inf)
        self.low_[ranged] = np.nanmin(finite[:, ranged], axis=0)
        self.high_[ranged] = np.nanmax(finite[:, ranged], axis=0)
        self.n_features_in_ = values.shape[1]
        return self

    def transform(self, x: Any) -> np.ndarray:
        values = np.asarray(x, dtype=float)
        return np.where(np.isnan(values), np.nan, np.clip(values, self.low_, self.high_))


class ColumnScore(BaseEstimator):
    """A baseline that is one model output used as a score: P(alive), 1 - P(alive), exp(-E[X])."""

    def __init__(self, transform: str = "identity") -> None:
        self.transform = transform

    def fit(self, x: Any = None, y: Any = None) -> ColumnScore:
        self.classes_ = np.array([0, 1])
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        value = np.nan_to_num(np.asarray(x, dtype=float)[:, 0], nan=0.0)
        if self.transform == "one_minus":
            return 1.0 - value
        if self.transform == "exp_neg":
            return np.exp(-value)
        if self.transform == "one_minus_exp_neg":
            return 1.0 - np.exp(-value)
        return value

    def predict_proba(self, x: Any) -> np.ndarray:
        p = self.score(np.asarray(x, dtype=float))
        return np.column_stack([1.0 - p, p])


def logistic_regression(seed: int, *, transform: bool = True, folds: int = 3) -> Any:
    """Regularised logistic regression; with ``transform`` on log1p-transformed skewed columns and its
    strength (C) chosen by cross-validated ROC AUC on the training rows only."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    impute = SimpleImputer(strategy="median", keep_empty_features=True)
    if not transform:
        return make_pipeline(impute, StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    # l1_ratios=(0,): the L2 penalty, scikit-learn 1.10's default (None is deprecated since 1.8); the
    # new fitted attributes (C_ a number): nothing here reads the legacy ones. Same fit, no FutureWarnings.
    model = LogisticRegressionCV(
        Cs=[0.01, 0.1, 1.0, 10.0],
        cv=folds,
        scoring="roc_auc",
        max_iter=5000,
        random_state=seed,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    )
    return make_pipeline(SkewedLog1p(), impute, StandardScaler(), model)


@dataclass
class Fitted:
    """One fitted candidate: the feature columns it reads and the estimator (anything with
    ``predict_proba``); a blend averages the probabilities of its parts."""

    name: str
    columns: list[str]
    estimator: Any = None
    parts: list[Fitted] = field(default_factory=list)

    def score(self, features: pd.DataFrame | Mapping[str, np.ndarray]) -> np.ndarray:
        from training.common import positive_probability

        if self.parts:
            return np.mean([part.score(features) for part in self.parts], axis=0)
        values = feature_matrix(features, self.columns)
        if isinstance(self.estimator, ColumnScore):
            return self.estimator.score(values)
        return positive_probability(self.estimator, values)

    @property
    def all_columns(self) -> list[str]:
        if self.parts:
            return sorted({c for part in self.parts for c in part.all_columns})
        return list(self.columns)


@dataclass
class Choice:
    """The winner of a candidate set and every candidate's validation and test figures."""

    winner: str
    reason: str
    validation: dict[str, Report]
    test: dict[str, Report]
    baselines: tuple[str, ...]

    def table(self) -> pd.DataFrame:
        metric = next(iter(self.test.values())).primary_metric
        rows = []
        for name in self.test:
            rows.append(
                {
                    "candidate": name,
                    "baseline": name in self.baselines,
                    f"validation_{metric}": self.validation[name].primary if name in self.validation else np.nan,
                    f"test_{metric}": self.test[name].primary,
                    "winner": name == self.winner,
                }
            )
        return pd.DataFrame(rows)


def choose(
    validation: Mapping[str, Report], order: Sequence[str], where: str, metric: str | None = None
) -> tuple[str, str]:
    """The candidate with the best ``metric`` (default the primary one) on the validation data; ties go
    to the earlier in ``order`` (the simpler). Returns the name and a one-line reason."""
    ranked = [name for name in order if name in validation]
    if not ranked:
        raise ValueError("no candidate was scored on the validation data")
    metric = metric or validation[ranked[0]].primary_metric

    def value(name: str) -> float:
        return float(validation[name].metrics[metric])

    best = ranked[0]
    for name in ranked[1:]:
        if value(name) > value(best):
            best = name
    others = sorted((n for n in ranked if n != best), key=lambda n: -value(n))
    runner = f"; next {others[0]} {value(others[0]):.4f}" if others else ""
    return best, f"best {metric} on {where}: {best} {value(best):.4f}{runner}"


def choose_and_report(
    validation: Mapping[str, Report],
    test: Mapping[str, Report],
    order: Sequence[str],
    baselines: Sequence[str],
    where: str,
    metric: str | None = None,
) -> Choice:
    winner, reason = choose(validation, order, where, metric)
    return Choice(winner, reason, dict(validation), {n: test[n] for n in order if n in test}, tuple(baselines))
