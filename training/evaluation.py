"""One evaluation report for every model family: the same metric names, tables and figures.

Classifiers (churn, propensity, lead score): ROC AUC (primary), PR AUC, Brier score, log loss,
expected calibration error, lift in the top decile and a quality rating. Value regressions (CLV):
normalized Gini (primary), MAE, RMSE, Spearman, top-20% capture, aggregate error and a decile
table. Pure functions: figures are matplotlib ``Figure`` objects made without pyplot's global
state, and logging them is the tracking module's job. Higher is better for both primary metrics.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.quiet import held_warnings

# Quality rating from ROC AUC, in the bands marketing tools commonly show for lead and churn scores.
QUALITY_BANDS = ((0.6, "poor"), (0.7, "fair"), (0.8, "good"), (float("inf"), "excellent"))


@dataclass
class Report:
    """Metrics, tables and figures of one model on one test set."""

    kind: str  # "classifier" or "regression"
    primary_metric: str
    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    quality: str = ""

    @property
    def primary(self) -> float:
        return self.metrics[self.primary_metric]

    def summary_line(self) -> str:
        shown = [self.primary_metric, *(k for k in SUMMARY_METRICS[self.kind] if k != self.primary_metric)]
        text = ", ".join(f"{k} {self.metrics[k]:.4f}" for k in shown if k in self.metrics)
        return f"{text}{f' ({self.quality})' if self.quality else ''}"


SUMMARY_METRICS = {
    "classifier": ("roc_auc", "pr_auc", "brier", "lift_top_decile"),
    "regression": ("gini_normalized", "top20_capture", "aggregate_error", "spearman"),
    "uplift": ("qini_auc", "qini_auc_lo", "qini_auc_hi", "uplift_at_30", "uplift_at_30_lo", "uplift_at_30_hi"),
    "segmentation": ("silhouette", "stability_ari", "segments", "kruskal_h", "kruskal_p"),
}


def _arrays(actual: object, predicted: object) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(actual, dtype=float).ravel()
    p = np.asarray(predicted, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} outcomes but {len(p)} predictions")
    if len(y) == 0:
        raise ValueError("nothing to evaluate: the test set is empty")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("outcomes and predictions must be finite numbers (found NaN or infinity)")
    return y, p


def rank_by_prediction(predicted: np.ndarray) -> np.ndarray:
    """Row order by prediction, highest first; ties keep the input order (a stable sort)."""
    return np.argsort(-predicted, kind="stable")


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Σ_b (n_b / n) |mean outcome_b - mean prediction_b| over equal-width probability bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    observed = np.bincount(which, weights=y, minlength=bins)
    predicted = np.bincount(which, weights=p, minlength=bins)
    used = count > 0
    return float(np.sum(np.abs(observed[used] - predicted[used])) / len(y))


def lift_at(y: np.ndarray, p: np.ndarray, share: float = 0.1) -> float:
    """Positive rate among the top ``share`` by prediction over the overall positive rate."""
    top = rank_by_prediction(p)[: max(1, int(np.ceil(share * len(y))))]
    return float(y[top].mean() / y.mean())


def gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Gini of ``actual`` ordered by ``predicted`` (highest first): area between the gains curve and
    the diagonal, times two."""
    order = rank_by_prediction(predicted)
    gains = np.cumsum(actual[order]) / actual.sum()
    n = len(actual)
    return float(2.0 * (gains.sum() / n - (n + 1) / (2 * n)))


