"""The HTML report of ``make score`` and ``make refresh``: one self-contained file rendered from the
Jinja2 template ``serving/templates/report.html.j2``.

The steps here are pure: :func:`build_sections` turns what a run has (scores, test-window gains, macro
segment profiles, the action mix, transitions, drift) into sections of tables and figures whose every
number is already written as text (money in the dataset's currency, probabilities as percentages), and
:func:`render` hands them to the template. The template escapes everything it prints (segment, dataset
and arm names and drift reasons are other people's text); figures are PNG embedded as ``data:`` URLs,
so the file opens offline and its Content-Security-Policy forbids any other source and every script.

A section appears only when the run has what it shows: no uplift champion, no next best action; no
previous refresh, no transitions; no drift measured, no drift section.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

TIERS = ("A", "B", "C", "D")
# Currencies written with their sign before the amount; any other code is written after it.
CURRENCY_SIGNS = {"USD": "$", "GBP": "£", "EUR": "€"}
# The macro segment profile table the macro_segment family gives, one row per macro segment.
MACRO_COLUMNS = (
    "macro_segment",
    "customers",
    "share_of_value",
    "mean_clv",
    "mean_churn_probability",
    "mean_purchase_probability",
    "description",
)
CHURN_BANDS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PALETTE = {"value": "#2f6f9f", "risk": "#d9822b", "model": "#2f6f9f", "random": "#8a8a8a"}
TITLES = {
    "value": "Customer value report",
    "uplift": "Next best action report",
    "refresh": "Refresh report",
}


# ---------------------------------------------------------------------------------------------------
# Numbers as words.


def money(value: float | None, currency: str | None, decimals: int = 2) -> str:
    """An amount in the dataset's currency: ``$1,234.56``, ``£1,234.56``, ``1,234.56 INR``; a plain
    number when the dataset does not say its currency; a dash when there is none."""
    if value is None or not math.isfinite(value):
        return "–"
    digits = f"{abs(value):,.{decimals}f}"
    return _with_currency(value < 0 and digits.strip("0.,") != "", digits, currency)


def money_short(value: float, currency: str | None) -> str:
    """An amount on a figure: ``$12.3k``, ``£1.2M``, ``950 INR``."""
    digits = f"{abs(value):,.0f}"
    for size, suffix in ((1e9, "bn"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            digits = f"{abs(value) / size:,.1f}{suffix}"
            break
    return _with_currency(value < 0, digits, currency)


def _with_currency(negative: bool, digits: str, currency: str | None) -> str:
    sign = "-" if negative else ""
    if currency in CURRENCY_SIGNS:
        return f"{sign}{CURRENCY_SIGNS[currency]}{digits}"
    return f"{sign}{digits} {currency}" if currency else f"{sign}{digits}"


def percent(value: float | None, decimals: int = 1) -> str:
    """A probability or share as a percentage: ``12.3%``."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{decimals}%}"


def count(value: float) -> str:
    return f"{int(value):,}"


# ---------------------------------------------------------------------------------------------------
# What the template renders.


@dataclass
class Cell:
    """A table cell: its text and, for a heat table, how strongly it is shaded (0 to 1)."""

    text: str
    shade: float | None = None
    numeric: bool = True
    flag: bool = False  # a warning, e.g. "retrain recommended"


@dataclass
class Table:
    key: str  # data-table attribute: what the browser test looks for
    caption: str
    columns: list[str]
    rows: list[list[Cell]]


@dataclass
class Chart:
    key: str  # data-figure attribute
    title: str
    caption: str
    png: str  # base64


@dataclass
class Section:
    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    alert: str | None = None  # e.g. "retrain recommended", shown above the rest
    items: list[str] = field(default_factory=list)  # a bulleted list (the alert's reasons)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


@dataclass
class ModelFacts:
    """One champion as the report describes it."""

    family: str
    version: str
    candidate: str | None
    metrics: dict[str, float]
    horizon_days: int | None
    discount_rate_monthly: float | None = None


