"""Model configs: one YAML file per model family, with per-dataset overrides, loaded strictly.

``configs/models/<family>.yaml`` holds the family's defaults and, under ``datasets:``, the keys that
differ for a bundled dataset. Unknown keys are rejected with their path. Defaults live here, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.config import PROJECT_ROOT, ConfigError, format_validation_error

MODEL_CONFIG_DIR = PROJECT_ROOT / "configs" / "models"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class XGBoostParams(_Strict):
    """Gradient boosting settings (xgboost's own names)."""

    n_estimators: int = Field(default=400, ge=1, description="Trees; with early_stopping_rounds, the most tried.")
    early_stopping_rounds: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Churn and propensity: fitted on the validation window's training cut-offs, trees are added "
        "until the validation window's log loss has not improved for this many; the model refitted for the test "
        "window gets the best number. Unset (or no validation window): n_estimators.",
    )
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    max_depth: int = Field(default=4, ge=1, le=16)
    min_child_weight: float = Field(default=1.0, ge=0)
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    reg_lambda: float = Field(default=1.0, ge=0)
    objective: str | None = Field(default=None, description="Default per family: binary:logistic or reg:tweedie.")
    tweedie_variance_power: float = Field(default=1.5, gt=1, lt=2)


class Guards(_Strict):
    """When training refuses: too few examples, too little history, a column that leaks the label."""

    min_positives: int = Field(default=100, ge=1)
    min_negatives: int = Field(default=100, ge=1)
    history_horizons: float = Field(default=2.0, ge=0, description="Required history, in horizons.")
    leakage_auc: float = Field(
        default=0.95, gt=0.5, le=1.0, description="A single column above this AUC stops training."
    )
    allow_columns: list[str] = Field(default_factory=list, description="Columns exempt from the leakage check.")


Outcome = Literal["visit", "conversion", "spend"]
OUTCOMES: tuple[Outcome, ...] = ("visit", "conversion", "spend")


class MicroSegmentRules(_Strict):
    """Uplift: the thresholds that put a customer in a micro segment for an arm (on the primary
    outcome's scale: a probability difference for visit and conversion)."""

    persuadable_min_uplift: float = Field(default=0.02, description="Uplift at least this: persuadable.")
    do_not_disturb_max_uplift: float = Field(
        default=-0.01, le=0, description="Uplift at most this (a negative effect): do-not-disturb, suppressed."
    )
    sure_thing_min_response: float = Field(
        default=0.2, ge=0, description="Otherwise: response probability at least this is a sure thing, else lost cause."
    )


class UpliftSettings(_Strict):
    """Uplift: outcomes to model, the primary (arm, outcome), costs and values of the next best action."""

    outcomes: list[Outcome] = Field(default_factory=lambda: list(OUTCOMES), min_length=1)
    primary_outcome: Outcome = "visit"
    primary_arm: str | None = Field(
        default=None, description="Arm whose Qini AUC is the primary metric; default: the mean over the arms."
    )
    validation_size: float = Field(default=0.3, gt=0, lt=1, description="Share of the training part to choose on.")
    bootstrap: int = Field(default=200, ge=0, le=5000, description="Bootstrap resamples for the intervals (0: none).")
    costs: dict[str, float] = Field(default_factory=dict, description="Arm -> cost per customer sent (default 0).")
    action_outcome: Outcome = Field(
        default="spend", description="The outcome whose uplift the next best action values."
    )
    value_per_unit: float = Field(
        default=1.0, gt=0, description="Money per incremental unit of action_outcome (1 for spend)."
    )
    segments: MicroSegmentRules = MicroSegmentRules()
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], description="Seeds of the benchmark protocol.")

    @model_validator(mode="after")
    def _modelled(self) -> UpliftSettings:
        for key in ("primary_outcome", "action_outcome"):
            if getattr(self, key) not in self.outcomes:
                raise ValueError(f"{key} '{getattr(self, key)}' is not among outcomes {self.outcomes}")
        return self


class MacroSettings(_Strict):
    """Macro segments: the methods and numbers of segments tried, and what makes a segmentation usable."""

    k_min: int = Field(default=3, ge=2, le=12, description="Fewest segments tried.")
    k_max: int = Field(default=8, ge=2, le=12, description="Most segments tried.")
    bootstrap: int = Field(default=10, ge=2, le=100, description="Bootstrap fits for the stability figure.")
    min_stability: float = Field(
        default=0.8, gt=0, le=1, description="Mean adjusted Rand index over the bootstrap fits a segmentation needs."
    )
    max_fit_customers: int = Field(
        default=50_000, ge=100, description="Customers sampled for fitting (all customers are assigned)."
    )
    silhouette_sample: int = Field(default=5_000, ge=100, description="Customers sampled for the silhouette.")
    min_share: float = Field(default=0.02, ge=0, lt=0.5, description="A segment smaller than this share is refused.")

    @model_validator(mode="after")
    def _range(self) -> MacroSettings:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max {self.k_max} is below k_min {self.k_min}")
        return self