def normalized_gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Gini of the model over the Gini of a perfect ranking (1 = perfect, 0 = random, -1 = reversed)."""
    return gini(actual, predicted) / gini(actual, actual)


def capture_at(actual: np.ndarray, predicted: np.ndarray, share: float = 0.2) -> float:
    """Share of the total actual value held by the top ``share`` of customers by prediction."""
    top = rank_by_prediction(predicted)[: max(1, int(np.ceil(share * len(actual))))]
    return float(actual[top].sum() / actual.sum())


def decile_table(actual: np.ndarray, predicted: np.ndarray, groups: int = 10) -> pd.DataFrame:
    """Predicted against actual per decile of the prediction (decile 1 = highest predicted)."""
    order = rank_by_prediction(predicted)
    decile = np.empty(len(actual), dtype=int)
    decile[order] = np.arange(len(actual)) * groups // len(actual) + 1
    frame = pd.DataFrame({"decile": decile, "predicted": predicted, "actual": actual})
    table = frame.groupby("decile").agg(
        customers=("actual", "size"),
        predicted_mean=("predicted", "mean"),
        actual_mean=("actual", "mean"),
        predicted_sum=("predicted", "sum"),
        actual_sum=("actual", "sum"),
    )
    table["share_of_actual"] = table["actual_sum"] / actual.sum()
    return table.reset_index()


def _gains_figure(actual: np.ndarray, predicted: np.ndarray, ylabel: str) -> Figure:
    order = rank_by_prediction(predicted)
    share_customers = np.arange(1, len(actual) + 1) / len(actual)
    gains = np.cumsum(actual[order]) / actual.sum()
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    axes.plot(np.r_[0, share_customers], np.r_[0, gains], label="model")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    axes.set(xlabel="share of customers, highest score first", ylabel=ylabel, title="Cumulative gains")
    axes.legend(loc="lower right")
    return figure


def _importance_figure(importance: pd.Series, top: int = 20) -> Figure:
    shown = importance.sort_values(ascending=False).head(top)[::-1]
    figure = Figure(figsize=(6, max(2.5, 0.3 * len(shown) + 1)))
    axes = figure.add_subplot()
    axes.barh(shown.index.astype(str), shown.to_numpy())
    axes.set(xlabel="importance", title=f"Feature importance (top {len(shown)})")
    figure.tight_layout()
    return figure


def evaluate_classifier(
    actual: object, probability: object, *, feature_importance: pd.Series | None = None, bins: int = 10
) -> Report:
    """The classifier report; ``actual`` is 0/1, ``probability`` the predicted probability of 1."""
    y, p = _arrays(actual, probability)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("classifier outcomes must be 0 or 1")
    if y.min() == y.max():
        raise ValueError(f"the test set has only one class ({int(y[0])}): ROC AUC is undefined")
    if p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    metrics = _classifier_metrics(y, p, bins)
    quality = next(name for bound, name in QUALITY_BANDS if metrics["roc_auc"] < bound)

    figures = _classifier_curves(y, p, metrics, bins)
    figures["gains.png"] = _gains_figure(y, p, "share of positives")
    if feature_importance is not None and len(feature_importance):
        figures["feature_importance.png"] = _importance_figure(feature_importance)
    tables = {"deciles": decile_table(y, p)}
    return Report("classifier", "roc_auc", metrics, tables, figures, quality)


def _classifier_metrics(y: np.ndarray, p: np.ndarray, bins: int) -> dict[str, float]:
    """The classifier's metrics, ``roc_auc`` (the primary one) first."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "ece": expected_calibration_error(y, p, bins),
        "lift_top_decile": lift_at(y, p, 0.1),
        "positive_rate": float(y.mean()),
        "test_rows": float(len(y)),
    }


