"""Macro segments: few, stable groups of customers with different needs, found from behaviour.

Behaviour as of a cut-off, per customer with purchases (:class:`Space`): the category mix as centred
log-ratios of the spend shares (compositional data; Aitchison 1986), log order value, log order count,
log mean days between orders (rhythm; a one-off buyer's days since the purchase), log tenure, the Q4
share of the last year's spend where a year of history exists (seasonality), and the encoded
attributes (country, channel) where the dataset has them. Numeric columns are standardised; the
attributes' 0/1 columns are kept as they are, so one attribute cannot outweigh the behaviour.

Candidates, all on the same customers:

- ``rfm_grid`` (baseline): order count and order value, each split at its median: four segments;
- ``kmeans``: k-means, the number of segments among ``k_min..k_max`` by silhouette among the stable k;
- ``gaussian_mixture``: a diagonal Gaussian mixture, the number of segments by BIC.

Stability is the mean adjusted Rand index between the fit on all customers and fits on bootstrap
samples (each assigning every customer; Hennig 2007's resampling scheme with ARI as the
similarity). Choice, on the validation cut-off (one horizon before the test cut-off, never the test
window): among the candidates whose stability reaches ``min_stability`` and whose smallest segment
holds at least ``min_share`` of the customers, the best silhouette; ties go to the baseline, which
then ships. The winner is refitted on the test cut-off's customers, and the report shows silhouette,
stability and a Kruskal-Wallis test of next-horizon spend across the segments on the test window
(the segments should differ in what they go on to spend).

Each segment is named from its most distinguishing features ("christmas buyers, large baskets") with
a profile table. The model is registered per dataset like the others, so the API and batch scoring
assign a customer the same segment with the same version; a customer without purchases before the
as-of date is in :data:`NO_PURCHASES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.io import Dataset
from features.pipeline import FeatureSet, build_customer_features, build_customer_labels, monthly_cutoffs
from features.validate import DataError
from training.candidates import Choice, choose
from training.columns import Columns
from training.common import (
    PREDICT_PARAMS,
    CustomerModel,
    Trained,
    contract_example,
    one_blas_thread,
    params_for_logging,
)
from training.config import MacroSettings, ModelConfig
from training.evaluation import Report
from training.families import Family, registered_name
from training.guards import ShortHistoryError, TrainingRefusedError

NAME = "macro_segment"
BASELINES = ("rfm_grid",)
METHODS = ("kmeans", "gaussian_mixture")
CANDIDATES = (*BASELINES, *METHODS)  # simplest first: a tie goes to the baseline
NO_PURCHASES = "no purchases yet"
PSEUDO_SHARE = 0.02  # added to every share before the log-ratio, so that a share of 0 is finite
Q4_MONTHS = (10, 11, 12)
NUMERIC = ("log_order_value", "log_orders", "log_days_between_orders", "log_tenure_days")
# The feature table's columns behind NUMERIC (Space.raw reads them; drift compares them).
READS = (
    "avg_order_value",
    "order_count",
    "mean_days_between_orders",
    "days_since_last_order",
    "days_since_first_order",
)
# How a standardised feature reads in a segment's name: (above average, below average); None: unnamed.
WORDS: dict[str, tuple[str | None, str | None]] = {
    "log_order_value": ("large baskets", "small baskets"),
    "log_orders": ("frequent buyers", "one-off buyers"),
    "log_days_between_orders": ("long gaps between orders", "short gaps between orders"),
    "log_tenure_days": ("long-standing", "recent joiners"),
    "q4_share": ("Q4 buyers", None),
}


def q4_share(dataset: Dataset, ids: Sequence[str], as_of: pd.Timestamp) -> np.ndarray:
    """Per customer, the share of the last 365 days' purchase spend that fell in October-December."""
    assert dataset.transactions is not None
    tx = dataset.transactions.frame
    start = as_of - pd.Timedelta(days=365)
    stamps = tx["timestamp"]
    year = tx.loc[
        ((stamps >= start) & (stamps < as_of) & (tx["amount"] > 0)).to_numpy(), ["customer_id", "timestamp", "amount"]
    ]
    in_q4 = year["timestamp"].dt.month.isin(Q4_MONTHS).to_numpy()
    by_customer = year["customer_id"].astype(str)
    total = year["amount"].groupby(by_customer.to_numpy()).sum()
    q4 = year["amount"].where(in_q4, 0.0).groupby(by_customer.to_numpy()).sum()
    share = (q4 / total.where(total > 0)).reindex(pd.Index([str(i) for i in ids]))
    return share.fillna(0.0).to_numpy(dtype=float)


