"""When training must refuse, with a message that says what is missing and how to go on.

- too few positive or negative examples for a classifier;
- less history before the test cut-off than ``history_horizons`` horizons;
- a single column that predicts the label almost perfectly by itself: it almost always leaks the
  outcome (X Education's ``Tags``, filled in by the sales team after contact).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.config import Guards


class TrainingRefusedError(RuntimeError):
    """The data cannot support the model; the message names what is missing."""


class ShortHistoryError(TrainingRefusedError):
    """Too little history for the horizon: a shorter horizon may fit (``make train`` tries them)."""


def check_class_support(labels: pd.Series, guards: Guards, what: str) -> None:
    values = pd.to_numeric(labels, errors="coerce").dropna()
    positives, negatives = int((values == 1).sum()), int((values == 0).sum())
    if positives < guards.min_positives or negatives < guards.min_negatives:
        raise TrainingRefusedError(
            f"{what}: {positives:,} positive and {negatives:,} negative examples; at least "
            f"{guards.min_positives} and {guards.min_negatives} are needed. Use more data, a longer horizon, "
            "or lower guards.min_positives / guards.min_negatives in the model config"
        )


def check_history(first_day: pd.Timestamp, test_cutoff: pd.Timestamp, horizon_days: int, guards: Guards) -> None:
    needed = pd.Timedelta(days=guards.history_horizons * horizon_days)
    have = pd.Timestamp(test_cutoff) - pd.Timestamp(first_day)
    if have < needed:
        raise ShortHistoryError(
            f"{have.days} days of history before the test cut-off {pd.Timestamp(test_cutoff):%Y-%m-%d}, but "
            f"{guards.history_horizons:g} x {horizon_days} = {needed.days} days are needed; use a shorter "
            "horizon_days or more history"
        )


def _column_score(values: pd.Series, y: np.ndarray, folds: np.ndarray) -> np.ndarray | None:
    """A number per row that ranks rows the way the column alone could: the value itself, or for
    text the out-of-fold conversion rate of its level (in-sample rates would make any id look
    perfect). Missing values count as one more level / value. None for a constant column."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() == values.notna().sum() and pd.api.types.is_numeric_dtype(numbers):
        filled = numbers.to_numpy(dtype=float)
        if np.all(np.isnan(filled)) or np.nanmin(filled) == np.nanmax(filled):
            return None
        return np.where(np.isnan(filled), np.nanmin(filled) - 1.0, filled)
    levels = values.astype("string").fillna("(missing)").to_numpy(dtype=object)
    if len(set(levels)) < 2:
        return None
    score = np.empty(len(y))
    for fold in np.unique(folds):
        fit, held = folds != fold, folds == fold
        rates = pd.Series(y[fit]).groupby(levels[fit]).mean()
        score[held] = pd.Series(levels[held]).map(rates).fillna(y[fit].mean()).to_numpy()
    return score


def single_column_auc(frame: pd.DataFrame, labels: pd.Series, *, seed: int = 0, folds: int = 5) -> pd.Series:
    """ROC AUC of each column on its own, folded to >= 0.5 (a column that ranks backwards leaks too)."""
    from sklearn.metrics import roc_auc_score

    y_all = pd.to_numeric(labels, errors="coerce").to_numpy(dtype=float)
    known = ~np.isnan(y_all)
    y = y_all[known]
    assignment = np.random.default_rng(seed).permutation(len(y)) % folds  # balanced folds
    scores = {}
    for column in frame.columns:
        score = _column_score(frame[column].reset_index(drop=True)[known], y, assignment)
        auc = 0.5 if score is None else float(roc_auc_score(y, score))
        scores[column] = max(auc, 1.0 - auc)
    return pd.Series(scores, dtype=float).sort_values(ascending=False)


def check_leakage(attributes: pd.DataFrame, labels: pd.Series, guards: Guards, *, seed: int = 0) -> pd.Series:
    """Stop when a single attribute column (not in ``guards.allow_columns``) ranks the label better
    than ``guards.leakage_auc`` on its own; returns every column's AUC for logging otherwise.

    Run it on the attributes as the file has them (before one-hot encoding): a text column leaks as
    a whole even when none of its levels does alone.
    """
    auc = single_column_auc(attributes, labels, seed=seed)
    allowed = set(guards.allow_columns)
    leaking = [(column, value) for column, value in auc.items() if value > guards.leakage_auc and column not in allowed]
    if leaking:
        listed = ", ".join(f"'{column}' (AUC {value:.3f})" for column, value in leaking[:5])
        raise TrainingRefusedError(
            f"column(s) predict the label almost perfectly on their own, which usually means they are "
            f"filled in after the outcome: {listed}. Exclude them in the dataset config, or list them "
            f"under guards.allow_columns in the model config if they are known before the outcome"
        )
    return auc