def _classifier_curves(y: np.ndarray, p: np.ndarray, metrics: dict[str, float], bins: int) -> dict[str, Figure]:
    """The ROC, precision-recall and calibration curves, each labelled with its metric."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    figures: dict[str, Figure] = {}
    fpr, tpr, _ = roc_curve(y, p)
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    axes.plot(fpr, tpr, label=f"AUC {metrics['roc_auc']:.3f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    axes.legend(loc="lower right")
    figures["roc.png"] = figure

    precision, recall, _ = precision_recall_curve(y, p)
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    axes.plot(recall, precision, label=f"PR AUC {metrics['pr_auc']:.3f}")
    axes.axhline(y.mean(), linestyle="--", color="grey", label="base rate")
    axes.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    axes.legend(loc="upper right")
    figures["pr.png"] = figure

    observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    axes.plot(predicted, observed, marker="o", label=f"ECE {metrics['ece']:.3f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.set(xlabel="predicted probability", ylabel="observed rate", title="Calibration")
    axes.legend(loc="upper left")
    figures["calibration.png"] = figure
    return figures


def evaluate_regression(actual: object, predicted: object, *, feature_importance: pd.Series | None = None) -> Report:
    """The value report (CLV): ``actual`` and ``predicted`` spend per customer over the same window."""
    from scipy.stats import spearmanr

    y, p = _arrays(actual, predicted)
    if y.sum() <= 0:
        raise ValueError("actual values sum to zero or less: Gini and capture are undefined")
    metrics = {
        "gini_normalized": normalized_gini(y, p),
        "top20_capture": capture_at(y, p, 0.2),
        "aggregate_error": float(p.sum() / y.sum() - 1.0),
        "mae": float(np.mean(np.abs(p - y))),
        "rmse": float(np.sqrt(np.mean((p - y) ** 2))),
        "spearman": float(spearmanr(y, p).statistic),
        "test_rows": float(len(y)),
    }
    table = decile_table(y, p)
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    width = 0.4
    axes.bar(table["decile"] - width / 2, table["predicted_mean"], width, label="predicted")
    axes.bar(table["decile"] + width / 2, table["actual_mean"], width, label="actual")
    axes.set(xlabel="decile of predicted value (1 = highest)", ylabel="mean value", title="Predicted vs actual")
    axes.set_xticks(table["decile"])
    axes.legend()
    figures = {"deciles.png": figure, "gains.png": _gains_figure(y, p, "share of actual value")}
    if feature_importance is not None and len(feature_importance):
        figures["feature_importance.png"] = _importance_figure(feature_importance)
    return Report("regression", "gini_normalized", metrics, {"deciles": table}, figures)


UPLIFT_SHARES = (0.1, 0.3, 0.5)


def _is_binary(y: np.ndarray) -> bool:
    return bool(np.isin(y, (0.0, 1.0)).all())


def descending(score: np.ndarray) -> np.ndarray:
    """Row positions by score, highest first (ties: later rows first), as scikit-uplift ranks them."""
    return np.argsort(score, kind="mergesort")[::-1]


def qini_points(
    y: np.ndarray, score: np.ndarray, treatment: np.ndarray, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Radcliffe's (2007) Qini curve for any outcome: at each distinct score, highest first, the
    treated outcome sum minus the control sum scaled by n_treated / n_control. For 0/1 outcomes it
    equals scikit-uplift's ``qini_curve`` (a test holds them equal); scikit-uplift accepts only 0/1
    outcomes, so spend needs this. ``order``: :func:`descending` of ``score`` when the caller has it."""
    order = descending(score) if order is None else order
    y, t, s = y[order], treatment[order], score[order]
    cut = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    n_t = np.cumsum(t)[cut]
    n_c = cut + 1 - n_t
    y_t = np.cumsum(y * t)[cut]
    y_c = np.cumsum(y * (1 - t))[cut]
    ratio = np.divide(n_t, n_c, out=np.zeros(len(cut)), where=n_c != 0)
    return np.r_[0, cut + 1], np.r_[0.0, y_t - y_c * ratio]


@contextmanager
def sklift_quietly() -> Iterator[None]:
    """scikit-uplift 0.5.1 calls scikit-learn's ``stable_cumsum``, deprecated in 1.8 (removed in 1.10):
    one FutureWarning per call would bury the run's own messages. The Qini tests fail loudly the day
    it is gone."""
    with held_warnings():
        warnings.filterwarnings("ignore", message=".*stable_cumsum", category=FutureWarning)
        yield