@dataclass
class Space:
    """How a customer feature table becomes the clustering space, fixed at training."""

    categories: list[str]  # category share columns (``category_share_<slug>``)
    attributes: list[str]  # encoded attribute columns (``attr_...``), kept 0/1
    seasonal: bool  # whether the Q4 share is a column (a year of history before the fit cut-off)
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))

    @property
    def names(self) -> list[str]:
        clr = [f"clr_{c.removeprefix('category_share_')}" for c in self.categories]
        if self.categories:
            clr.append("clr_rest")
        return [*clr, *NUMERIC, *(["q4_share"] if self.seasonal else []), *self.attributes]

    def raw(self, features: Columns, q4: np.ndarray | None) -> np.ndarray:
        """The unscaled columns of :attr:`names`, one row per customer of ``features``."""

        def column(name: str) -> np.ndarray:
            return np.asarray(features[name], dtype=float)

        parts: list[np.ndarray] = []
        if self.categories:
            shares = np.column_stack([np.nan_to_num(column(c), nan=0.0) for c in self.categories])
            rest = np.clip(1.0 - shares.sum(axis=1, keepdims=True), 0.0, 1.0)
            mix = np.clip(np.hstack([shares, rest]), 0.0, 1.0) + PSEUDO_SHARE
            logs = np.log(mix / mix.sum(axis=1, keepdims=True))
            parts.append(logs - logs.mean(axis=1, keepdims=True))
        # the feature table's columns read here are READS (what drift compares, MacroSegmentModel.input_columns)
        orders = np.maximum(np.nan_to_num(column("order_count"), nan=0.0), 1.0)
        tenure = np.maximum(np.nan_to_num(column("days_since_first_order"), nan=0.0), 0.0)
        gaps = column("mean_days_between_orders")
        gaps = np.where(np.isnan(gaps), np.maximum(np.nan_to_num(column("days_since_last_order"), nan=0.0), 0.0), gaps)
        value = np.maximum(np.nan_to_num(column("avg_order_value"), nan=0.0), 0.0)
        parts.append(np.column_stack([np.log1p(value), np.log1p(orders), np.log1p(gaps), np.log1p(tenure)]))
        if self.seasonal:
            parts.append(np.asarray(q4, dtype=float).reshape(-1, 1))
        if self.attributes:
            parts.append(np.column_stack([np.nan_to_num(column(c), nan=0.0) for c in self.attributes]))
        return np.hstack(parts)

    def fit(self, raw: np.ndarray) -> Space:
        scaled = len(self.names) - len(self.attributes)
        mean, scale = raw.mean(axis=0), raw.std(axis=0)
        mean[scaled:], scale[scaled:] = 0.0, 1.0  # attributes stay 0/1
        self.mean, self.scale = mean, np.where(scale > 0, scale, 1.0)
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.mean) / self.scale


# ----------------------------------------------------------------------------------------------
# Candidates: fit on a matrix, assign any matrix


class GridSegments:
    """The baseline: order count and order value above or below their medians on the fit data."""

    def __init__(self, columns: list[str]) -> None:
        self.orders, self.value = columns.index("log_orders"), columns.index("log_order_value")
        self.cuts = (0.0, 0.0)

    def fit(self, x: np.ndarray) -> GridSegments:
        self.cuts = (float(np.median(x[:, self.orders])), float(np.median(x[:, self.value])))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 2 * (x[:, self.orders] > self.cuts[0]).astype(int) + (x[:, self.value] > self.cuts[1]).astype(int)