class ModelConfig(_Strict):
    """Everything a training run of one family on one dataset depends on."""

    family: str = Field(description="The model family (a file in configs/models/).")
    seed: int = 0
    candidates: list[str] | None = Field(
        default=None,
        description="Candidates to train and compare on the validation data (default: all of the family's).",
    )
    cv_folds: int = Field(default=5, ge=2, le=20, description="Snapshots and leads: folds of the cross-validation.")
    horizon_days: int = Field(default=90, ge=1)
    cutoffs: int = Field(default=6, ge=1, description="Monthly cut-offs in the training set; the latest is the test.")
    test_size: float = Field(
        default=0.3, gt=0, lt=1, description="Held-out share where there is no time (snapshots, leads)."
    )
    calibration: Literal["isotonic", "sigmoid", "none"] = "isotonic"
    top_categories: int = Field(default=5, ge=0, description="Propensity: one model per top-K category.")
    discount_rate_monthly: float = Field(default=0.01, ge=0, lt=1, description="CLV: monthly discount rate.")
    penalizers: list[float] = Field(default_factory=lambda: [0.0, 0.001, 0.01, 0.1])
    feed_btyd: bool = Field(default=True, description="Give the gradient-boosted model the BG/NBD outputs.")
    train_horizon_days: int | None = Field(
        default=None,
        ge=1,
        description="CLV: horizon of the training labels when the history is too short for training windows "
        "of the full horizon before the test cut-off (the BG/NBD curve scales the prediction up). Default: "
        "horizon_days.",
    )
    test_cutoff: str | None = Field(
        default=None,
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="Fixed test cut-off (YYYY-MM-DD); default the latest month start with a full label window.",
    )
    evaluate_on: Literal["test", "validation"] = Field(
        default="test",
        description="validation: score on the window just before the test window (time split) or on a part of "
        "the training split (snapshots), so that a search never sees the test window. Set by experiments.",
    )
    validation_cutoff: str | None = Field(
        default=None,
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="Validation cut-off (YYYY-MM-DD); default the month start one horizon before the test cut-off.",
    )
    validation_horizon_days: int | None = Field(
        default=None, ge=1, description="Label window of the validation cut-off; default horizon_days."
    )
    exclude_features: list[str] = Field(
        default_factory=list,
        description="Feature set: model inputs to leave out, as shell patterns (e.g. 'spend_last_*', 'attr_*').",
    )
    score_tiers: dict[str, float] = Field(
        default_factory=lambda: {"hot": 70.0, "warm": 40.0},
        description="Lead score: lowest 0-100 score of each tier; below the last is cold.",
    )
    top_reasons: int = Field(default=3, ge=0)
    xgboost: XGBoostParams = XGBoostParams()
    guards: Guards = Guards()
    uplift: UpliftSettings | None = Field(default=None, description="Uplift family only (configs/models/uplift.yaml).")
    macro: MacroSettings | None = Field(
        default=None, description="Macro segment family only (configs/models/macro_segment.yaml)."
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such model config file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return raw


def load_model_config(family: str, dataset: str | None = None, path: Path | None = None) -> ModelConfig:
    """The family's config, with the overrides its file lists for ``dataset`` applied.

    ``path`` is either one family's config (it has ``family:``; it replaces the shipped file) or a file of
    sections per family (``churn: {...}``, ``clv: {...}``), each merged over the shipped config and its
    dataset overrides, so that one file can tune every family of ``make train MODEL=all``.
    """
    from training.families import check_name, names

    check_name(family)
    shipped = MODEL_CONFIG_DIR / f"{family}.yaml"
    raw = _read_yaml(path or shipped)
    sections: dict[str, Any] = {}
    if path is not None and "family" not in raw:
        unknown = sorted(set(raw) - set(names()))
        if unknown or not raw:
            raise ConfigError(
                f"{path}: a model config needs 'family:', or sections named after families "
                f"({', '.join(names())}); unknown key(s) {unknown}"
            )
        section = raw.get(family) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: section '{family}' must be a mapping of model-config keys")
        sections, raw = section, _read_yaml(shipped)
    overrides: dict[str, Any] = (raw.pop("datasets", None) or {}).get(dataset or "", {}) or {}
    merged = _merge(_merge(raw, overrides), sections)
    merged.setdefault("family", family)
    where_file = path or shipped
    if merged["family"] != family:
        raise ConfigError(f"{where_file}: family is '{merged['family']}' but the file is for '{family}'")
    try:
        return ModelConfig.model_validate(merged)
    except ValidationError as exc:
        where = f" (with the overrides for dataset '{dataset}')" if overrides else ""
        where += f" (section '{family}')" if sections else ""
        raise ConfigError(f"{where_file}{where}: {format_validation_error(exc)}") from exc


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: an override replaces a value, or merges into a mapping."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