def qini_auc(y: np.ndarray, score: np.ndarray, treatment: np.ndarray) -> float:
    """The Qini coefficient: area between the Qini curve and the random line over that of the
    perfect ranking (treated responders first, control responders last; negative effects allowed).
    0/1 outcomes: scikit-uplift's ``qini_auc_score``; other outcomes: :func:`qini_auc_numpy`."""
    if _is_binary(y):
        from sklift.metrics import qini_auc_score

        with sklift_quietly():
            return float(qini_auc_score(y, score, treatment))
    return qini_auc_numpy(y, score, treatment)


def qini_auc_numpy(y: np.ndarray, score: np.ndarray, treatment: np.ndarray, order: np.ndarray | None = None) -> float:
    """scikit-uplift's Qini coefficient formula on :func:`qini_points`, for any outcome (a test holds
    it equal to the library's on 0/1 outcomes)."""
    x_model, q_model = qini_points(y, score, treatment, order)
    x_best, q_best = qini_points(y, y * treatment - y * (1 - treatment), treatment)
    random = x_best[-1] * q_best[-1] / 2.0
    best = np.trapezoid(q_best, x_best) - random
    return float((np.trapezoid(q_model, x_model) - random) / best) if best != 0 else 0.0


def uplift_at(y: np.ndarray, score: np.ndarray, treatment: np.ndarray, share: float) -> float:
    """Mean outcome of the treated minus that of the controls among the top ``share`` of all
    customers by score (scikit-uplift's ``uplift_at_k``, strategy 'overall', for 0/1 outcomes)."""
    if _is_binary(y):
        from sklift.metrics import uplift_at_k

        with sklift_quietly():
            return float(uplift_at_k(y, score, treatment, strategy="overall", k=share))
    return uplift_at_numpy(y, score, treatment, share)


def uplift_at_numpy(
    y: np.ndarray, score: np.ndarray, treatment: np.ndarray, share: float, order: np.ndarray | None = None
) -> float:
    """scikit-uplift's ``uplift_at_k`` (strategy 'overall') for any outcome."""
    top = (descending(score) if order is None else order)[: int(len(y) * share)]
    treated = treatment[top] == 1
    if treated.all() or not treated.any():
        return float("nan")
    return float(y[top][treated].mean() - y[top][~treated].mean())


def uplift_metrics(
    y: np.ndarray, score: np.ndarray, treatment: np.ndarray, *, library: bool = True
) -> dict[str, float]:
    """Qini AUC and uplift at 10/30/50%; ``library=False`` computes them with the numpy formulas
    (equal to scikit-uplift's, about 3x faster: the bootstrap's resamples use them), ranking the rows
    once for all four."""
    qini: Callable[[np.ndarray, np.ndarray, np.ndarray], float] = qini_auc
    at: Callable[[np.ndarray, np.ndarray, np.ndarray, float], float] = uplift_at
    if not library:
        order = descending(score)
        qini, at = partial(qini_auc_numpy, order=order), partial(uplift_at_numpy, order=order)
    metrics = {"qini_auc": qini(y, score, treatment)}
    for share in UPLIFT_SHARES:
        metrics[f"uplift_at_{round(share * 100)}"] = at(y, score, treatment, share)
    return metrics


