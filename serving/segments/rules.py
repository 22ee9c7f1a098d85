"""Economic-value segments: one place, used by the API and by batch scoring alike.

Rules come from a YAML file (``configs/segments.yaml`` by default). Tier cut-offs are computed once
on a scored population (:func:`freeze`) and written to a versioned segment file of that dataset
(``segments/<dataset>/segments-<version>.json``), which both the API and batch scoring load, so that a
customer gets the same tier online and in batch, and one dataset's cut-offs never tier another's. :func:`assign`
is pure: scores and customer facts in, segment columns out.

Inputs per customer (columns): ``clv``, ``churn_probability``, ``purchase_probability``, ``p_alive``,
``total_spend`` (spend so far), ``days_since_last_order``, and where the data has them
``days_since_last_refund``, ``days_since_last_complaint``, ``days_since_last_contact`` and the
suppression flags (``opted_out``, ``do_not_contact``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.config import PROJECT_ROOT, ConfigError, format_validation_error
from features.io import atomic_path
from training.columns import rows_of

DEFAULT_RULES = PROJECT_ROOT / "configs" / "segments.yaml"
DEFAULT_FROZEN_DIR = PROJECT_ROOT / "segments"
TIERS = ("A", "B", "C", "D")
NO_ACTION = "no marketing action"
# Segment names become file names (lists/<segment>.csv) and CRM list names: plain identifiers only.
SEGMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ACTION_TEXT = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierRules(_Strict):
    method: Literal["pareto", "thresholds"] = "pareto"
    shares: dict[str, float] = Field(default_factory=lambda: {"A": 0.5, "B": 0.3, "C": 0.15})
    thresholds: dict[str, float] = Field(default_factory=lambda: {"A": 1000.0, "B": 250.0, "C": 50.0})

    @field_validator("shares", "thresholds")
    @classmethod
    def _tiers_a_b_c(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != {"A", "B", "C"}:
            raise ValueError(f"give exactly the tiers A, B and C (D is the rest); got {sorted(value)}")
        return value


class Lapsed(_Strict):
    p_alive_below: float = Field(default=0.3, ge=0, le=1)
    days_since_last_order_over: float = Field(default=365, ge=0)


class Condition(_Strict):
    value_tier: list[str] | None = None
    past_value_tier: list[str] | None = None
    risk_band: list[str] | None = None
    potential_band: list[str] | None = None
    lapsed: bool | None = None


class SegmentRule(_Strict):
    name: str
    when: Condition = Condition()
    action: str

    @field_validator("name")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        """The name becomes ``lists/<name>.csv``: a name such as ``../../x`` would write outside OUT."""
        if not SEGMENT_NAME.fullmatch(value):
            raise ValueError(
                f"segment name {value!r} is not a plain identifier: use 1-64 lower-case letters, digits, "
                "'_' or '-', starting with a letter or digit (e.g. win_back)"
            )
        return value

    @field_validator("action")
    @classmethod
    def _one_line_of_text(cls, value: str) -> str:
        """Actions are free text for people, but land in CSV cells that CRM tools import: one line,
        no control characters, at most 200 characters."""
        if not ACTION_TEXT.fullmatch(value):
            raise ValueError(
                f"action {value[:40]!r} must be one line of 1-200 characters without control characters "
                "(no newlines or tabs): shorten it or move the detail to your campaign notes"
            )
        return value


DoNotDisturb = Literal["chosen_arm", "any_arm", "every_arm"]


class Suppression(_Strict):
    flags: list[str] = Field(default_factory=lambda: ["opted_out", "do_not_contact"])
    refund_within_days: int | None = 30
    complaint_within_days: int | None = 30
    contacted_within_days: int | None = 14
    # Uplift: suppress a customer whom the recommended arm would put off (chosen_arm: its micro
    # segment is do_not_disturb), whom any arm would, or every arm; null: never.
    do_not_disturb: DoNotDisturb | None = "chosen_arm"


class SegmentRules(_Strict):
    version: int = 1
    tiers: TierRules = TierRules()
    risk_bands: dict[str, float] = Field(default_factory=lambda: {"high": 0.5, "medium": 0.25})
    potential_bands: dict[str, float] = Field(default_factory=lambda: {"high": 0.5, "medium": 0.2})
    lapsed: Lapsed = Lapsed()
    segments: list[SegmentRule]
    suppression: Suppression = Suppression()


def load_rules(path: Path | None = None) -> SegmentRules:
    path = Path(path or os.environ.get("VALUECAST_SEGMENT_RULES") or DEFAULT_RULES)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such segment rules file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        rules = SegmentRules.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from exc
    if not rules.segments or rules.segments[-1].when != Condition():
        raise ConfigError(f"{path}: the last segment rule must have an empty 'when' so that every customer gets one")
    return rules


class FrozenSegments(_Strict):
    """Tier cut-offs computed on a scored population, with the rules they belong to."""

    version: str
    created_at: str
    population: str
    customers: int
    value_floors: dict[str, float]  # lowest CLV of tiers A, B, C
    past_value_floors: dict[str, float]  # the same on spend so far (for "once valuable")
    rules: SegmentRules


def _pareto_floors(values: np.ndarray, shares: Mapping[str, float]) -> dict[str, float]:
    """Lowest value in each tier when tiers hold the given cumulative shares of the total, top down."""
    ordered = np.sort(np.nan_to_num(np.asarray(values, dtype=float), nan=0.0))[::-1]
    total = ordered.sum()
    floors: dict[str, float] = {}
    cumulative = 0.0
    if total <= 0:
        return {tier: float("inf") for tier in ("A", "B", "C")}
    running = np.cumsum(ordered) / total
    for tier in ("A", "B", "C"):
        cumulative += shares[tier]
        # the customers needed to reach the cumulative share; the last of them sets the floor
        last = int(np.searchsorted(running, min(cumulative, 1.0) - 1e-12))
        floors[tier] = float(ordered[min(last, len(ordered) - 1)])
    return floors


def freeze(scores: pd.DataFrame, rules: SegmentRules, population: str) -> FrozenSegments:
    """Tier cut-offs for ``scores`` (columns ``clv`` and ``total_spend``) under ``rules``."""
    if rules.tiers.method == "pareto":
        value = _pareto_floors(scores["clv"].to_numpy(), rules.tiers.shares)
        past = _pareto_floors(scores["total_spend"].to_numpy(), rules.tiers.shares)
    else:
        value = past = {str(k): float(v) for k, v in rules.tiers.thresholds.items()}
    now = datetime.now(UTC)
    return FrozenSegments(
        version=now.strftime("%Y%m%dT%H%M%S"),
        created_at=now.isoformat(timespec="seconds"),
        population=population,
        customers=len(scores),
        value_floors=value,
        past_value_floors=past,
        rules=rules,
    )


def frozen_root() -> Path:
    """The folder that holds each dataset's folder of frozen segment files."""
    return Path(os.environ.get("VALUECAST_SEGMENTS_DIR") or DEFAULT_FROZEN_DIR)