def make_fitter(name: str, k: int, seed: int, columns: list[str]) -> Callable[[np.ndarray], Any]:
    """A function fitting candidate ``name`` with ``k`` segments on a matrix; returns the fitted model."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    if name == "rfm_grid":
        return lambda x: GridSegments(columns).fit(x)
    if name == "kmeans":
        return lambda x: KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    if name == "gaussian_mixture":
        return lambda x: GaussianMixture(k, covariance_type="diag", n_init=2, random_state=seed).fit(x)
    raise ValueError(f"unknown macro segment candidate '{name}': use one of {', '.join(CANDIDATES)}")


def silhouette(x: np.ndarray, labels: np.ndarray, settings: MacroSettings, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return -1.0
    sample = min(settings.silhouette_sample, len(x))
    return float(silhouette_score(x, labels, sample_size=sample, random_state=seed))


def stability(
    x: np.ndarray,
    labels: np.ndarray,
    fitter_for_seed: Callable[[int], Callable[[np.ndarray], Any]],
    settings: MacroSettings,
    seed: int,
) -> float:
    """Mean adjusted Rand index between ``labels`` and the assignments of fits on bootstrap samples."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    scores = []
    for b in range(settings.bootstrap):
        rows = rng.integers(0, len(x), len(x))
        model = fitter_for_seed(seed + 1 + b)(x[rows])
        scores.append(adjusted_rand_score(labels, model.predict(x)))
    return float(np.mean(scores))


@dataclass
class Fit:
    """One candidate with its number of segments, fitted on one cut-off's customers, and its figures."""

    name: str
    k: int
    model: Any
    labels: np.ndarray
    metrics: dict[str, float]


def fit_candidate(name: str, k: int, x: np.ndarray, columns: list[str], settings: MacroSettings, seed: int) -> Fit:
    model = make_fitter(name, k, seed, columns)(x)
    labels = np.asarray(model.predict(x))
    sizes = np.bincount(labels, minlength=k)
    metrics = {
        "silhouette": silhouette(x, labels, settings, seed),
        "stability_ari": stability(x, labels, lambda s: make_fitter(name, k, s, columns), settings, seed),
        "segments": float(k),
        "smallest_share": float(sizes.min() / len(labels)),
    }
    if name == "gaussian_mixture":
        metrics["bic"] = float(model.bic(x))
    return Fit(name, k, model, labels, metrics)


def usable(fit: Fit, settings: MacroSettings) -> bool:
    return (
        fit.metrics["stability_ari"] >= settings.min_stability and fit.metrics["smallest_share"] >= settings.min_share
    )


def best_of(name: str, x: np.ndarray, columns: list[str], settings: MacroSettings, seed: int) -> tuple[Fit, str]:
    """The candidate with its number of segments chosen on ``x`` (the validation cut-off), and why."""
    if name == "rfm_grid":
        return fit_candidate(name, 4, x, columns, settings, seed), "k=4 by construction"
    ks = range(settings.k_min, settings.k_max + 1)
    fits = [fit_candidate(name, k, x, columns, settings, seed) for k in ks]
    if name == "gaussian_mixture":
        best = min(fits, key=lambda f: f.metrics["bic"])
        return best, f"k={best.k} by BIC ({best.metrics['bic']:.0f})"
    stable = [f for f in fits if usable(f, settings)] or fits
    best = max(stable, key=lambda f: f.metrics["silhouette"])
    figures = ", ".join(f"k={f.k}: {f.metrics['silhouette']:.3f}/{f.metrics['stability_ari']:.2f}" for f in fits)
    return best, f"k={best.k} by silhouette among the stable k (silhouette/ARI {figures})"


def report_of(fit: Fit, extra: dict[str, float] | None = None) -> Report:
    return Report(kind="segmentation", primary_metric="silhouette", metrics={**fit.metrics, **(extra or {})})


