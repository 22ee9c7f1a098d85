"""Uplift: how much each arm of a randomised campaign changes each customer's outcome, the next best
action per customer, and micro segments.

For each treatment arm against the control arm and each outcome (visit, conversion, spend), the
conditional average treatment effect tau(x) = E[Y | x, arm] - E[Y | x, control] is learnt from a
randomised campaign log (the ``campaigns`` table) by scikit-uplift's learners on gradient boosting:

- ``t_learner``: two models, one per group, uplift = their difference (``TwoModels``; the "two-model
  approach", Radcliffe 2007; the T-learner of Künzel et al. 2019, PNAS 116:4156);
- ``class_transformation``: one classifier of Z = Y*T + (1-Y)(1-T), uplift = 2 P(Z=1) - 1
  (Jaskowski & Jaroszewicz 2012; valid for a 50/50 split), and for spend the transformed outcome
  Y* = Y (T - p) / (p (1 - p)) regressed on x (``ClassTransformationReg``; Athey & Imbens 2015);
- ``s_learner``: one model with the arm as a feature, uplift = f(x, 1) - f(x, 0) (``SoloModel``;
  Künzel et al. 2019). scikit-uplift has no X-learner (Künzel et al. 2019): it is not a candidate
  (README, "Uplift", says why scikit-uplift and not causalml);
- baselines: ``random`` targeting, and a ``response_model`` (P(outcome) ignoring the arm, what
  most teams target by).

The winner per (arm, outcome) is the best Qini AUC on a validation split of the training part
(never the test split); ties go to the baselines. A baseline that wins means the uplift model is no
better than targeting at random or by response: the family says so, and the model then gives every
customer the arm's average effect on the training part (random), or that effect scaled by the
customer's response probability (response model), so targeting falls back to what the baseline
supports. The next best action, the IPW evaluation of that policy and the micro segments are pure
functions here for the serving side to call (:func:`next_best_action`, :func:`evaluate_policies`,
:func:`micro_segments`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from features.attributes import AttributeEncoder, attribute_slug
from features.campaigns import attribute_columns, outcomes_from_transactions, randomisation_check, treatment_arms
from features.config import CAMPAIGN_COLUMNS, CAMPAIGN_OUTCOMES, CampaignTableConfig, DatasetConfig
from features.io import Dataset, read_raw_table, table_path
from features.validate import ROW, NoUsableRowsError, check_table
from training.candidates import Choice, choose
from training.common import InputRowsError, Trained, one_blas_thread, params_for_logging, xgb_params
from training.config import MicroSegmentRules, ModelConfig, UpliftSettings
from training.evaluation import Report, bootstrap_intervals, evaluate_uplift, qini_auc
from training.families import Family, registered_name
from training.guards import TrainingRefusedError, check_leakage

NAME = "uplift"
BASELINES = ("random", "response_model")
LEARNERS = ("t_learner", "class_transformation", "s_learner")
CANDIDATES = (*BASELINES, *LEARNERS)  # simplest first: a tie goes to a baseline
NO_ACTION = "no_action"


def arm_slug(arm: str) -> str:
    """An arm's name in column names: 'Womens E-Mail' -> 'womens_e_mail'."""
    return attribute_slug(arm)


def uplift_column(arm: str, outcome: str, primary_outcome: str) -> str:
    """``uplift_<arm>`` on the primary outcome, ``uplift_<outcome>_<arm>`` on the others."""
    return f"uplift_{arm_slug(arm)}" if outcome == primary_outcome else f"uplift_{outcome}_{arm_slug(arm)}"


def output_columns(arms: Sequence[str], outcomes: Sequence[str], primary_outcome: str) -> list[str]:
    """The columns the logged model returns per customer, in order."""
    columns = ["customer_id", "response_probability"]
    columns += [uplift_column(a, o, primary_outcome) for a in arms for o in outcomes]
    columns += ["next_best_action", "expected_incremental_value", "micro_segment", "do_not_disturb"]
    return columns + [f"micro_segment_{arm_slug(a)}" for a in arms]


# ----------------------------------------------------------------------------------------------
# Decisions: pure functions of the estimates


