"""Experiments: a hyperparameter search of one model family on one dataset, defined in a YAML file.

``experiments/<name>.yaml`` names the family, the dataset, fixed settings (any model-config key:
horizon, feature set, calibration, xgboost parameters...), a search space, the number of trials, the
seed and the metric to maximise (or minimise, for losses and errors). :func:`run_experiment` runs the
search with Optuna's seeded TPE sampler:

- each trial trains the family with its settings on the **validation protocol** (the window just
  before the test window, or a part of the training split for snapshots: see
  :func:`training.customers.validation_config`), so that the search never looks at the test window,
  and is a nested MLflow run whose metrics are ``val_<metric>``;
- the parent run holds the best trial's parameters and ``val_*`` metrics; the best settings are then
  trained once more on the usual protocol, evaluated on the test window (plain metric names, the same
  as ``make train`` runs, so the two compare), logged and registered as ``challenger``: a sweep never
  moves ``champion``; a person does, with ``make promote``.

An interrupted search keeps its finished trials (each is a finished run); the parent run then holds
the best trial so far, is marked KILLED, and nothing is registered. Ctrl-C lets the trial under way
finish first; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.config import PROJECT_ROOT, ConfigError, format_validation_error
from training import families, tracking
from training.common import Trained
from training.config import ModelConfig, load_model_config

if TYPE_CHECKING:
    import optuna

    from features.io import Dataset

EXPERIMENT_DIR = PROJECT_ROOT / "experiments"
# Metrics where lower is better; every other metric is maximised.
LOWER_IS_BETTER = {"brier", "log_loss", "ece", "mae", "rmse"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchParameter(_Strict):
    """One dimension of the search space, in Optuna's terms."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> SearchParameter:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"an {self.type} parameter needs 'low' <= 'high'")
        return self

    def suggest(self, trial: Any, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            step = int(self.step) if self.step else 1
            return trial.suggest_int(name, int(self.low or 0), int(self.high or 0), step=step, log=self.log)
        return trial.suggest_float(name, float(self.low or 0), float(self.high or 0), step=self.step, log=self.log)


class Experiment(_Strict):
    """An experiment definition (one YAML file in ``experiments/``)."""

    name: str = Field(min_length=1, description="MLflow experiment the sweep logs into.")
    description: str = ""
    family: str = Field(description="The model family (a file in configs/models/).")
    dataset: str = Field(min_length=1, description="Bundled dataset name or a dataset YAML path.")
    horizon_days: int | None = Field(default=None, ge=1, description="Shorthand for settings.horizon_days.")
    feature_set: list[str] = Field(
        default_factory=list, description="Model inputs to leave out (patterns); shorthand for exclude_features."
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Fixed model-config keys over configs/models/<family>.yaml (and its dataset overrides).",
    )
    search_space: dict[str, SearchParameter] = Field(
        default_factory=dict, description="Model-config keys to search, dotted for nested ones (xgboost.max_depth)."
    )
    trials: int = Field(default=20, ge=1)
    seed: int = 0
    primary_metric: str | None = Field(default=None, description="Default: the family's (roc_auc, gini_normalized).")

    @property
    def metric(self) -> str:
        return self.primary_metric or families.get(self.family).primary_metric

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.metric in LOWER_IS_BETTER else "maximize"


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; a bare name looks in ``experiments/``."""
    candidate = Path(path)
    if not candidate.exists() and not candidate.suffix:
        candidate = EXPERIMENT_DIR / f"{path}.yaml"
    try:
        raw = yaml.safe_load(candidate.read_text())
    except FileNotFoundError as exc:
        shipped = ", ".join(sorted(p.name for p in EXPERIMENT_DIR.glob("*.yaml")))
        raise ConfigError(f"{path}: no such experiment file (shipped: {shipped})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{candidate}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{candidate}: expected a mapping of keys at the top level")
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{candidate}: {format_validation_error(exc)}") from exc
    base = load_model_config(experiment.family, _dataset_name(experiment.dataset))
    for key in experiment.search_space:  # a misspelt key should fail now, not after the first trial
        apply(base, {key: _probe(experiment.search_space[key])}, where=f"{candidate}: search_space.{key}")
    apply(base, fixed_settings(experiment), where=f"{candidate}: settings")
    return experiment


def _dataset_name(data: str) -> str:
    from features.config import load_dataset_config

    return load_dataset_config(data).name


def _probe(parameter: SearchParameter) -> Any:
    if parameter.type == "categorical":
        return (parameter.choices or [None])[0]
    return int(parameter.low or 0) if parameter.type == "int" else float(parameter.low or 0)


def fixed_settings(experiment: Experiment) -> dict[str, Any]:
    settings = dict(experiment.settings)
    if experiment.horizon_days is not None:
        settings["horizon_days"] = experiment.horizon_days
    if experiment.feature_set:
        settings["exclude_features"] = list(experiment.feature_set)
    settings.setdefault("seed", experiment.seed)
    return settings


def apply(config: ModelConfig, values: dict[str, Any], *, where: str = "experiment") -> ModelConfig:
    """``config`` with ``values`` set; dotted keys reach nested settings (``xgboost.max_depth``)."""
    merged = config.model_dump()
    for key, value in values.items():
        target = merged
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise ConfigError(f"{where}: '{key}' is not a model setting ('{part}' has no sub-settings)")
            target = target[part]
        if isinstance(value, dict) and isinstance(target.get(leaf), dict):
            target[leaf] = {**target[leaf], **value}
        else:
            target[leaf] = value
    try:
        return ModelConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {format_validation_error(exc)}") from exc


@dataclass(frozen=True)
class SweepOutcome:
    experiment: str
    parent_run_id: str
    trials_finished: int
    best_trial: int
    best_params: dict[str, Any]
    best_value: float
    metric: str
    test: Trained | None
    promotion: tracking.Promotion | None
    interrupted: bool
    seconds: float

    def summary(self) -> list[str]:
        lines = [
            f"experiment '{self.experiment}': {self.trials_finished} trial(s), parent run {self.parent_run_id}",
            f"  best trial {self.best_trial}: val_{self.metric} {self.best_value:.4f} with "
            + ", ".join(f"{k}={_short(v)}" for k, v in self.best_params.items()),
        ]
        if self.interrupted:
            lines.append("  interrupted: the finished trials are kept; nothing was registered")
        if self.test is not None and self.promotion is not None:
            lines.append(f"  on the test window: {self.test.report.summary_line()}")
            if self.test.baselines:
                name, best = self.test.best_baseline()
                lines.append(f"  best baseline ({name}): {best.summary_line()}")
            else:  # the sweep trains xgboost alone: make train compares it with the baselines
                lines.append("  no baseline in this sweep's candidates: make train compares them")
            lines.append(f"  {self.promotion.message()}")
            family = self.test.family
            parsed = families.parse_registered_name(self.promotion.registered_name)
            dataset = parsed[1] if parsed else "<dataset>"
            lines.append(
                f"  promote it with: make promote MODEL={family} DATA={dataset} VERSION={self.promotion.version}"
            )
        return lines


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_experiment(path: str | Path, *, trials: int | None = None, echo: Callable[[str], None] = print) -> SweepOutcome:
    """Run the search an experiment file defines; see the module docstring."""
    import optuna

    from training.customers import validation_config

    start = time.perf_counter()
    experiment = load_experiment(path)
    n_trials = trials or experiment.trials
    echo(f"{experiment.name}: reading and checking '{experiment.dataset}'")
    base, dataset = _search_base(path, experiment)
    validation = validation_config(dataset, base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=experiment.seed)
    study = optuna.create_study(direction=experiment.direction, sampler=sampler)
    trial_runs = _TrialRuns(path, experiment, dataset, validation, echo)

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    name = f"sweep | {experiment.family} | {dataset.config.name} | {n_trials} trials | {stamp}"
    test: Trained | None = None
    promotion = None
    with tracking.run(experiment.name, name, _parent_tags(path, experiment, dataset.config.name)) as parent_id:
        tracking.log_text(Path(path).read_text() if Path(path).exists() else "", "experiment.yaml")
        tracking.log_params(_sweep_params(experiment, n_trials, validation))
        echo(f"{experiment.name}: {n_trials} trial(s) of {experiment.family} on the validation window")
        finished, interrupted = _optimize(study, trial_runs, n_trials)
        best, best_values, best_trained = _log_best_trial(study, trial_runs, len(finished), dataset)
        if interrupted:
            tracking.set_tags({"interrupted": "true"})
            tracking.end_active_run("KILLED")
        else:
            echo(f"{experiment.name}: training the best settings on the test protocol")
            test, promotion = _train_best_on_test(experiment, dataset, apply(base, best_values), best.number, parent_id)
    return SweepOutcome(
        experiment.name,
        parent_id,
        len(finished),
        best.number,
        best_values,
        float(best_trained.report.metrics[experiment.metric]),
        experiment.metric,
        test,
        promotion,
        interrupted,
        time.perf_counter() - start,
    )


def _search_base(path: str | Path, experiment: Experiment) -> tuple[ModelConfig, Dataset]:
    """The family's model config for the experiment's dataset with the experiment's fixed settings, and
    the dataset."""
    from training.run import load_for

    _, base, dataset = load_for(experiment.family, experiment.dataset)
    base = apply(base, fixed_settings(experiment), where=f"{path}: settings")
    if "candidates" not in experiment.settings:  # the search space is xgboost's: compare trials of it alone
        base = base.model_copy(update={"candidates": ["xgboost"]})
    return base, dataset


def _optimize(
    study: optuna.Study, trial_runs: _TrialRuns, n_trials: int
) -> tuple[list[optuna.trial.FrozenTrial], bool]:
    """Run the trials: the finished ones, and whether Ctrl-C stopped the search. With none finished the
    parent run is marked KILLED and the interrupt goes on.

    The first Ctrl-C lets the trial under way finish and then stops (Optuna's ``study.stop``): a
    KeyboardInterrupt raised while xgboost is inside one of its native callbacks can abort the process
    ("double free or corruption"), which would lose the parent run's record. A second Ctrl-C stops at once.
    """
    import optuna

    stop = _StopRequest(trial_runs.echo)
    interrupted = False
    try:
        with stop.on_sigint():
            study.optimize(trial_runs.objective, n_trials=n_trials, callbacks=[stop.callback])
    except KeyboardInterrupt:
        interrupted = True
    interrupted = interrupted or stop.requested
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        tracking.end_active_run("KILLED")
        raise KeyboardInterrupt
    return finished, interrupted


class _StopRequest:
    """Ctrl-C during a search: the first asks for a stop after the trial under way, the second raises
    KeyboardInterrupt as usual. Only in the main thread, and not where SIGINT is ignored (a job started
    in the background with ``&`` or under ``nohup``): there the search runs on, as it would have."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.requested = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.echo("  interrupt: stopping after the trial under way (Ctrl-C again to stop at once)")

    def callback(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.requested:
            study.stop()

    @contextmanager
    def on_sigint(self) -> Iterator[None]:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if main_thread else signal.SIG_IGN
        if previous is signal.SIG_IGN:
            yield
            return
        signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _log_best_trial(
    study: optuna.Study, trial_runs: _TrialRuns, finished: int, dataset: Dataset
) -> tuple[optuna.trial.FrozenTrial, dict[str, Any], Trained]:
    """The best trial, its settings and its model, logged on the parent run with their ``val_*`` metrics."""
    from training.run import log_evaluation

    best = study.best_trial
    assert trial_runs.best_number == best.number
    best_values, best_trained = trial_runs.best_values, trial_runs.best_trained
    assert best_trained is not None
    tracking.set_tags({"best_trial": best.number, "trials_finished": finished})
    tracking.log_params({f"search_{k}": v for k, v in best_values.items()})
    log_evaluation(best_trained, dataset, prefix="val_", details=False)
    return best, best_values, best_trained


def _parent_tags(path: str | Path, experiment: Experiment, dataset_name: str) -> dict[str, str]:
    return {
        "family": experiment.family,
        "dataset": dataset_name,
        "model": "xgboost",
        "sweep": "true",
        "primary_metric": experiment.metric,
        "experiment_file": str(path),
        "git_commit": tracking.git_commit(),
    }


def _sweep_params(experiment: Experiment, n_trials: int, validation: ModelConfig) -> dict[str, Any]:
    """What the parent run records about the search itself."""
    return {
        "sweep_trials": n_trials,
        "sweep_seed": experiment.seed,
        "sweep_metric": experiment.metric,
        "sweep_direction": experiment.direction,
        "sweep_space": json.dumps({k: v.model_dump(exclude_none=True) for k, v in experiment.search_space.items()}),
        "validation_window": f"{validation.test_cutoff or 'inner split'} + {validation.horizon_days} days",
    }


class _TrialRuns:
    """Optuna's objective: each trial trained on the validation protocol and logged as a nested run.

    Only the best trial's model is kept: a trained model with its figures is tens of megabytes.
    """

    def __init__(
        self,
        path: str | Path,
        experiment: Experiment,
        dataset: Dataset,
        validation: ModelConfig,
        echo: Callable[[str], None],
    ) -> None:
        self.path, self.experiment, self.dataset, self.validation, self.echo = (
            path,
            experiment,
            dataset,
            validation,
            echo,
        )
        self.train = families.get(experiment.family).train
        self.best_number = -1
        self.best_value = 0.0
        self.best_values: dict[str, Any] = {}
        self.best_trained: Trained | None = None

    def objective(self, trial: optuna.Trial) -> float:
        from training.run import log_evaluation, run_tags

        experiment, dataset, metric = self.experiment, self.dataset, self.experiment.metric
        values = {key: spec.suggest(trial, key) for key, spec in experiment.search_space.items()}
        config = apply(self.validation, values, where=f"{self.path}: trial {trial.number}")
        trained = self.train(dataset, config)
        tags = {
            **run_tags(trained, dataset),
            "trial": str(trial.number),
            "window": "validation",
            "primary_metric": f"val_{metric}",
        }
        name = f"trial {trial.number} | {experiment.family} | {dataset.config.name} | xgboost"
        with tracking.child_run(name, tags):
            log_evaluation(trained, dataset, prefix="val_", details=False)
            tracking.log_params({f"search_{k}": v for k, v in values.items()})
        if metric not in trained.report.metrics:
            known = ", ".join(sorted(trained.report.metrics))
            raise ConfigError(
                f"{self.path}: primary_metric '{metric}' is not a metric of {experiment.family}: use one of {known}"
            )
        value = float(trained.report.metrics[metric])
        if self.best_number < 0 or (
            value < self.best_value if experiment.direction == "minimize" else value > self.best_value
        ):
            # ties keep the earlier trial, as Optuna's best_trial does
            self.best_number, self.best_value, self.best_values, self.best_trained = (
                trial.number,
                value,
                values,
                trained,
            )
        self.echo(
            f"  trial {trial.number}: val_{metric} {value:.4f}  "
            + ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        )
        return value


def _train_best_on_test(
    experiment: Experiment, dataset: Dataset, config: ModelConfig, best_trial: int, parent_id: str
) -> tuple[Trained, tracking.Promotion]:
    """The best settings trained on the usual protocol, scored on the test window, logged in the parent
    run and registered as ``challenger`` (never promoted)."""
    from training.run import log_and_register, run_tags

    test = families.get(experiment.family).train(dataset, config)
    tracking.set_tags({**run_tags(test, dataset), "sweep": "true", "best_trial": best_trial})
    tracking.log_metrics(test.report.metrics)
    tracking.log_metrics(test.extra_metrics)
    for baseline_name, baseline in test.baselines.items():
        tracking.log_metrics(baseline.metrics, prefix=f"baseline_{baseline_name}_")
    tracking.log_figures(test.report.figures)
    tracking.log_tables(test.report.tables)
    return test, log_and_register(test, dataset, parent_id, promote=False)