# ----------------------------------------------------------------------------------------------
# Names and profiles


def _words(column: str, above: bool) -> str | None:
    if column.startswith("clr_"):
        category = column.removeprefix("clr_")
        return f"{category.replace('_', ' ')} buyers" if above and category not in ("rest", "other") else None
    if column.startswith("attr_"):
        level = column.split("__", 1)[-1]
        return level.replace("_", " ").title() if above and level not in ("infrequent", "missing", "blank") else None
    up, down = WORDS.get(column, (None, None))
    return up if above else down


def segment_names(x: np.ndarray, labels: np.ndarray, columns: list[str], k: int, threshold: float = 0.35) -> list[str]:
    """A name per segment from its most distinguishing columns: the segment's mean of each column in
    standard deviations of all customers, the largest deviation first, in words (:data:`WORDS`); two
    segments that would read the same get longer names, then numbers."""
    spread = x.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    ranked: list[list[str]] = []
    for s in range(k):
        z = (x[labels == s].mean(axis=0) - x.mean(axis=0)) / spread if (labels == s).any() else np.zeros(len(columns))
        words = [(abs(z[i]), _words(c, z[i] > 0)) for i, c in enumerate(columns) if abs(z[i]) >= threshold]
        ranked.append([w for _, w in sorted(words, key=lambda t: -t[0]) if w] or ["mainstream"])
    names = [", ".join(words[:2]) for words in ranked]
    for take in range(3, max(len(w) for w in ranked) + 1):  # longer names where two read the same
        repeated = {n for n in names if names.count(n) > 1}
        names = [", ".join(w[:take]) if n in repeated else n for n, w in zip(names, ranked, strict=True)]
    return [n if names.count(n) == 1 else f"{n} ({s + 1})" for s, n in enumerate(names)]


def profile(
    features: pd.DataFrame, labels: np.ndarray, names: list[str], future_spend: np.ndarray | None
) -> pd.DataFrame:
    """Per segment: size, share of customers and of past spend, order value and count, the leading
    category, and where given the mean spend in the next horizon; the largest share of spend first."""
    frame = pd.DataFrame(
        {
            "macro_segment": np.asarray(names, dtype=object)[labels],
            "total_spend": features["total_spend"].to_numpy(dtype=float),
            "avg_order_value": features["avg_order_value"].to_numpy(dtype=float),
            "order_count": features["order_count"].to_numpy(dtype=float),
        }
    )
    shares = [c for c in features.columns if c.startswith("category_share_")]
    if future_spend is not None:
        frame["next_horizon_spend"] = future_spend
    grouped = frame.groupby("macro_segment", sort=False)
    table = pd.DataFrame(
        {
            "customers": grouped.size(),
            "share_of_customers": grouped.size() / len(frame),
            "share_of_spend": grouped["total_spend"].sum() / max(frame["total_spend"].sum(), 1e-12),
            "mean_order_value": grouped["avg_order_value"].mean(),
            "mean_orders": grouped["order_count"].mean(),
        }
    )
    if future_spend is not None:
        table["mean_next_horizon_spend"] = grouped["next_horizon_spend"].mean()
    if shares:
        mix = features[shares].groupby(frame["macro_segment"].to_numpy(), sort=False).mean()
        table["leading_category"] = mix.idxmax(axis=1).str.removeprefix("category_share_")
    return table.sort_values("share_of_spend", ascending=False).rename_axis("macro_segment").reset_index()


# ----------------------------------------------------------------------------------------------
# The logged model