def next_best_action(
    uplift_by_arm: Mapping[str, np.ndarray], value_per_unit: float | np.ndarray, costs: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per customer, the arm with the highest expected incremental value, uplift x value per unit
    (1 for spend; a customer's value for a conversion) minus the arm's cost per customer sent, and
    that value; ``no_action`` with value 0 when no arm's value is positive. Ties go to the first arm."""
    arms = list(uplift_by_arm)
    values = np.column_stack(
        [np.asarray(uplift_by_arm[a], dtype=float) * value_per_unit - costs.get(a, 0.0) for a in arms]
    )
    best = np.argmax(values, axis=1)
    value = values[np.arange(len(values)), best]
    action = np.where(value > 0, np.asarray(arms, dtype=object)[best], NO_ACTION)
    return action, np.where(value > 0, value, 0.0)


def micro_segments(uplift: np.ndarray, response: np.ndarray, rules: MicroSegmentRules) -> np.ndarray:
    """The four groups of uplift modelling (Radcliffe & Surry 2011, "Real-world uplift modelling with
    significance-based uplift trees"): do-not-disturb (the arm lowers the outcome: uplift at most
    ``do_not_disturb_max_uplift``), persuadable (uplift at least ``persuadable_min_uplift``), and
    among the rest sure things (they respond anyway: response probability at least
    ``sure_thing_min_response``) and lost causes."""
    uplift, response = np.asarray(uplift, dtype=float), np.asarray(response, dtype=float)
    segment = np.where(response >= rules.sure_thing_min_response, "sure_thing", "lost_cause").astype(object)
    segment[uplift >= rules.persuadable_min_uplift] = "persuadable"
    segment[uplift <= rules.do_not_disturb_max_uplift] = "do_not_disturb"
    return segment


def policy_value(actions: np.ndarray, arm: np.ndarray, outcome: np.ndarray, propensity: Mapping[str, float]) -> float:
    """Inverse propensity weighting (Horvitz-Thompson; Dudík, Langford & Li 2011, eq. 1): the mean
    outcome had every customer received ``actions``, from randomised data, (1/n) sum 1[A_i = pi(x_i)]
    Y_i / e(A_i), with e the probability of each arm by design. Unbiased when every arm has e > 0."""
    weights = 1.0 / pd.Series(arm).map(propensity).to_numpy(dtype=float)
    return float(np.mean((np.asarray(actions) == np.asarray(arm)) * np.asarray(outcome, dtype=float) * weights))


def _policy_figures(
    policies: Mapping[str, np.ndarray], arm: np.ndarray, outcomes: Mapping[str, np.ndarray], control: int
) -> dict[str, dict[str, float]]:
    """Per policy: incremental outcomes per 1,000 customers over 'no one' (IPW, :func:`policy_value`
    with the weights computed once) and sends per 1,000. Arms, actions and ``control`` are integer
    codes of the same labels (:func:`_coded`)."""
    weights = 1.0 / (np.bincount(arm) / len(arm))[arm]
    in_control = arm == control
    out: dict[str, dict[str, float]] = {}
    for name, actions in policies.items():
        matched = actions == arm
        row = {"sent_per_1000": 1000.0 * float(np.mean(actions != control))}
        for outcome, y in outcomes.items():
            gain = np.mean((matched * weights - in_control * weights) * y)
            row[f"incremental_{outcome}_per_1000"] = 1000.0 * float(gain)
        out[name] = row
    return out


def _coded(
    policies: Mapping[str, np.ndarray], arm: np.ndarray, control: str
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """Policies' actions, the arms and the control as codes of one label list: the bootstrap then
    compares integers, not strings."""
    parts = [np.asarray(arm, dtype=object), *(np.asarray(p, dtype=object) for p in policies.values())]
    codes, _ = pd.factorize(pd.Series(np.concatenate([*parts, np.array([control], dtype=object)]), dtype=object))
    coded = np.split(codes[:-1], np.cumsum([len(p) for p in parts])[:-1])
    return dict(zip(policies, coded[1:], strict=True)), coded[0], int(codes[-1])


def evaluate_policies(
    policies: Mapping[str, np.ndarray],
    arm: np.ndarray,
    outcomes: Mapping[str, np.ndarray],
    control: str,
    *,
    bootstrap: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Each policy (an action per customer: an arm name or ``control`` for none) evaluated on
    randomised rows by IPW (:func:`policy_value`, the arms' shares as propensities): incremental
    outcome per 1,000 customers against sending no one, sends per 1,000 and incremental outcome per
    send, with percentile bootstrap 95% intervals (customers resampled with their arm and policy)."""
    actions, arm_codes, control_code = _coded(policies, arm, control)
    point = _policy_figures(actions, arm_codes, outcomes, control_code)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[dict[str, float]]] = {name: [] for name in policies}
    for _ in range(bootstrap):
        rows = rng.integers(0, len(arm_codes), len(arm_codes))
        resampled = _policy_figures(
            {n: a[rows] for n, a in actions.items()},
            arm_codes[rows],
            {o: y[rows] for o, y in outcomes.items()},
            control_code,
        )
        for name, figures in resampled.items():
            draws[name].append(figures)
    table = []
    for name, figures in point.items():
        row: dict[str, Any] = {"policy": name, **figures}
        for outcome in outcomes:
            key = f"incremental_{outcome}_per_1000"
            if figures["sent_per_1000"] > 0:
                row[f"incremental_{outcome}_per_send"] = figures[key] / figures["sent_per_1000"]
            if draws[name]:
                row[f"{key}_lo"], row[f"{key}_hi"] = np.percentile([d[key] for d in draws[name]], [2.5, 97.5])
        table.append(row)
    return pd.DataFrame(table)


def policy_actions(action: np.ndarray, arms: Sequence[str], control: str, seed: int) -> dict[str, np.ndarray]:
    """The policies the next best action is compared with: itself, everyone gets arm X, no one, and
    an arm or none at random per customer."""
    n = len(action)
    options = np.asarray([*arms, control], dtype=object)
    policies = {"next_best_action": np.where(action == NO_ACTION, control, action).astype(object)}
    policies |= {f"everyone_{arm_slug(a)}": np.full(n, a, dtype=object) for a in arms}
    policies["no_one"] = np.full(n, control, dtype=object)
    policies["random"] = options[np.random.default_rng(seed).integers(0, len(options), n)]
    return policies


# ----------------------------------------------------------------------------------------------
# Learners


def _booster(config: ModelConfig, binary: bool) -> Any:
    from xgboost import XGBClassifier, XGBRegressor

    # One thread: these boosters are small (100 trees on ~30k rows, under a second), and on a shared
    # 2-core machine OpenMP threads that wait for each other made a fit 10-20x slower (measured).
    params = xgb_params(config) | {"random_state": config.seed, "n_jobs": 1}
    if binary:
        return XGBClassifier(**params, objective="binary:logistic")
    return XGBRegressor(**params, objective="reg:squarederror")


@dataclass
class UpliftScorer:
    """A fitted candidate of one (arm, outcome): ``uplift(x)`` is its per-customer effect estimate,
    ``rank(x)`` the score its Qini curve is drawn by (the same, except for the baselines)."""

    name: str
    binary: bool
    estimator: Any = None
    average_effect: float = 0.0  # on the rows it was fitted on
    mean_response: float = 1.0
    seed: int = 0

    def rank(self, x: np.ndarray) -> np.ndarray:
        if self.name == "random":
            return np.random.default_rng(self.seed).random(len(x))
        if self.name == "response_model":
            return self._response(x)
        return np.asarray(self.estimator.predict(x), dtype=float)

    def uplift(self, x: np.ndarray) -> np.ndarray:
        """Random: the average effect for everyone; response model: the average effect in
        proportion to the response (the assumption behind targeting by response)."""
        if self.name == "random":
            return np.full(len(x), self.average_effect)
        if self.name == "response_model":
            return self.average_effect * self._response(x) / self.mean_response
        return self.rank(x)

    def _response(self, x: np.ndarray) -> np.ndarray:
        if self.binary:
            return np.asarray(self.estimator.predict_proba(x)[:, 1], dtype=float)
        return np.clip(np.asarray(self.estimator.predict(x), dtype=float), 0.0, None)


def fit_candidate(name: str, x: np.ndarray, y: np.ndarray, t: np.ndarray, config: ModelConfig) -> UpliftScorer:
    """One candidate fitted on rows of one arm (t = 1) and the control (t = 0)."""
    from sklift.models import ClassTransformation, ClassTransformationReg, SoloModel, TwoModels

    binary = bool(np.isin(y, (0.0, 1.0)).all())
    effect = float(y[t == 1].mean() - y[t == 0].mean())
    scorer = UpliftScorer(name, binary, average_effect=effect, seed=config.seed)
    if name == "random":
        return scorer
    if name == "response_model":
        scorer.estimator = _booster(config, binary).fit(x, y)
        scorer.mean_response = max(float(np.mean(scorer._response(x))), 1e-12)
        return scorer
    if name == "t_learner":
        model: Any = TwoModels(_booster(config, binary), _booster(config, binary), method="vanilla")
    elif name == "class_transformation":
        share = float(t.mean())
        model = (
            ClassTransformation(_booster(config, True))
            if binary
            else ClassTransformationReg(_booster(config, False), propensity_val=share)
        )
    elif name == "s_learner":
        model = SoloModel(_booster(config, binary), method="dummy")
    else:
        raise ValueError(f"unknown uplift candidate '{name}': use one of {list(CANDIDATES)}")
    scorer.estimator = model.fit(x, y, t)
    return scorer


def candidate_order(config: ModelConfig) -> tuple[str, ...]:
    order = tuple(n for n in CANDIDATES if config.candidates is None or n in config.candidates)
    if not any(n in LEARNERS for n in order) or not set(BASELINES) <= set(order):
        raise TrainingRefusedError(
            f"uplift candidates {config.candidates} need both baselines {list(BASELINES)} and at least one of "
            f"{list(LEARNERS)}: fix candidates in the model config"
        )
    return order


# ----------------------------------------------------------------------------------------------
# Data: the campaign log as arrays


@dataclass
class CampaignData:
    """A checked campaign log ready to learn from: encoded attributes, arm per row, outcomes."""

    rows: pd.DataFrame  # the checked frame (contract columns, attributes, _row) of the used arms
    x: np.ndarray
    arm: np.ndarray
    outcomes: dict[str, np.ndarray]
    arms: list[str]
    control: str
    encoder: AttributeEncoder
    train: np.ndarray  # positions
    test: np.ndarray
    warnings: list[str] = field(default_factory=list)
    leakage: pd.Series | None = None  # each attribute's own ROC AUC of the primary outcome


def campaign_rows(dataset: Dataset, settings: UpliftSettings) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The log's rows of the used arms with every outcome there is (from the transactions when the
    log has none), the outcomes to model, and warnings for configured outcomes that are absent."""
    table = dataset.config.campaigns
    if dataset.campaigns is None or table is None:
        raise TrainingRefusedError(
            f"dataset '{dataset.config.name}' has no campaigns table: add one to {dataset.config.source_file} "
            "(docs/data-contract.md, 'campaigns')"
        )
    frame = dataset.campaigns.frame
    if not any(o in frame.columns for o in CAMPAIGN_OUTCOMES):
        if dataset.transactions is None:
            raise TrainingRefusedError("campaign outcomes need outcome columns or a transactions table")
        frame = outcomes_from_transactions(frame, dataset.transactions.frame, table.outcome_window_days)
    arms = treatment_arms(frame, table)
    frame = frame.loc[frame["arm"].astype(str).isin([table.control_arm, *arms])].reset_index(drop=True)
    outcomes: list[str] = [o for o in settings.outcomes if o in frame.columns]
    if settings.primary_outcome not in outcomes:
        raise TrainingRefusedError(
            f"the primary outcome '{settings.primary_outcome}' is not in the campaign log of '{dataset.config.name}' "
            f"(it has {[o for o in CAMPAIGN_OUTCOMES if o in frame.columns]}): set uplift.primary_outcome in the "
            "model config"
        )
    absent = [f"outcome '{o}' is not in the campaign log: not modelled" for o in settings.outcomes if o not in outcomes]
    return frame, outcomes, absent


def _strata(arm: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Arm x outcome (spend: bought or not) for stratified splits."""
    return np.char.add(arm.astype(str), (np.asarray(y) > 0).astype(int).astype(str))


def prepare(dataset: Dataset, config: ModelConfig) -> CampaignData:
    """Rows, a split stratified by arm and primary outcome (test_size), the encoder fitted on the
    training part and the encoded attributes of every row."""
    from sklearn.model_selection import train_test_split

    settings = config.uplift or UpliftSettings()
    table = dataset.config.campaigns
    assert table is not None
    frame, outcomes, warnings = campaign_rows(dataset, settings)
    arm = frame["arm"].astype(str).to_numpy(dtype=object)
    y = {o: frame[o].to_numpy(dtype=float) for o in outcomes}
    missing = [o for o in outcomes if np.isnan(y[o]).any()]
    if missing:
        raise TrainingRefusedError(f"campaign outcomes {missing} have missing values: fill or quarantine them")
    positions = np.arange(len(frame))
    train, test = train_test_split(
        positions,
        test_size=config.test_size,
        stratify=_strata(arm, y[settings.primary_outcome]),
        random_state=config.seed,
    )
    columns = attribute_columns(frame)
    # An outcome recorded as an attribute (a post-send column) would make uplift look too good.
    primary = y[settings.primary_outcome][train]
    leakage = check_leakage(frame.iloc[train][columns], pd.Series(primary > 0), config.guards, seed=config.seed)
    encoder = AttributeEncoder(max_levels=dataset.config.features.max_attribute_levels).fit(frame.iloc[train], columns)
    x = encoder.transform(frame).to_numpy(dtype=float)
    arms = treatment_arms(frame, table)
    split = (np.sort(train), np.sort(test))
    return CampaignData(frame, x, arm, y, arms, table.control_arm, encoder, *split, warnings, leakage)


# ----------------------------------------------------------------------------------------------
# Choosing per (arm, outcome)


@dataclass
class ArmOutcome:
    """Every candidate of one (arm, outcome): validation and test reports and the winner, fitted on
    the whole training part."""

    arm: str
    outcome: str
    choice: Choice
    winner: UpliftScorer
    note: str = ""


def _pair_rows(data: CampaignData, positions: np.ndarray, arm: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``arm`` and the control among ``positions``, and t (1 = arm)."""
    chosen = positions[np.isin(data.arm[positions], [arm, data.control])]
    return chosen, (data.arm[chosen] == arm).astype(float)


@dataclass
class Validation:
    """Each candidate's report on the validation rows, and what is needed to bootstrap one."""

    reports: dict[str, Report]
    y: np.ndarray
    t: np.ndarray
    ranks: dict[str, np.ndarray]


def validate_candidates(
    data: CampaignData, arm: str, outcome: str, config: ModelConfig, order: Sequence[str]
) -> Validation:
    """Each candidate fitted on part of the training part and scored on the rest (validation_size)."""
    from sklearn.model_selection import train_test_split

    settings = config.uplift or UpliftSettings()
    rows, t = _pair_rows(data, data.train, arm)
    y = data.outcomes[outcome][rows]
    fit, held = train_test_split(
        np.arange(len(rows)), test_size=settings.validation_size, stratify=_strata(t, y), random_state=config.seed
    )
    ranks = {
        name: fit_candidate(name, data.x[rows[fit]], y[fit], t[fit], config).rank(data.x[rows[held]]) for name in order
    }
    reports = {name: evaluate_uplift(y[held], rank, t[held], figures=False) for name, rank in ranks.items()}
    return Validation(reports, y[held], t[held], ranks)


def choose_candidate(
    validation: Validation, order: Sequence[str], settings: UpliftSettings, seed: int
) -> tuple[str, str]:
    """The best Qini AUC on validation (:func:`training.candidates.choose`), except that an uplift
    learner must also beat random with 95% confidence there (its bootstrap interval above 0):
    otherwise the better baseline wins, and the uplift model does not drive targeting."""
    where = f"a {settings.validation_size:g} validation split of the training part"
    winner, reason = choose(validation.reports, order, where)
    if winner not in LEARNERS or settings.bootstrap == 0:
        return winner, reason
    interval = bootstrap_intervals(validation.y, validation.ranks[winner], validation.t, settings.bootstrap, seed)
    low, high = interval["qini_auc_lo"], interval["qini_auc_hi"]
    if low > 0:
        return winner, f"{reason} (95% interval [{low:.4f}, {high:.4f}])"
    baseline, _ = choose({b: validation.reports[b] for b in BASELINES}, BASELINES, where)
    return baseline, f"{reason}, but its 95% interval [{low:.4f}, {high:.4f}] includes random (0): {baseline} instead"


def choose_for(data: CampaignData, arm: str, outcome: str, config: ModelConfig) -> ArmOutcome:
    """The winner of (arm, outcome) on validation; then every candidate refitted on the training
    part and scored on the test part (the winner and the baselines with bootstrap intervals and
    figures). Says plainly when a baseline wins or the winner's interval includes random."""
    settings = config.uplift or UpliftSettings()
    order = candidate_order(config)
    validation = validate_candidates(data, arm, outcome, config, order)
    winner, reason = choose_candidate(validation, order, settings, config.seed)
    rows, t = _pair_rows(data, data.train, arm)
    test_rows, t_test = _pair_rows(data, data.test, arm)
    y, y_test = data.outcomes[outcome][rows], data.outcomes[outcome][test_rows]
    fitted = {name: fit_candidate(name, data.x[rows], y, t, config) for name in order}
    ranks = {name: fitted[name].rank(data.x[test_rows]) for name in order}
    test: dict[str, Report] = {}
    for name in order:
        shown = name == winner or name in BASELINES
        test[name] = evaluate_uplift(
            y_test,
            ranks[name],
            t_test,
            label=outcome,
            compare={b: ranks[b] for b in BASELINES if b != name} if name == winner else None,
            figures=name == winner,
            bootstrap=settings.bootstrap if shown else 0,
            seed=config.seed,
        )
    choice = Choice(winner, f"{arm}, {outcome}: {reason}", validation.reports, test, BASELINES)
    return ArmOutcome(arm, outcome, choice, fitted[winner], _plain_note(arm, outcome, choice))


def choose_all(
    data: CampaignData, config: ModelConfig, workers: int | None = None
) -> dict[tuple[str, str], ArmOutcome]:
    """:func:`choose_for` of every (arm, outcome), ``workers`` at once (default: one per core, at most 8).

    Each pair's work is its own: boosters on one thread each, seeded splits and bootstraps, no state
    shared between pairs; xgboost's fits and numpy's sorts release the GIL, so threads use the cores
    and the results are those of one pair after the other (a test holds them equal). Hillstrom's
    six pairs on 2 cores: 40-44 s -> 23-30 s for the family, every metric and table equal.
    """
    from concurrent.futures import ThreadPoolExecutor

    pairs = [(arm, outcome) for arm in data.arms for outcome in data.outcomes]
    workers = min(len(pairs), workers or min(os.cpu_count() or 1, 8))
    if workers < 2:
        return {(arm, outcome): choose_for(data, arm, outcome, config) for arm, outcome in pairs}
    # the pairs' blocks that quieten warnings hold the process's filters one at a time (features.quiet)
    with ThreadPoolExecutor(workers, thread_name_prefix="uplift") as pool:
        chosen = list(pool.map(lambda pair: choose_for(data, pair[0], pair[1], config), pairs))
    return dict(zip(pairs, chosen, strict=True))


def _plain_note(arm: str, outcome: str, choice: Choice) -> str:
    """What the run must say when the uplift model should not drive targeting."""
    winner = choice.winner
    if winner in BASELINES:
        fallback = "the arm's average effect" + (
            " scaled by the response probability" if winner == "response_model" else ""
        )
        what = "random targeting" if winner == "random" else "the response model"
        return f"uplift no better than {what} for {arm}, {outcome}: not used for targeting ({fallback} instead)"
    report = choice.test[winner]
    if report.metrics.get("qini_auc_lo", 1.0) <= 0:
        return (
            f"{arm}, {outcome}: {winner}'s Qini AUC on the test split {report.primary:.4f} has a 95% interval "
            f"[{report.metrics['qini_auc_lo']:.4f}, {report.metrics['qini_auc_hi']:.4f}] that includes random (0)"
        )
    response = choice.test.get("response_model")
    if response is not None and report.primary < response.primary:
        return (
            f"{arm}, {outcome}: {winner} ranks below the response model on the test split "
            f"({report.primary:.4f} < {response.primary:.4f})"
        )
    return ""


# ----------------------------------------------------------------------------------------------
# The logged model


class UpliftModel(PythonModel):
    """Scores raw rows of the campaign file (as the file has them; the arm and outcome columns are
    not needed) with the cleaning rules, the encoder and the winner of each (arm, outcome) it was
    trained with: per customer the uplift of each arm on each outcome, the response probability,
    the next best action and its expected incremental value, and the micro segments
    (:func:`output_columns`)."""

    def __init__(
        self,
        dataset_config: DatasetConfig,
        encoder: AttributeEncoder,
        arms: list[str],
        scorers: dict[tuple[str, str], UpliftScorer],
        response: UpliftScorer,
        settings: UpliftSettings,
    ) -> None:
        self.dataset_config = dataset_config
        self.encoder = encoder
        self.arms = arms
        self.scorers = scorers
        self.response = response
        self.settings = settings
        self.outcomes = list(dict.fromkeys(o for _, o in scorers))

    @property
    def table(self) -> CampaignTableConfig:
        table = self.dataset_config.campaigns
        assert table is not None
        return table

    def scoring_table(self) -> CampaignTableConfig:
        """The campaign table as scoring reads it: the id only; the arm, send date and outcome
        columns are left out (a customer to score has not been sent anything yet)."""
        kept = {k: v for k, v in self.table.columns.items() if k == "customer_id"}
        dropped = [v for k, v in self.table.columns.items() if k != "customer_id"]
        return self.table.model_copy(update={"columns": kept, "exclude": [*self.table.exclude, *dropped]})

    def clean(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Rows as the file has them -> the id and cleaned attributes; bad rows fail, named."""
        table = self.scoring_table()
        frame = raw.reset_index(drop=True).copy()
        id_name = table.columns.get("customer_id")
        if id_name is not None and id_name not in frame.columns:
            raise ValueError(f"rows need the id column '{id_name}'; got {list(raw.columns)}")
        for name in [*table.columns.values(), *table.exclude]:
            if name not in frame.columns:
                frame[name] = pd.NA
        frame[ROW] = np.arange(1, len(frame) + 1)
        try:
            checked = check_table(frame, table, self.dataset_config, "campaigns", "request")
        except NoUsableRowsError as exc:
            raise InputRowsError([p for p in exc.problems if p.quarantined]) from exc
        if not checked.quarantine.empty:
            raise InputRowsError([p for p in checked.problems if p.quarantined])
        return checked.frame.reset_index(drop=True)

    def estimates(self, x: np.ndarray) -> pd.DataFrame:
        """Decisions from encoded attributes: uplift per arm and outcome, response, action, segments."""
        settings, primary = self.settings, self.settings.primary_outcome
        out = {"response_probability": self.response.rank(x)}
        for (arm, outcome), scorer in self.scorers.items():
            out[uplift_column(arm, outcome, primary)] = scorer.uplift(x)
        valued = {a: out[uplift_column(a, settings.action_outcome, primary)] for a in self.arms}
        action, value = next_best_action(valued, settings.value_per_unit, settings.costs)
        segments = {
            a: micro_segments(out[uplift_column(a, primary, primary)], out["response_probability"], settings.segments)
            for a in self.arms
        }
        best_uplift = np.argmax(np.column_stack([out[uplift_column(a, primary, primary)] for a in self.arms]), axis=1)
        focus = np.where(action == NO_ACTION, np.asarray(self.arms, dtype=object)[best_uplift], action)
        by_arm = np.column_stack([segments[a] for a in self.arms])
        shown = by_arm[np.arange(len(x)), [self.arms.index(a) for a in focus]] if len(x) else np.array([], dtype=object)
        frame = pd.DataFrame(out)
        frame["next_best_action"] = action
        frame["expected_incremental_value"] = value
        frame["micro_segment"] = shown
        frame["do_not_disturb"] = (by_arm == "do_not_disturb").all(axis=1) if len(x) else np.array([], dtype=bool)
        for arm in self.arms:
            frame[f"micro_segment_{arm_slug(arm)}"] = segments[arm]
        return frame

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        cleaned = self.clean(model_input)
        x = self.encoder.transform(cleaned).to_numpy(dtype=float)
        scored = self.estimates(x)
        scored.insert(0, "customer_id", cleaned["customer_id"].astype(str).to_numpy())
        return scored


# ----------------------------------------------------------------------------------------------
# Training


def _mean_report(reports: list[Report]) -> Report:
    """The primary metric over several arms: each metric's mean; tables and figures of the first."""
    names = [k for k in reports[0].metrics if all(k in r.metrics for r in reports)]
    metrics = {k: float(np.mean([r.metrics[k] for r in reports])) for k in names}
    return Report("uplift", "qini_auc", metrics, reports[0].tables, reports[0].figures)


def primary_arms(data: CampaignData, settings: UpliftSettings) -> list[str]:
    if settings.primary_arm is None:
        return list(data.arms)
    if settings.primary_arm not in data.arms:
        raise TrainingRefusedError(
            f"uplift.primary_arm '{settings.primary_arm}' is not an arm of the campaign log ({data.arms}): "
            "fix it in the model config"
        )
    return [settings.primary_arm]


def primary_reports(
    results: Mapping[tuple[str, str], ArmOutcome], arms: list[str], outcome: str
) -> tuple[Report, dict[str, Report]]:
    """The winner's and each baseline's test report on the primary outcome: of the primary arm, or
    averaged over the arms (the default when no primary arm is configured)."""
    chosen = [results[(a, outcome)].choice for a in arms]
    report = _mean_report([c.test[c.winner] for c in chosen])
    baselines = {b: _mean_report([c.test[b] for c in chosen]) for b in BASELINES}
    return report, baselines


def candidates_table(results: Mapping[tuple[str, str], ArmOutcome]) -> pd.DataFrame:
    """Every candidate of every (arm, outcome): validation and test figures, and the winner."""
    rows = []
    for (arm, outcome), result in results.items():
        for name, test in result.choice.test.items():
            rows.append(
                {
                    "arm": arm,
                    "outcome": outcome,
                    "candidate": name,
                    "baseline": name in BASELINES,
                    "validation_qini_auc": result.choice.validation[name].primary,
                    **{f"test_{k}": v for k, v in test.metrics.items() if k.startswith(("qini", "uplift_at"))},
                    "winner": name == result.choice.winner,
                }
            )
    return pd.DataFrame(rows)


def summary_metrics(results: Mapping[tuple[str, str], ArmOutcome], policy: pd.DataFrame) -> dict[str, float]:
    """Flat metrics for MLflow: each (arm, outcome)'s winner and baselines, and the policy table."""
    metrics: dict[str, float] = {}
    for (arm, outcome), result in results.items():
        for name in (result.choice.winner, *BASELINES):
            who = "winner" if name == result.choice.winner else name
            for key, value in result.choice.test[name].metrics.items():
                if key.startswith(("qini_auc", "uplift_at_30")):
                    metrics[f"{arm_slug(arm)}_{outcome}_{who}_{key}"] = value
    for row in policy.to_dict("records"):
        for key, value in row.items():
            if key != "policy" and pd.notna(value):
                metrics[f"policy_{row['policy']}_{key}"] = float(value)
    return metrics


def fit_response(data: CampaignData, outcome: str, config: ModelConfig) -> UpliftScorer:
    """P(outcome) ignoring the arm, on every training row: the response estimate of the segments."""
    return fit_candidate(
        "response_model",
        data.x[data.train],
        data.outcomes[outcome][data.train],
        (data.arm[data.train] != data.control).astype(float),
        config,
    )


def policy_table(model: UpliftModel, data: CampaignData, seed: int, bootstrap: int) -> pd.DataFrame:
    """The next best action against everyone-gets-arm-X, no one and random on the test rows (IPW)."""
    scored = model.estimates(data.x[data.test])
    policies = policy_actions(scored["next_best_action"].to_numpy(dtype=object), data.arms, data.control, seed)
    outcomes = {o: y[data.test] for o, y in data.outcomes.items()}
    return evaluate_policies(policies, data.arm[data.test], outcomes, data.control, bootstrap=bootstrap, seed=seed)


def raw_rows(dataset: Dataset, row_numbers: np.ndarray) -> pd.DataFrame:
    """Rows as the file has them, without the arm and outcome columns (what scoring receives)."""
    table = dataset.config.campaigns
    assert table is not None
    raw = (
        read_raw_table(table_path(dataset.config, table), table).set_index(ROW).loc[row_numbers].reset_index(drop=True)
    )
    dropped = [v for k, v in table.columns.items() if k in CAMPAIGN_COLUMNS and k != "customer_id"]
    return raw.drop(columns=dropped)


def _rescore(dataset: Dataset, data: CampaignData, arms: list[str], outcome: str, champion: Any) -> float:
    """Another version (the current champion) on this run's test rows: its primary Qini AUC."""
    scored = champion.predict(None, raw_rows(dataset, data.rows[ROW].to_numpy()[data.test]))
    values = []
    for arm in arms:
        pair = np.isin(data.arm[data.test], [arm, data.control])
        t = (data.arm[data.test][pair] == arm).astype(float)
        score = scored[f"uplift_{arm_slug(arm)}"].to_numpy(dtype=float)[pair]
        values.append(qini_auc(data.outcomes[outcome][data.test][pair], score, t))
    return float(np.mean(values))


def _params(config: ModelConfig, data: CampaignData) -> dict[str, Any]:
    settings = config.uplift or UpliftSettings()
    flat = {k: v for k, v in params_for_logging(config).items() if k != "uplift"}
    flat |= {f"uplift_{k}": v for k, v in settings.model_dump(exclude={"segments"}).items()}
    flat |= {f"segment_{k}": v for k, v in settings.segments.model_dump().items()}
    return flat | {"arms": data.arms, "control_arm": data.control}


def randomisation_warnings(dataset: Dataset, data: CampaignData) -> tuple[pd.DataFrame, list[str]]:
    """The randomisation check's table on the rows used, and a warning per imbalanced attribute."""
    table = dataset.config.campaigns
    assert table is not None
    balance = randomisation_check(
        data.rows, data.control, data.arms, attribute_columns(data.rows), table.max_imbalance_smd
    )
    warnings = [
        f"randomisation check: '{r.attribute}' differs between '{r.arm}' and the control (SMD {r.smd:+.2f}): "
        "uplift estimates may be biased"
        for r in balance.loc[balance["imbalanced"]].itertuples()
    ]
    return balance, warnings


def _with_other_figures(report: Report, results: Mapping[tuple[str, str], ArmOutcome], first: tuple[str, str]) -> None:
    """The primary report's figures plus each other (arm, outcome)'s, named after it."""
    for (arm, outcome), result in results.items():
        if (arm, outcome) != first:
            winner = result.choice.test[result.choice.winner]
            report.figures |= {f"{n[:-4]}_{arm_slug(arm)}_{outcome}.png": f for n, f in winner.figures.items()}


@one_blas_thread
def train(dataset: Dataset, config: ModelConfig) -> Trained:
    """Every candidate per (arm, outcome), chosen on validation; the model of the winners; the
    primary report, the baselines, the policy evaluation and the tables (pure: no MLflow, no files)."""
    settings = config.uplift or UpliftSettings()
    data = prepare(dataset, config)
    arms = primary_arms(data, settings)
    results = choose_all(data, config)
    winners = {k: r.winner for k, r in results.items()}
    response = fit_response(data, settings.primary_outcome, config)
    model = UpliftModel(dataset.config, data.encoder, data.arms, winners, response, settings)
    policy = policy_table(model, data, config.seed, settings.bootstrap)
    report, baselines = primary_reports(results, arms, settings.primary_outcome)
    _with_other_figures(report, results, (arms[0], settings.primary_outcome))
    balance, imbalanced = randomisation_warnings(dataset, data)
    example = raw_rows(dataset, data.rows[ROW].to_numpy()[data.test[:5]])
    table = dataset.config.campaigns
    assert table is not None
    return Trained(
        family=NAME,
        registered_name=registered_name(NAME, dataset.config.name),
        model=model,
        report=report,
        baselines=baselines,
        test_window=f"stratified {config.test_size:g} test split by arm and {settings.primary_outcome}, seed "
        f"{config.seed}; primary: Qini AUC of {' and '.join(arms)} vs {data.control} on {settings.primary_outcome}",
        params=_params(config, data),
        input_example=example,
        output_example=model.predict(None, example),
        extra_metrics=summary_metrics(results, policy),
        tables={
            "candidates": candidates_table(results),
            "randomisation": balance,
            "policy": policy,
            "single_column_auc": (data.leakage if data.leakage is not None else pd.Series(dtype=float))
            .rename("roc_auc")
            .rename_axis("column")
            .reset_index(),
        },
        train_rows=len(data.train),
        test_rows=len(data.test),
        required_inputs=[table.columns["customer_id"]] if "customer_id" in table.columns else [],
        candidate="+".join(dict.fromkeys(results[(a, settings.primary_outcome)].choice.winner for a in arms)),
        choice=results[(arms[0], settings.primary_outcome)].choice,
        warnings=[*data.warnings, *imbalanced, *(r.note for r in results.values() if r.note)],
        rescore=partial(_rescore, dataset, data, arms, settings.primary_outcome),
    )


FAMILY = Family(
    name=NAME,
    help="Uplift: per customer and campaign arm, the change in visit, conversion and spend the arm causes "
    "(learnt from a randomised campaign log), the next best action and micro segments.",
    label="visit",
    primary_metric="qini_auc",
    candidates=CANDIDATES,
    baselines=BASELINES,
    outputs=(
        "response_probability",
        "uplift_<arm>",
        "uplift_<outcome>_<arm>",
        "next_best_action",
        "expected_incremental_value",
        "micro_segment",
        "do_not_disturb",
        "micro_segment_<arm>",
    ),
    tables=("campaigns", "transactions"),
    needs=("campaigns",),
    entity="customer",
    train=train,
)