def frozen_dir(dataset: str, root: Path | None = None) -> Path:
    """``<root>/<dataset>/``: cut-offs are frozen per dataset, since tiers of one customer base mean
    nothing for another. The name is checked to be a plain identifier before it becomes a path."""
    from training.families import check_dataset_name

    base = Path(root or frozen_root())
    folder = base / check_dataset_name(dataset)
    if not folder.resolve().is_relative_to(base.resolve()):  # a symlink pointing elsewhere
        raise ConfigError(f"{folder} leads outside {base}: remove the link or set VALUECAST_SEGMENTS_DIR")
    return folder


def write_frozen(frozen: FrozenSegments, dataset: str, root: Path | None = None) -> Path:
    """Write the cut-offs as ``<root>/<dataset>/segments-<version>.json``."""
    target = frozen_dir(dataset, root) / f"segments-{frozen.version}.json"
    with atomic_path(target) as tmp:
        tmp.write_text(frozen.model_dump_json(indent=2))
    return target


def latest_frozen(dataset: str, root: Path | None = None) -> Path | None:
    """The dataset's newest segment file (versions are timestamps, so the last name is the newest)."""
    files = sorted(frozen_dir(dataset, root).glob("segments-*.json"))
    return files[-1] if files else None


def missing_frozen(dataset: str, root: Path | None = None) -> str:
    """Why a dataset has no segment file, and how to make one; mentions files of earlier versions,
    which were frozen before segment files were kept per dataset."""
    base = Path(root or frozen_root())
    message = f"no frozen segment file in {frozen_dir(dataset, base)}: run make segments DATA={dataset}"
    if any(base.glob("segments-*.json")):
        message += f" (or move the {base}/segments-*.json frozen on {dataset} into that folder)"
    return message