@dataclass
class ReportInputs:
    """Everything a report can show; what a run does not have stays None (or empty) and its section is
    left out. ``macro_profiles``: one row per macro segment with :data:`MACRO_COLUMNS`."""

    kind: str  # value, uplift or refresh: the title
    dataset: str
    as_of: str
    currency: str | None
    models: dict[str, ModelFacts]
    scores: pd.DataFrame | None = None
    segment_version: str | None = None
    gains: dict[str, pd.DataFrame] = field(default_factory=dict)
    macro_profiles: pd.DataFrame | None = None
    uplift: dict[str, Any] | None = None
    uplift_images: dict[str, str] = field(default_factory=dict)
    refresh: dict[str, Any] | None = None
    transitions: pd.DataFrame | None = None
    transition_matrix: pd.DataFrame | None = None
    drift: dict[str, Any] | None = None
    leads: dict[str, Any] | None = None
    quarantined: dict[str, int] = field(default_factory=dict)


def model_facts(champions: Any) -> dict[str, ModelFacts]:
    """The champions' versions, candidates, test metrics and horizons (from the loaded models)."""
    facts = {}
    for family, served in sorted(champions.models.items()):
        model = served.model
        facts[family] = ModelFacts(
            family=family,
            version=str(served.version),
            candidate=served.candidate,
            metrics=dict(served.metrics),
            horizon_days=getattr(model, "horizon_days", None),
            discount_rate_monthly=getattr(model, "discount_rate_monthly", None),
        )
    return facts


def horizons(champions: Any) -> dict[str, int]:
    """Each champion's horizon in days, for summary.json (a family without one is left out)."""
    return {f: h for f, facts in model_facts(champions).items() if (h := facts.horizon_days)}


def horizon_notes(models: Mapping[str, ModelFacts]) -> list[str]:
    """What each score means, with its horizon: 'expected spend in the next 90 days'."""
    notes = []
    clv = models.get("clv")
    if clv is not None and clv.horizon_days:
        discount = clv.discount_rate_monthly
        discounted = f", discounted {discount:.0%} a month" if discount else ""
        notes.append(f"Predicted value (CLV): expected spend in the next {clv.horizon_days} days{discounted}.")
    for family, words in (("churn", "no purchase"), ("propensity", "a purchase")):
        facts = models.get(family)
        if facts is not None and facts.horizon_days:
            name = "Churn" if family == "churn" else "Purchase"
            notes.append(f"{name} probability: the chance of {words} in the next {facts.horizon_days} days.")
    return notes


def currency_note(currency: str | None) -> str:
    if currency:
        return f"Amounts are in {currency}."
    return "Amounts are in the data's own currency, which the dataset config does not name (set currency: USD, say)."


# ---------------------------------------------------------------------------------------------------
# Figures: matplotlib, embedded as PNG.