class MacroSegmentModel(CustomerModel):
    """Assigns each customer the macro segment of the fitted candidate: transactions in, one row per
    customer out (``macro_segment``, ``macro_segment_id``; -1 and :data:`NO_PURCHASES` without purchases)."""

    def __init__(
        self, features_of: FeatureSet, dataset: Dataset, space: Space, fit: Fit, names: list[str], horizon_days: int
    ) -> None:
        super().__init__(
            dataset.config, features_of.categories, features_of.encoder, space.names, horizon_days=horizon_days
        )
        self.space = space
        self.candidate = fit.name
        self.clusterer = fit.model
        self.names = names

    @property
    def own_features(self) -> bool:  # type: ignore[override]
        return self.space.seasonal

    def features(self, dataset: Dataset, as_of: pd.Timestamp | str) -> pd.DataFrame:
        frame = super().features(dataset, as_of)
        if self.space.seasonal:
            frame = frame.assign(
                q4_share=q4_share(dataset, frame["customer_id"].astype(str).tolist(), pd.Timestamp(as_of).normalize())
            )
        return frame

    @property
    def input_columns(self) -> list[str]:
        """The feature table's columns the space is computed from (what drift compares)."""
        seasonal = ["q4_share"] if self.space.seasonal else []
        return [*self.space.categories, *READS, *seasonal, *self.space.attributes]

    def labels(self, features: Columns) -> np.ndarray:
        """The segment number of each row; -1 for a customer without purchase spend."""
        q4 = np.asarray(features["q4_share"], dtype=float) if self.space.seasonal else None
        x = self.space.transform(self.space.raw(features, q4))
        buyer = (np.nan_to_num(np.asarray(features["order_count"], dtype=float)) > 0) & (
            np.nan_to_num(np.asarray(features["total_spend"], dtype=float)) > 0
        )
        labels = np.full(len(x), -1, dtype=np.int64)
        if buyer.any():
            labels[buyer] = np.asarray(self.clusterer.predict(x[buyer]), dtype=np.int64)
        return labels

    def score_columns(self, features: pd.DataFrame | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = self.labels(features)
        names = np.asarray([*self.names, NO_PURCHASES], dtype=object)  # -1 reads the last
        return {"macro_segment": names[labels], "macro_segment_id": labels}


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class Cut:
    """The customers with purchases as of one cut-off, in the clustering space."""

    cutoff: pd.Timestamp
    features: pd.DataFrame
    x: np.ndarray
    space: Space


def cutoffs(dataset: Dataset, config: ModelConfig) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(validation, test) cut-offs: the test cut-off of the other families, and one horizon before it."""
    assert dataset.transactions is not None
    try:
        test = (
            pd.Timestamp(config.test_cutoff)
            if config.test_cutoff
            else monthly_cutoffs(dataset, config.horizon_days)[-1]
        )
    except DataError as exc:
        raise ShortHistoryError(str(exc)) from exc
    before = test - pd.Timedelta(days=config.horizon_days)
    validation = (
        pd.Timestamp(config.validation_cutoff) if config.validation_cutoff else before.to_period("M").to_timestamp()
    )
    first = dataset.transactions.frame["timestamp"].min().normalize()
    if validation <= first + pd.Timedelta(days=30):
        raise ShortHistoryError(
            f"dataset '{dataset.config.name}': the validation cut-off {validation:%Y-%m-%d} leaves less than 30 days "
            f"of history after {first:%Y-%m-%d}; macro segments need behaviour to group (more history or a "
            "shorter horizon_days)"
        )
    return validation, test


def cut_at(
    dataset: Dataset, cutoff: pd.Timestamp, reference: FeatureSet, template: Space, settings: MacroSettings, seed: int
) -> Cut:
    """The buyers as of ``cutoff`` in a space fitted on them (at most ``max_fit_customers`` rows sampled)."""
    frame = build_customer_features(dataset, cutoff, categories=reference.categories, encoder=reference.encoder).frame
    frame = frame.loc[(frame["order_count"] > 0).to_numpy() & (frame["total_spend"] > 0).to_numpy()].reset_index(
        drop=True
    )
    if len(frame) > settings.max_fit_customers:
        rows = np.sort(np.random.default_rng(seed).choice(len(frame), settings.max_fit_customers, replace=False))
        frame = frame.iloc[rows].reset_index(drop=True)
    if len(frame) < 20 * settings.k_max:
        raise TrainingRefusedError(
            f"dataset '{dataset.config.name}': {len(frame)} customers with purchases before {cutoff:%Y-%m-%d}; "
            f"macro segments need at least {20 * settings.k_max} (20 per segment at k_max {settings.k_max})"
        )
    if template.seasonal:
        frame["q4_share"] = q4_share(dataset, frame["customer_id"].astype(str).tolist(), cutoff)
    space = Space(template.categories, template.attributes, template.seasonal)
    raw = space.raw(frame, frame["q4_share"].to_numpy() if template.seasonal else None)
    return Cut(cutoff, frame, space.fit(raw).transform(raw), space)


def template_space(dataset: Dataset, reference: FeatureSet, validation: pd.Timestamp, warnings: list[str]) -> Space:
    """Which columns the space has: the category shares, the 0/1 attributes, and the Q4 share when the
    validation cut-off has a year of history before it."""
    assert dataset.transactions is not None
    frame = reference.frame
    categories = [c for c in frame.columns if c.startswith("category_share_")]
    binary = [c for c in frame.columns if c.startswith("attr_") and frame[c].dropna().isin([0, 1]).all()]
    left_out = [c for c in frame.columns if c.startswith("attr_") and c not in binary]
    if left_out:
        warnings.append(f"numeric attributes left out of the macro segments (only 0/1 columns are used): {left_out}")
    history = (validation - dataset.transactions.frame["timestamp"].min().normalize()).days
    if history < 365:
        warnings.append(
            f"seasonality (Q4 share of spend) left out: {history} days of history before the validation cut-off "
            f"{validation:%Y-%m-%d}, a full year is needed"
        )
    return Space(categories, binary, history >= 365)


def kruskal(future_spend: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Kruskal-Wallis H test of next-horizon spend across the segments (do they go on to spend differently?)."""
    from scipy.stats import kruskal as kruskal_wallis

    groups = [future_spend[labels == s] for s in np.unique(labels)]
    if len(groups) < 2:
        return {"kruskal_h": 0.0, "kruskal_p": 1.0}
    result = kruskal_wallis(*groups)
    return {"kruskal_h": float(result.statistic), "kruskal_p": float(result.pvalue)}


def choose_on_validation(
    cut: Cut, settings: MacroSettings, seed: int, order: Sequence[str]
) -> tuple[dict[str, Fit], dict[str, str], str, str]:
    """Each candidate's number of segments and figures on the validation cut-off, and the winner: the
    best silhouette among the usable ones (stable, no tiny segment)."""
    fits, reasons = {}, {}
    for name in order:
        fits[name], reasons[name] = best_of(name, cut.x, cut.space.names, settings, seed)
    usable_reports = {n: report_of(f) for n, f in fits.items() if usable(f, settings)}
    if not usable_reports:
        figures = "; ".join(
            f"{n}: ARI {f.metrics['stability_ari']:.3f}, smallest {f.metrics['smallest_share']:.1%}"
            for n, f in fits.items()
        )
        raise TrainingRefusedError(
            f"no segmentation of these customers is stable (mean bootstrap ARI >= {settings.min_stability}) with every "
            f"segment >= {settings.min_share:.0%} of customers ({figures}): the data does not support macro segments"
        )
    winner, reason = choose(usable_reports, order, f"the validation cut-off {cut.cutoff:%Y-%m-%d} (stable candidates)")
    return fits, reasons, winner, reason


@one_blas_thread
def train(dataset: Dataset, config: ModelConfig) -> Trained:
    if dataset.transactions is None:
        raise TrainingRefusedError(f"macro segments need a transaction log; dataset '{dataset.config.name}' has none")
    settings, seed = config.macro or MacroSettings(), config.seed
    warnings: list[str] = []
    order = [c for c in CANDIDATES if config.candidates is None or c in config.candidates or c in BASELINES]
    validation, test = cutoffs(dataset, config)
    try:
        reference = build_customer_features(dataset, test)
        template = template_space(dataset, reference, validation, warnings)
        val_cut = cut_at(dataset, validation, reference, template, settings, seed)
        test_cut = cut_at(dataset, test, reference, template, settings, seed)
        labels = build_customer_labels(
            dataset, test_cut.features["customer_id"], test, config.horizon_days, reference.categories
        )
    except DataError as exc:
        raise TrainingRefusedError(str(exc)) from exc
    fits, reasons, winner, reason = choose_on_validation(val_cut, settings, seed, order)
    future = labels["future_spend"].to_numpy(dtype=float)
    tested = {n: fit_candidate(n, f.k, test_cut.x, test_cut.space.names, settings, seed) for n, f in fits.items()}
    test_reports = {n: report_of(f, kruskal(future, f.labels)) for n, f in tested.items()}
    validation = {n: report_of(f) for n, f in fits.items()}
    choice = Choice(winner, f"{reason}; {winner}: {reasons[winner]}", validation, test_reports, BASELINES)
    best = tested[winner]
    names = segment_names(test_cut.x, best.labels, test_cut.space.names, best.k)
    model = MacroSegmentModel(reference, dataset, test_cut.space, best, names, config.horizon_days)
    return _trained(dataset, config, model, choice, test_reports, (val_cut, test_cut), future, reasons, warnings)


def _trained(
    dataset: Dataset,
    config: ModelConfig,
    model: MacroSegmentModel,
    choice: Choice,
    reports: dict[str, Report],
    cuts: tuple[Cut, Cut],
    future: np.ndarray,
    reasons: dict[str, str],
    warnings: list[str],
) -> Trained:
    validation, cut = cuts
    labels = model.labels(cut.features)
    profiles = profile(cut.features, labels, model.names, future)
    candidates = choice.table().assign(how_k_was_chosen=lambda t: t["candidate"].map(reasons))
    example = contract_example(dataset)
    as_of = (example["timestamp"].max().normalize() + pd.Timedelta(days=1)).strftime("%Y-%m-%d")

    def rescore(champion: Any) -> float:  # the champion's segments, judged in this run's space
        return silhouette(
            cut.x, np.asarray(champion.labels(cut.features)), config.macro or MacroSettings(), config.seed
        )

    return Trained(
        family=NAME,
        registered_name=registered_name(NAME, dataset.config.name),
        model=model,
        report=reports[choice.winner],
        baselines={n: reports[n] for n in BASELINES},
        test_window=(
            f"validation cut-off {validation.cutoff:%Y-%m-%d}, test cut-off {cut.cutoff:%Y-%m-%d} "
            f"(next {config.horizon_days} days' spend)"
        ),
        params={
            **params_for_logging(config),
            "segments": len(model.names),
            "space": ",".join(model.space.names),
            # the cut-off it was fitted on, in the form drift reads its reference from (serving/drift.py)
            "train_cutoffs": f"train cut-offs {cut.cutoff:%Y-%m-%d}..{cut.cutoff:%Y-%m-%d}",
        },
        input_example=example,
        output_example=model.predict(None, example, {"as_of": as_of}),
        predict_params=dict(PREDICT_PARAMS),
        extra_metrics={f"segment_{i}_share": float((labels == i).mean()) for i in range(len(model.names))},
        tables={"macro_segment_profiles": profiles, "macro_segment_candidates": candidates},
        train_rows=len(validation.features),
        test_rows=len(cut.features),
        candidate=choice.winner,
        choice=choice,
        warnings=warnings,
        rescore=rescore,
    )


FAMILY = Family(
    name=NAME,
    help="Macro segments: few stable groups of customers with different needs, found from behaviour and named.",
    label="future_spend",
    primary_metric="silhouette",
    candidates=CANDIDATES,
    baselines=BASELINES,
    outputs=("macro_segment", "macro_segment_id"),
    tables=("transactions",),
    entity="customer",
    train=train,
    needs=("transactions",),
)