def load_frozen(path: Path) -> FrozenSegments:
    try:
        return FrozenSegments.model_validate(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a valid segment file ({exc})") from exc


def _missing_as_zero(values: Any) -> np.ndarray:
    """``np.nan_to_num(values, nan=0.0)`` (infinities become the largest floats) at a fraction of its
    cost for one customer's request."""
    values = np.asarray(values, dtype=float)
    largest = np.finfo(float).max
    return np.clip(np.where(np.isnan(values), 0.0, values), -largest, largest)


def tier_of(values: np.ndarray, floors: dict[str, float]) -> np.ndarray:
    """The tier (A, B, C, D) of each value, given the frozen floors of A, B and C."""
    values = _missing_as_zero(values)
    tier = np.full(len(values), "D", dtype=object)
    for name in ("C", "B", "A"):  # the highest tier reached wins
        tier[values >= floors[name]] = name
    return tier


def _band(values: np.ndarray, floors: dict[str, float], below: str = "low") -> np.ndarray:
    values = _missing_as_zero(values)
    band = np.full(len(values), below, dtype=object)
    for name in sorted(floors, key=floors.__getitem__):  # ascending: the highest floor reached wins
        band[values >= floors[name]] = name
    return band


def _one_of(labels: np.ndarray, allowed: list[str]) -> np.ndarray:
    """``np.isin(labels, allowed)`` for a few allowed labels: one comparison per label. ``np.isin``
    sorts object arrays, which cost a one-customer request ~30 us per condition (a profile of the
    API under load: 3.4% of a worker's time)."""
    match = np.zeros(len(labels), dtype=bool)
    for label in allowed:
        match |= labels == label
    return match


def _truthy(values: Any) -> np.ndarray:
    """Flags as text: 1, 1.0, true, yes, y (any case, spaces around) are set; anything else is not."""
    text = np.char.lower(np.char.strip(np.asarray(values, dtype=str)))
    return _one_of(text, ["1", "1.0", "true", "yes", "y"])


def _numbers(values: Any) -> np.ndarray:
    if isinstance(values, pd.Series) or np.asarray(values).dtype == object:
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    return np.asarray(values, dtype=float)


def assign(scores: pd.DataFrame, frozen: FrozenSegments) -> pd.DataFrame:
    """Segment columns for each row of ``scores`` (same index)."""
    return pd.DataFrame(assign_columns(scores, frozen), index=scores.index)


def assign_columns(scores: pd.DataFrame | Mapping[str, Any], frozen: FrozenSegments) -> dict[str, np.ndarray]:
    """:func:`assign` on a DataFrame or a dict of equal-length arrays (one API request: no pandas)."""
    rules = frozen.rules
    n = rows_of(scores)

    def column(name: str, default: float = np.nan) -> np.ndarray:
        if name in scores:
            return _numbers(scores[name])
        return np.full(n, default)

    clv, churn = column("clv", 0.0), column("churn_probability", 0.0)
    value_tier = tier_of(clv, frozen.value_floors)
    facts = {
        "value_tier": value_tier,
        "past_value_tier": tier_of(column("total_spend", 0.0), frozen.past_value_floors),
        "risk_band": _band(churn, rules.risk_bands),
        "potential_band": _band(column("purchase_probability", 0.0), rules.potential_bands),
    }
    with np.errstate(invalid="ignore"):
        lapsed = (column("p_alive", 1.0) < rules.lapsed.p_alive_below) | (
            column("days_since_last_order", 0.0) > rules.lapsed.days_since_last_order_over
        )

    segment = np.full(n, "", dtype=object)
    action = np.full(n, "", dtype=object)
    open_rows = np.ones(n, dtype=bool)
    for rule in rules.segments:
        match = open_rows.copy()
        for key in Condition.model_fields:
            if (allowed := getattr(rule.when, key)) is None:
                continue
            if key == "lapsed":
                match &= lapsed == bool(allowed)
            else:
                match &= _one_of(facts[key], allowed)
        segment[match], action[match] = rule.name, rule.action
        open_rows &= ~match

    reasons = suppression_reasons(scores, rules, n)
    suppressed = reasons != ""
    action = np.where(suppressed, NO_ACTION, action)
    return {
        "value_tier": value_tier,
        "value_at_risk": clv * churn,
        "risk_band": facts["risk_band"],
        "potential_band": facts["potential_band"],
        "segment": segment,
        "action": action,
        "suppressed": suppressed,
        "suppression_reason": np.where(suppressed, reasons, np.full(n, None, dtype=object)),
    }


def suppression_reasons(facts: pd.DataFrame | Mapping[str, Any], rules: SegmentRules, n: int) -> np.ndarray:
    """Per customer the first suppression reason that applies ('' for none): the flags, then a refund,
    complaint or contact within the rules' days. The economic-value segments and the uplift actions
    (:mod:`serving.segments.micro`) both read it, so a customer is suppressed for the same reasons in both."""
    reasons = np.full(n, "", dtype=object)
    for flag in rules.suppression.flags:
        if flag in facts:
            add_reason(reasons, _truthy(facts[flag]), flag.replace("_", " "))
    for days, name, reason in (
        (rules.suppression.refund_within_days, "days_since_last_refund", "refund"),
        (rules.suppression.complaint_within_days, "days_since_last_complaint", "complaint"),
        (rules.suppression.contacted_within_days, "days_since_last_contact", "contacted"),
    ):
        if days is not None and name in facts:
            with np.errstate(invalid="ignore"):
                add_reason(reasons, _numbers(facts[name]) <= days, f"{reason} in the last {days} days")
    return reasons


def add_reason(reasons: np.ndarray, mask: np.ndarray, reason: str) -> None:
    """Give ``reason`` to the customers of ``mask`` that have none yet (the first reason is kept)."""
    reasons[np.asarray(mask, dtype=bool) & (reasons == "")] = reason


def summary(scores: pd.DataFrame) -> dict[str, Any]:
    """Customers per segment, value and value at risk per tier, tier A's share of value."""
    total = float(scores["clv"].sum())
    by_tier = scores.groupby("value_tier")[["clv", "value_at_risk"]].sum().reindex(list(TIERS), fill_value=0.0)
    return {
        "customers": len(scores),
        "segments": {str(k): int(v) for k, v in scores["segment"].value_counts().sort_index().items()},
        "suppressed": int(scores["suppressed"].sum()),
        "value_by_tier": {str(k): float(v) for k, v in by_tier["clv"].items()},
        "value_at_risk_by_tier": {str(k): float(v) for k, v in by_tier["value_at_risk"].items()},
        "tier_a_share_of_customers": float((scores["value_tier"] == "A").mean()) if len(scores) else 0.0,
        "tier_a_share_of_value": float(by_tier.loc["A", "clv"] / total) if total > 0 else 0.0,
    }