def png(figure: Figure) -> str:
    """The figure as base64 PNG, without the software version in it: the same run writes the same bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _money_axis(axes: Any, currency: str | None, which: str = "y") -> None:
    formatter = FuncFormatter(lambda value, _: money_short(value, currency))
    (axes.yaxis if which == "y" else axes.xaxis).set_major_formatter(formatter)


def value_by_tier_figure(tiers: pd.DataFrame, currency: str | None) -> Figure:
    """Predicted value and value at risk per tier, side by side."""
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    axes = figure.add_subplot()
    x = np.arange(len(tiers))
    axes.bar(x - 0.2, tiers["value"], width=0.4, label="predicted value", color=PALETTE["value"])
    axes.bar(x + 0.2, tiers["value_at_risk"], width=0.4, label="value at risk", color=PALETTE["risk"])
    for position, (value, risk) in enumerate(zip(tiers["value"], tiers["value_at_risk"], strict=True)):
        axes.annotate(money_short(value, currency), (position - 0.2, value), ha="center", va="bottom", fontsize=8)
        axes.annotate(money_short(risk, currency), (position + 0.2, risk), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(x, [f"tier {t}" for t in tiers.index])
    _money_axis(axes, currency)
    axes.set(title="Predicted value and value at risk by value tier")
    axes.legend(frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def segment_value_figure(segments: pd.DataFrame, currency: str | None) -> Figure:
    """Predicted value per segment, the most valuable at the top, with each segment's customers."""
    figure = Figure(figsize=(7, 0.45 * len(segments) + 1.2), layout="constrained")
    axes = figure.add_subplot()
    rows = segments.iloc[::-1]
    axes.barh(rows.index.astype(str), rows["value"], color=PALETTE["value"])
    for position, (value, customers) in enumerate(zip(rows["value"], rows["customers"], strict=True)):
        label = f" {money_short(value, currency)} ({int(customers):,} customers)"
        axes.annotate(label, (value, position), va="center", fontsize=8)
    axes.set_xlim(0, max(float(rows["value"].max()), 1e-9) * 1.35)
    _money_axis(axes, currency, "x")
    axes.set(title="Predicted value by segment, most valuable first")
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def concentration_figure(clv: np.ndarray) -> Figure:
    """Cumulative share of predicted value by customer percentile, customers sorted by it: how
    concentrated the value the model predicts is (not a check of the model: actual value is unknown)."""
    ordered = np.sort(np.nan_to_num(clv.astype(float)))[::-1]
    total = ordered.sum()
    share = np.cumsum(ordered) / total if total > 0 else np.zeros_like(ordered)
    every = np.unique(np.linspace(0, max(len(ordered) - 1, 0), num=min(len(ordered), 500)).astype(int))
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(np.r_[0, (every + 1) / max(len(ordered), 1)], np.r_[0, share[every]], color=PALETTE["value"])
    axes.plot([0, 1], [0, 1], linestyle="--", color=PALETTE["random"], label="equal value per customer")
    if len(ordered):
        top = share[max(int(np.ceil(0.2 * len(ordered))) - 1, 0)]
        axes.annotate(f"top 20% hold {top:.0%}", (0.2, top), xytext=(0.3, top - 0.15), arrowprops={"arrowstyle": "->"})
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set(
        xlabel="customers, highest predicted value first",
        ylabel="share of predicted value",
        title="Concentration of predicted value (from predictions alone)",
    )
    axes.legend(frameon=False, loc="lower right")
    return figure