def bootstrap_intervals(
    y: np.ndarray, score: np.ndarray, treatment: np.ndarray, resamples: int, seed: int, level: float = 0.95
) -> dict[str, float]:
    """Percentile bootstrap intervals (Efron & Tibshirani 1993, ch. 13) of the uplift metrics:
    ``<metric>_lo`` and ``<metric>_hi``, resampling customers with replacement within the treated
    and the control group (so each resample keeps the split)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(treatment == 1), np.flatnonzero(treatment == 0)]
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        rows = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        for name, value in uplift_metrics(y[rows], score[rows], treatment[rows], library=False).items():
            draws.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    out = {}
    for name, values in draws.items():
        lo, hi = np.nanpercentile(values, [tail, 100 - tail])
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    return out


def uplift_by_decile(y: np.ndarray, score: np.ndarray, treatment: np.ndarray, groups: int = 10) -> pd.DataFrame:
    """Per decile of the score (1 = highest): customers treated and control, the mean outcome of
    each and their difference, the observed uplift."""
    order = rank_by_prediction(score)
    decile = np.empty(len(y), dtype=int)
    decile[order] = np.arange(len(y)) * groups // len(y) + 1
    frame = pd.DataFrame({"decile": decile, "y": y, "t": treatment})
    rows = []
    for d, part in frame.groupby("decile"):
        treated, control = part.loc[part["t"] == 1, "y"], part.loc[part["t"] == 0, "y"]
        rows.append(
            {
                "decile": int(d),
                "treated": len(treated),
                "control": len(control),
                "outcome_treated": treated.mean(),
                "outcome_control": control.mean(),
                "uplift": treated.mean() - control.mean(),
            }
        )
    return pd.DataFrame(rows)


def _qini_figure(y: np.ndarray, treatment: np.ndarray, scores: dict[str, np.ndarray], outcome: str) -> Figure:
    figure = Figure(figsize=(5.5, 4))
    axes = figure.add_subplot()
    for name, score in scores.items():
        x, q = qini_points(y, score, treatment)
        axes.plot(x / len(y), q, label=f"{name} (Qini AUC {qini_auc(y, score, treatment):.3f})")
    x, q = qini_points(y, np.zeros(len(y)), treatment)
    axes.plot([0, 1], [0, q[-1]], linestyle="--", color="grey", label="random")
    axes.set(
        xlabel="share of customers, highest uplift first",
        ylabel=f"incremental {outcome} (treated - scaled control)",
        title="Qini curve",
    )
    axes.legend(loc="lower right", fontsize=7)
    return figure


def _decile_figure(table: pd.DataFrame, outcome: str) -> Figure:
    figure = Figure(figsize=(5.5, 4))
    axes = figure.add_subplot()
    axes.bar(table["decile"], table["uplift"])
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set(xlabel="decile of predicted uplift (1 = highest)", ylabel=f"observed uplift in {outcome}")
    axes.set_title("Uplift by decile")
    axes.set_xticks(table["decile"])
    return figure


def evaluate_uplift(
    outcome: object,
    score: object,
    treatment: object,
    *,
    label: str = "outcome",
    compare: dict[str, np.ndarray] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    figures: bool = True,
) -> Report:
    """The uplift report of a ranking ``score`` on randomised test rows (``treatment`` 1 = the arm,
    0 = the control): Qini AUC (primary; Radcliffe 2007), uplift at the top 10/30/50% of customers,
    their percentile-bootstrap 95% intervals (``bootstrap`` resamples), the average treatment
    effect, the uplift-by-decile table, and the Qini curve (with ``compare``'s scores, e.g. the
    baselines, on the same axes) and uplift-by-decile figures."""
    y, s = _arrays(outcome, score)
    t = np.asarray(treatment, dtype=float).ravel()
    if len(t) != len(y) or not _is_binary(t) or t.min() == t.max():
        raise ValueError("treatment must be 0/1 for every row, with both treated and control rows")
    metrics = uplift_metrics(y, s, t)
    if bootstrap:
        metrics |= bootstrap_intervals(y, s, t, bootstrap, seed)
    metrics |= {
        "ate": float(y[t == 1].mean() - y[t == 0].mean()),
        "outcome_rate_control": float(y[t == 0].mean()),
        "test_rows": float(len(y)),
        "treated_rows": float(t.sum()),
    }
    deciles = uplift_by_decile(y, s, t)
    drawn: dict[str, Figure] = {}
    if figures:
        drawn["qini_curve.png"] = _qini_figure(y, t, {"model": s, **(compare or {})}, label)
        drawn["uplift_by_decile.png"] = _decile_figure(deciles, label)
    return Report("uplift", "qini_auc", metrics, {"uplift_by_decile": deciles}, drawn)