def gains_figure(family: str, deciles: pd.DataFrame, what: str, metric: str) -> Figure:
    """Cumulative gains on the champion's test window, from the decile table its training run logged:
    share of ``what`` found in the top x% of customers by score."""
    table = deciles.sort_values("decile")
    customers = table["customers"].cumsum() / table["customers"].sum()
    found = table["actual_sum"].cumsum() / table["actual_sum"].sum() if table["actual_sum"].sum() else customers * 0
    figure = Figure(figsize=(4.6, 3.6), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(np.r_[0, customers], np.r_[0, found], marker="o", markersize=3, color=PALETTE["model"], label="model")
    axes.plot([0, 1], [0, 1], linestyle="--", color=PALETTE["random"], label="random")
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set(xlabel="customers, highest score first", ylabel=f"share of {what}", title=f"{family}: {metric}")
    axes.legend(frameon=False, loc="lower right")
    return figure


def risk_grid(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customers and predicted value per value tier (rows) and churn-probability band (columns)."""
    labels = [f"{lo:.0%}–{hi:.0%}" for lo, hi in itertools.pairwise(CHURN_BANDS)]
    band = pd.cut(scores["churn_probability"].astype(float), list(CHURN_BANDS), labels=labels, include_lowest=True)
    frame = pd.DataFrame({"tier": scores["value_tier"].astype(str), "band": band, "clv": scores["clv"].astype(float)})
    grouped = frame.groupby(["tier", "band"], observed=False)["clv"]
    customers = grouped.size().unstack().reindex(index=list(TIERS), columns=labels).fillna(0)
    value = grouped.sum().unstack().reindex(index=list(TIERS), columns=labels).fillna(0.0)
    return customers, value


def risk_value_figure(scores: pd.DataFrame, currency: str | None) -> Figure:
    """Where the value sits by churn risk: a grid of value tier by churn-probability band, each cell
    its customers and predicted value, shaded by the value (instead of a scatter of every customer)."""
    customers, value = risk_grid(scores)
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(value.to_numpy(), cmap="Blues", aspect="auto")
    top = float(value.to_numpy().max()) or 1.0
    for row in range(len(value.index)):
        for column in range(len(value.columns)):
            amount = float(value.iat[row, column])
            text = f"{int(customers.iat[row, column]):,} customers\n{money_short(amount, currency)}"
            colour = "white" if amount > 0.6 * top else "black"
            axes.text(column, row, text, ha="center", va="center", fontsize=8, color=colour)
    axes.set_xticks(range(len(value.columns)), list(value.columns))
    axes.set_yticks(range(len(value.index)), [f"tier {t}" for t in value.index])
    axes.set(xlabel="churn probability", title="Customers and predicted value by value tier and churn risk")
    figure.colorbar(image, ax=axes, format=FuncFormatter(lambda v, _: money_short(v, currency)), label="value")
    return figure


def action_figure(mix: dict[str, Any]) -> Figure:
    """Customers per next best action (suppressed customers get no_action)."""
    actions = pd.Series(mix["actions"], dtype=float).sort_values()
    figure = Figure(figsize=(7, 0.5 * len(actions) + 1.2), layout="constrained")
    axes = figure.add_subplot()
    axes.barh(actions.index.astype(str), actions.to_numpy(), color=PALETTE["value"])
    for position, value in enumerate(actions.to_numpy()):
        axes.annotate(f" {int(value):,}", (value, position), va="center", fontsize=8)
    axes.set_xlim(0, max(float(actions.max()) if len(actions) else 0.0, 1.0) * 1.2)
    axes.set(xlabel="customers", title="Next best action (suppressed customers: no_action)")
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def drift_figure(drift: dict[str, Any]) -> Figure:
    """PSI of every input and score per family, with each family's threshold."""
    families = [f for f, facts in drift["families"].items() if facts["psi"]]
    heights = [len(drift["families"][f]["psi"]) + 2 for f in families]  # bars plus title and axis
    figure = Figure(figsize=(7, 0.22 * sum(heights) + 0.5), layout="constrained")
    grid = figure.subplots(len(families), 1, squeeze=False, height_ratios=heights)[:, 0]
    for axes, family in zip(grid, families, strict=True):
        facts = drift["families"][family]
        psi = pd.Series(facts["psi"], dtype=float).sort_values()
        limits = pd.Series(facts.get("thresholds", {}), dtype=float).reindex(psi.index)  # older summaries: none
        colours = [PALETTE["risk"] if v > limit else PALETTE["value"] for v, limit in zip(psi, limits, strict=True)]
        axes.barh(psi.index.astype(str), psi.to_numpy(), color=colours)
        for limit in sorted(set(limits.dropna())):
            axes.axvline(limit, color="black", linestyle="--", linewidth=1)
        said = ", ".join(f"{v:g}" for v in sorted(set(limits.dropna())))
        axes.set(
            title=f"{family}: PSI against its training data" + (f" (dashed: {said})" if said else ""), xlabel="PSI"
        )
        axes.tick_params(axis="y", labelsize=7)
    return figure


# ---------------------------------------------------------------------------------------------------
# Sections: frames in, tables and figures of text out.


def _mean(frame: pd.DataFrame, column: str) -> pd.Series:
    """Per-segment mean of a score, NaN where the run has no such score."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index)
    return frame[column].astype(float)


def by_segment(scores: pd.DataFrame) -> pd.DataFrame:
    """Customers, predicted value, value at risk, mean scores and the usual action per segment, the
    most valuable segment first (ties: by name)."""
    frame = scores.assign(
        churn=_mean(scores, "churn_probability"),
        purchase=_mean(scores, "purchase_probability"),
        suppressed=scores["suppressed"].astype(bool),
    )
    table = frame.groupby("segment", sort=True).agg(
        customers=("customer_id", "size"),
        value=("clv", "sum"),
        value_at_risk=("value_at_risk", "sum"),
        churn=("churn", "mean"),
        purchase=("purchase", "mean"),
        suppressed=("suppressed", "sum"),
        action=("action", lambda a: a.mode().iat[0] if a.notna().any() else ""),
    )
    return table.sort_values("value", ascending=False, kind="stable")


def by_tier(scores: pd.DataFrame) -> pd.DataFrame:
    frame = scores.assign(churn=_mean(scores, "churn_probability"))
    table = frame.groupby("value_tier").agg(
        customers=("customer_id", "size"),
        value=("clv", "sum"),
        value_at_risk=("value_at_risk", "sum"),
        churn=("churn", "mean"),
    )
    return table.reindex(list(TIERS)).fillna({"customers": 0, "value": 0.0, "value_at_risk": 0.0})


def segments_section(scores: pd.DataFrame, currency: str | None, segment_version: str | None) -> Section:
    segments = by_segment(scores)
    total = float(segments["value"].sum())
    rows = [
        [
            Cell(str(s.Index), numeric=False),
            Cell(count(s.customers)),
            Cell(money(s.value, currency, 0)),
            Cell(percent(s.value / total if total > 0 else math.nan)),
            Cell(money(s.value / s.customers if s.customers else math.nan, currency)),
            Cell(money(s.value_at_risk, currency, 0)),
            Cell(percent(s.churn)),
            Cell(percent(s.purchase)),
            Cell(count(s.suppressed)),
            Cell(str(s.action), numeric=False),
        ]
        for s in segments.itertuples()
    ]
    columns = ["segment", "customers", "predicted value", "share of value", "per customer", "value at risk"]
    columns += ["mean churn probability", "mean purchase probability", "suppressed", "usual action"]
    version = f" Segment file {segment_version}." if segment_version else ""
    return Section(
        "segments",
        "Segments, most valuable first",
        [f"{len(segments)} segments ordered by their customers' total predicted value.{version}"],
        tables=[Table("segments", "Segments by predicted value", columns, rows)],
        charts=[
            Chart(
                "segment-value",
                "Predicted value by segment",
                "Total predicted value of each segment's customers, the most valuable at the top.",
                png(segment_value_figure(segments, currency)),
            )
        ],
    )


def tier_table(tiers: pd.DataFrame, customers_in_all: int, currency: str | None) -> Table:
    total = float(tiers["value"].sum())
    rows = [
        [
            Cell(f"tier {tier}", numeric=False),
            Cell(count(t.customers)),
            Cell(percent(t.customers / max(customers_in_all, 1))),
            Cell(money(t.value, currency, 0)),
            Cell(percent(t.value / total if total > 0 else math.nan)),
            Cell(money(t.value_at_risk, currency, 0)),
            Cell(percent(t.churn)),
        ]
        for tier, t in zip(tiers.index, tiers.itertuples(), strict=True)
    ]
    columns = ["value tier", "customers", "share of customers", "predicted value", "share of value"]
    return Table("tiers", "Predicted value by value tier", [*columns, "value at risk", "mean churn probability"], rows)


def risk_table(scores: pd.DataFrame, currency: str | None) -> Table:
    """The grid of :func:`risk_value_figure` as a table, each cell shaded by its value."""
    customers, value = risk_grid(scores)
    top = float(value.to_numpy().max()) or 1.0
    rows = [
        [Cell(f"tier {tier}", numeric=False)]
        + [
            Cell(
                f"{int(customers.at[tier, band]):,} · {money(value.at[tier, band], currency, 0)}",
                value.at[tier, band] / top,
            )
            for band in value.columns
        ]
        for tier in value.index
    ]
    return Table(
        "risk-grid", "Customers · predicted value by tier and churn probability", ["tier", *value.columns], rows
    )


def value_section(scores: pd.DataFrame, currency: str | None) -> Section:
    """Value by tier, how concentrated it is, and where it sits by churn risk."""
    tiers = by_tier(scores)
    return Section(
        "value",
        "Value by tier",
        ["Value at risk is predicted value times churn probability: what the churn model expects to lose."],
        tables=[tier_table(tiers, len(scores), currency), risk_table(scores, currency)],
        charts=[
            Chart(
                "value-by-tier",
                "Value by tier",
                "Predicted value and value at risk per value tier.",
                png(value_by_tier_figure(tiers, currency)),
            ),
            Chart(
                "risk-value",
                "Churn risk and value",
                "Customers and predicted value in each value tier and churn-probability band; darker holds more value.",
                png(risk_value_figure(scores, currency)),
            ),
            Chart(
                "concentration",
                "Concentration of predicted value",
                "Customers sorted by predicted value: the share of all predicted value the top x% hold. "
                "Computed from the predictions alone, it says how concentrated the forecast is, not whether "
                "it is right; the gains charts below check the models against what happened.",
                png(concentration_figure(scores["clv"].to_numpy(dtype=float))),
            ),
        ],
    )


GAINS_WHAT = {"churn": "churners", "propensity": "buyers", "clv": "actual spend", "lead_score": "conversions"}
METRIC_NAMES = {"roc_auc": "ROC AUC", "gini_normalized": "normalized Gini", "qini_auc": "Qini AUC"}


def gains_section(gains: Mapping[str, pd.DataFrame], models: Mapping[str, ModelFacts]) -> Section:
    """One cumulative gains chart per champion, on its test window (the decile table of its run)."""
    charts = []
    for family, deciles in sorted(gains.items()):
        facts = models.get(family)
        metric = next((m for m in METRIC_NAMES if facts is not None and m in facts.metrics), None)
        said = f"test {METRIC_NAMES[metric]} {facts.metrics[metric]:.3f}" if facts and metric else "test window"
        version = f" v{facts.version}" if facts else ""
        caption = (
            f"{family}{version}: the share of all {GAINS_WHAT.get(family, 'positives')} in its test window found "
            "in the top x% of customers by the model's score (dashed: choosing at random)."
        )
        charts.append(
            Chart(
                f"gains-{family}",
                f"Gains: {family}",
                caption,
                png(gains_figure(family + version, deciles, GAINS_WHAT.get(family, "positives"), said)),
            )
        )
    paragraphs = ["Measured when each champion was trained, on customers and outcomes it had not seen."]
    missing = sorted(set(models) - set(gains) - {"uplift", "lead_score"})
    if missing:
        paragraphs.append(
            f"No test-window gains were logged for {', '.join(missing)} (a run from an earlier version): "
            "only the concentration of predicted value above is shown for it, which checks nothing."
        )
    return Section("gains", "Gains of each model on its test window", paragraphs, charts=charts)


def macro_section(profiles: pd.DataFrame, currency: str | None) -> Section:
    """The macro segments' profiles (the macro_segment family's table), the largest share of value first."""
    missing = [c for c in MACRO_COLUMNS if c not in profiles.columns]
    if missing:
        raise ValueError(f"the macro segment profile table lacks column(s) {', '.join(missing)}")
    ordered = profiles.sort_values(["share_of_value", "macro_segment"], ascending=[False, True], kind="stable")
    rows = [
        [
            Cell(str(p.macro_segment), numeric=False),
            Cell(count(p.customers)),
            Cell(percent(float(p.share_of_value))),
            Cell(money(float(p.mean_clv), currency)),
            Cell(percent(float(p.mean_churn_probability))),
            Cell(percent(float(p.mean_purchase_probability))),
            Cell(str(p.description), numeric=False),
        ]
        for p in ordered.itertuples()
    ]
    columns = ["macro segment", "customers", "share of value", "mean predicted value"]
    columns += ["mean churn probability", "mean purchase probability", "profile"]
    return Section(
        "macro",
        "Macro segments",
        ["Needs-based groups found from behaviour, the largest share of predicted value first."],
        tables=[Table("macro-segments", "Macro segment profiles", columns, rows)],
    )


def action_section(mix: dict[str, Any], images: Mapping[str, str], currency: str | None) -> Section:
    """The next best actions of the uplift champion: customers and expected incremental value per action,
    micro segments, suppression reasons, and the Qini curves its training run logged."""
    total = max(int(mix["customers"]), 1)
    order = sorted(mix["actions"], key=lambda a: (-mix["expected_incremental_value"].get(a, 0.0), a))
    rows = [
        [
            Cell(str(action), numeric=False),
            Cell(count(mix["actions"][action])),
            Cell(percent(mix["actions"][action] / total)),
            Cell(money(mix["expected_incremental_value"].get(action), currency)),
        ]
        for action in order
    ]
    tables = [
        Table(
            "actions",
            "Next best actions",
            ["next best action", "customers", "share", "expected incremental value"],
            rows,
        )
    ]
    micro_rows = [[Cell(str(k), numeric=False), Cell(count(v))] for k, v in mix["micro_segments"].items()]
    tables.append(Table("micro-segments", "Micro segments", ["micro segment", "customers"], micro_rows))
    if mix["suppression_reasons"]:
        reasons = [[Cell(str(k), numeric=False), Cell(count(v))] for k, v in mix["suppression_reasons"].items()]
        tables.append(Table("suppression-reasons", "Suppression reasons", ["reason", "customers"], reasons))
    charts = [Chart("actions", "Next best action", "Customers per next best action.", png(action_figure(mix)))]
    charts += [
        Chart(f"qini-{number}", title, "As the uplift champion's training run logged it.", image)
        for number, (title, image) in enumerate(images.items(), start=1)
    ]
    return Section(
        "actions",
        "Next best action",
        [
            f"{mix['customers']:,} customers scored by the uplift model; {mix['suppressed']:,} suppressed "
            "(next best action: no_action)."
        ],
        tables=tables,
        charts=charts,
    )


def transitions_section(
    refresh: dict[str, Any], transitions: pd.DataFrame, matrix: pd.DataFrame, currency: str | None
) -> Section:
    """Segment to segment since the previous refresh: the matrix of customers, the moves that changed
    predicted value most, and who entered and left each segment."""
    since = refresh.get("previous_as_of")
    lead = (
        f"Since {since}: {refresh['new']:,} new, {refresh['departed']:,} departed and {refresh['changed_segment']:,} "
        f"customers in another segment; predicted value {money(refresh['clv_previous'], currency, 0)} then, "
        f"{money(refresh['clv'], currency, 0)} now."
        if since
        else "The first refresh in this folder: every customer is new, so every transition starts at (new)."
    )
    top = max(int(matrix.to_numpy().max()) if matrix.size else 0, 1)
    grid = [
        [Cell(str(source), numeric=False)]
        + [Cell(count(matrix.at[source, target]), matrix.at[source, target] / top) for target in matrix.columns]
        for source in matrix.index
    ]
    moves = transitions.loc[transitions["from_segment"] != transitions["to_segment"]]
    moves = moves.reindex(moves["clv_change"].abs().sort_values(ascending=False, kind="stable").index).head(15)
    move_rows = [
        [
            Cell(str(m.from_segment), numeric=False),
            Cell(str(m.to_segment), numeric=False),
            Cell(count(m.customers)),
            Cell(money(m.previous_clv, currency, 0)),
            Cell(money(m.clv, currency, 0)),
            Cell(money(m.clv_change, currency, 0)),
        ]
        for m in moves.itertuples()
    ]
    by_segment = [
        [Cell(str(name), numeric=False), Cell(count(c["entered"])), Cell(count(c["left"]))]
        for name, c in refresh.get("changes_by_segment", {}).items()
    ]
    return Section(
        "transitions",
        "Transitions since the previous refresh",
        [lead, "Rows: the segment at the previous refresh; columns: the segment now; cells: customers."],
        tables=[
            Table(
                "transition-matrix", "Transition matrix (customers)", ["from \\ to", *map(str, matrix.columns)], grid
            ),
            Table(
                "transition-moves",
                "Moves that changed predicted value most",
                ["from", "to", "customers", "value then", "value now", "change"],
                move_rows,
            ),
            Table(
                "segment-changes",
                "Customers who entered and left each segment",
                ["segment", "entered", "left"],
                by_segment,
            ),
        ],
    )


def drift_section(drift: dict[str, Any]) -> Section:
    """Drift of each champion's inputs and score since its training data, and its age; above the
    thresholds, 'retrain recommended' and why."""
    families = drift["families"]
    flagged = drift["retrain_recommended"]
    rows = []
    for family, facts in families.items():
        worst = max(facts["psi"].items(), key=lambda kv: kv[1], default=("–", math.nan))
        rows.append(
            [
                Cell(family, numeric=False),
                Cell(str(facts["version"])),
                Cell(facts["reference_cutoff"] or "–"),
                Cell(count(facts["age_days"])),
                Cell(f"{worst[1]:.3f}" if math.isfinite(worst[1]) else "–"),
                Cell(str(worst[0]), numeric=False),
                Cell(
                    "retrain recommended" if facts["reasons"] else "stable", numeric=False, flag=bool(facts["reasons"])
                ),
            ]
        )
    columns = ["model", "version", "trained on data to", "age (days)", "largest PSI", "of", "status"]
    section = Section(
        "drift",
        "Drift",
        [
            "Population stability index (PSI) of each model input and score, now against the data the champion "
            "was trained on; below 0.1 is stable, above 0.25 a shift worth a retrain."
        ],
        tables=[Table("drift", "Drift per model", columns, rows)],
    )
    if flagged:
        section.alert = f"Retrain recommended: {', '.join(flagged)}."
        section.items = [
            f"{f} v{families[f]['version']}: {reason}" for f in flagged for reason in families[f]["reasons"]
        ]
    elif families:
        section.alert = None
        section.paragraphs.append("No model is above the thresholds: no retrain recommended.")
    if any(facts["psi"] for facts in families.values()):
        section.charts.append(Chart("drift", "PSI per input", "Orange: above the threshold.", png(drift_figure(drift))))
    return section


def leads_section(leads: dict[str, Any]) -> Section:
    total = max(int(leads["leads"]), 1)
    rows = [[Cell(str(t), numeric=False), Cell(count(n)), Cell(percent(n / total))] for t, n in leads["tiers"].items()]
    return Section(
        "leads",
        "Leads",
        [f"{leads['leads']:,} leads scored by the lead-score champion."],
        tables=[Table("lead-tiers", "Leads per tier", ["tier", "leads", "share"], rows)],
    )


def models_section(inputs: ReportInputs) -> Section:
    rows = []
    for facts in inputs.models.values():
        metrics = ", ".join(f"{METRIC_NAMES.get(k, k)} {v:.3f}" for k, v in facts.metrics.items() if k in METRIC_NAMES)
        horizon = f"{facts.horizon_days} days" if facts.horizon_days else "–"
        rows.append(
            [
                Cell(facts.family, numeric=False),
                Cell(facts.version),
                Cell(facts.candidate or "–", numeric=False),
                Cell(metrics or "–", numeric=False),
                Cell(horizon),
            ]
        )
    paragraphs = []
    if inputs.quarantined:
        said = ", ".join(f"{n:,} {table}" for table, n in sorted(inputs.quarantined.items()))
        paragraphs.append(f"Rows left out as unusable (quarantine.<table>.csv has each with its reason): {said}.")
    return Section(
        "models",
        "Models",
        paragraphs,
        tables=[Table("models", "Champion models", ["model", "version", "candidate", "test metric", "horizon"], rows)],
    )


def headline(inputs: ReportInputs) -> list[str]:
    """The report's first lines: the main figures, what the amounts are and what the scores mean."""
    lines = []
    scores = inputs.scores
    if scores is not None and len(scores):
        total = float(scores["clv"].sum())
        tier_a = scores["value_tier"] == "A"
        share = float(scores.loc[tier_a, "clv"].sum()) / total if total > 0 else math.nan
        lines.append(
            f"{len(scores):,} customers with a predicted value of {money(total, inputs.currency, 0)} in all. "
            f"Tier A holds {percent(share)} of it with {percent(float(tier_a.mean()))} of the customers. "
            f"{int(scores['suppressed'].astype(bool).sum()):,} customers are suppressed (no marketing action)."
        )
    return [*lines, currency_note(inputs.currency), *horizon_notes(inputs.models)]


def build_sections(inputs: ReportInputs) -> list[Section]:
    """The report's sections, each only when the run has what it shows."""
    sections = []
    currency = inputs.currency
    if inputs.drift is not None:  # first: a retrain recommendation is the news of a refresh
        sections.append(drift_section(inputs.drift))
    if inputs.scores is not None and "clv" in inputs.scores.columns:
        sections.append(segments_section(inputs.scores, currency, inputs.segment_version))
        sections.append(value_section(inputs.scores, currency))
    if inputs.gains:
        sections.append(gains_section(inputs.gains, inputs.models))
    if inputs.macro_profiles is not None:
        sections.append(macro_section(inputs.macro_profiles, currency))
    if inputs.refresh is not None and inputs.transitions is not None and inputs.transition_matrix is not None:
        sections.append(transitions_section(inputs.refresh, inputs.transitions, inputs.transition_matrix, currency))
    if inputs.uplift is not None:
        sections.append(action_section(inputs.uplift, inputs.uplift_images, currency))
    if inputs.leads is not None:
        sections.append(leads_section(inputs.leads))
    sections.append(models_section(inputs))
    return sections


def render(inputs: ReportInputs) -> str:
    """The report as one self-contained HTML page."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("serving", "templates"),
        autoescape=True,  # every name and reason in the report is someone else's text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("report.html.j2").render(
        title=TITLES[inputs.kind],
        dataset=inputs.dataset,
        as_of=inputs.as_of,
        headline=headline(inputs),
        sections=build_sections(inputs),
    )
