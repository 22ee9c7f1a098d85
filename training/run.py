"""Train a model family on a dataset, log it to MLflow, register it and move the aliases.

``train_and_log`` is what ``make train`` runs for each family: read and check the data, train every
candidate and choose one on the validation data (the family's pure ``train``), then one MLflow run
in the experiment ``valuecast-<family>`` with the config as params, a data fingerprint, the git commit,
the winner's test metrics, every baseline's (``baseline_<name>_<metric>``), and one child run per
candidate with its validation (``val_*``) and test figures, so that the UI compares them side by side;
the figures and tables, and the winner as a pyfunc model with its signature, input example, explicit
pip requirements and the feature and training code. It is registered as
``valuecast-<family>-<dataset>``; it becomes ``champion`` only when it is at least as good on this test
window as every baseline and as the current champion re-scored on the same rows.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from features.config import PROJECT_ROOT, DatasetConfig, load_dataset_config
from features.io import Dataset, load_dataset, table_path
from training import families, tracking
from training.common import Trained
from training.config import ModelConfig, load_model_config
from training.guards import ShortHistoryError

# Distributions a logged model needs to load and score, pinned to the versions it was trained with.
MODEL_REQUIREMENTS = (
    "mlflow",
    "pandas",
    "numpy",
    "scipy",
    "scikit-learn",
    "xgboost-cpu",
    "lifetimes",
    "numba",
    "pydantic",
    "pyyaml",
    "pyarrow",
    "cloudpickle",
    "joblib",  # the fitted state of a model logged from code (training/logged_model.py)
    "scikit-uplift",  # the uplift family's learners inside that state
    "setuptools",
)
CODE_PATHS = [str(PROJECT_ROOT / "features"), str(PROJECT_ROOT / "training")]
# Horizons tried, longest first, when the configured one does not fit the history.
FALLBACK_HORIZONS = (365, 180, 90, 30)


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in MODEL_REQUIREMENTS]


def fingerprint(dataset: Dataset, kinds: tuple[str, ...]) -> tracking.DataFingerprint:
    """Source, rows, entities and date range of the tables a family read, as run params for ``make
    compare``; the tables themselves are logged as MLflow dataset inputs (:func:`log_inputs`)."""
    sources, rows, entities, first, last = [], 0, 0, "", ""
    for kind in kinds:
        checked = getattr(dataset, kind, None)
        table = getattr(dataset.config, kind, None)
        if checked is None or table is None:
            continue
        path = table_path(dataset.config, table)
        sources.append(str(path))
        rows += len(checked.frame)
        id_column = "lead_id" if kind == "leads" else "customer_id"
        if id_column in checked.frame.columns:
            entities = max(entities, int(checked.frame[id_column].nunique()))
        if kind == "transactions":
            stamps = checked.frame["timestamp"]
            first, last = f"{stamps.min():%Y-%m-%d}", f"{stamps.max():%Y-%m-%d}"
    return tracking.DataFingerprint(";".join(sources), rows, entities, first, last)


def log_inputs(dataset: Dataset, kinds: tuple[str, ...], label: str) -> None:
    """Each table the family read as an MLflow dataset input (MLflow's digest, schema and row count)."""
    for kind in kinds:
        checked = getattr(dataset, kind, None)
        table = getattr(dataset.config, kind, None)
        if checked is None or table is None:
            continue
        frame = checked.frame.drop(columns=["_row"], errors="ignore")
        target = label if label in frame.columns else None
        source = str(table_path(dataset.config, table))
        tracking.log_dataset_input(frame, source=source, name=f"{dataset.config.name}.{kind}", targets=target)


def quarantined_rows(dataset: Dataset, kinds: tuple[str, ...]) -> int:
    return sum(len(checked.quarantine) for kind, checked in dataset.checked_tables() if kind in kinds)


@dataclass(frozen=True)
class Outcome:
    family: str
    dataset: str
    run_id: str
    trained: Trained
    promotion: tracking.Promotion
    seconds: float
    quarantined: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        trained = self.trained
        lines = [f"{self.family} on {self.dataset}: run {self.run_id}"]
        lines += [f"  note      {note}" for note in [*self.notes, *trained.warnings]]
        if trained.choice is not None:
            lines.append(f"  chose     {trained.choice.reason}")
        lines.append(f"  model     {trained.candidate}: {trained.report.summary_line()}")
        for name, baseline in trained.baselines.items():
            lines.append(f"  baseline  {name}: {baseline.summary_line()}")
        lines.append(f"  {self.promotion.message()}")
        return lines

    def skipped(self) -> list[str]:
        targets = self.trained.tables.get("targets")
        if targets is None or "skipped" not in targets.columns:
            return []
        return [str(o) for o in targets.loc[targets["skipped"].notna(), "output"]]


def load_for(family: str, data: str, config_path: Path | None = None) -> tuple[DatasetConfig, ModelConfig, Dataset]:
    """The dataset config, the family's model config for it, and the tables the family reads."""
    dataset_config = load_dataset_config(data)
    config = load_model_config(family, dataset_config.name, config_path)
    declared = families.get(family)
    kinds = tuple(k for k in declared.tables if getattr(dataset_config, k, None) is not None)
    dataset = load_dataset(dataset_config, kinds=kinds)
    return dataset_config, config, dataset


def run_tags(trained: Trained, dataset: Dataset) -> dict[str, str]:
    """What tells runs apart in the UI and in ``make compare``: family, dataset, model, test window;
    and MLflow's own source tag for the commit, which the UI shows with the run."""
    commit = tracking.git_commit()
    return {
        "mlflow.source.git.commit": commit.removesuffix("-dirty"),
        "family": trained.family,
        "dataset": dataset.config.name,
        "model": trained.candidate,
        "candidate": trained.candidate,
        "git_commit": commit,
        "test_window": trained.test_window,
        "primary_metric": trained.report.primary_metric,
        "quality": trained.report.quality,
    }


def run_name(kind: str, trained: Trained, dataset: Dataset) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{kind}{trained.family} | {dataset.config.name} | {trained.candidate} | {stamp}"


def log_candidates(trained: Trained, tags: dict[str, str]) -> None:
    """One child run per candidate: its validation (``val_*``) and test metrics, so the UI lists every
    candidate beside the winner. Baselines are named ``baseline | <name>``. Figures are the parent's
    (the winner's): drawing every candidate's would cost more than training the linear ones."""
    choice = trained.choice
    if choice is None:
        return
    for name, test in choice.test.items():
        baseline = name in choice.baselines
        label = f"{'baseline' if baseline else 'candidate'} | {name}"
        child_tags = {
            **tags,
            "model": name,
            "candidate": name,
            "baseline": str(baseline).lower(),
            "winner": str(name == choice.winner).lower(),
        }
        with tracking.child_run(label, child_tags):
            tracking.log_metrics(test.metrics)
            if name in choice.validation:
                tracking.log_metrics(choice.validation[name].metrics, prefix="val_")


def log_evaluation(trained: Trained, dataset: Dataset, *, prefix: str = "", details: bool = True) -> None:
    """Into the active run: the config and data fingerprint as params, the winner's and each
    baseline's metrics (``<prefix>baseline_<name>_<metric>``) and each candidate's validation figure
    (``val_<candidate>_<metric>``). With ``details``, also the figures and tables, and each candidate as
    a child run."""
    declared = families.get(trained.family)
    tracking.log_params(
        {
            **trained.params,
            **fingerprint(dataset, declared.tables).as_params(),
            "dataset_config": dataset.config.source_file,
            "train_rows": trained.train_rows,
            "test_rows": trained.test_rows,
            "candidate": trained.candidate,
        }
    )
    tracking.log_metrics(trained.report.metrics, prefix=prefix)
    tracking.log_metrics(trained.extra_metrics, prefix=prefix)
    for name, baseline in trained.baselines.items():
        tracking.log_metrics(baseline.metrics, prefix=f"{prefix}baseline_{name}_")
    if trained.choice is not None:
        metric = trained.report.primary_metric
        tracking.log_metrics(
            {f"val_{name}_{metric}": r.primary for name, r in trained.choice.validation.items()}, prefix=prefix
        )
    if trained.warnings:
        tracking.log_text("\n".join(trained.warnings) + "\n", "warnings.txt")
    if not details:
        return
    log_inputs(dataset, declared.tables, declared.label)
    tracking.log_figures(trained.report.figures)
    tracking.log_tables(trained.report.tables)
    tracking.log_tables(trained.tables)
    log_candidates(trained, run_tags(trained, dataset))


def describe(trained: Trained, dataset: Dataset) -> str:
    """The registered version's description: what it predicts, on what data, how well, how to call it."""
    declared = families.get(trained.family)
    best_name, best = trained.best_baseline() if trained.baselines else ("none", trained.report)
    call = (
        "transactions in the contract's column names (customer_id, timestamp, amount, ...); "
        "params={'as_of': 'YYYY-MM-DD'} scores as of that date, and without it (or with an empty as_of) "
        "as of the day after the latest transaction in the input"
        if declared.entity == "customer" and dataset.transactions is not None
        else "rows as the source file names its columns"
    )
    return (
        f"{declared.help} Dataset '{dataset.config.name}'. Winner of the candidates on the validation data: "
        f"{trained.candidate}. Test window {trained.test_window}: {trained.report.primary_metric} "
        f"{trained.report.primary:.4f} (best baseline {best_name} {best.primary:.4f}). "
        f"Outputs: {', '.join(declared.outputs)}. Input: {call}."
    )


def champion_figure(trained: Trained) -> tuple[float | None, str]:
    """The current champion of the same registered model, re-scored on this run's test rows."""
    champion = tracking.load_champion(trained.registered_name)
    if champion is None:
        return None, ""
    version, model = champion
    if trained.rescore is None:
        return None, f"v{version} not re-scored (this family cannot)"
    try:
        return trained.rescore(model), f"v{version}"
    except Exception as exc:  # an older version's code may not score this data: say so, don't fail
        return None, f"v{version} could not be re-scored on this test window ({type(exc).__name__}: {exc})"


def log_and_register(trained: Trained, dataset: Dataset, run_id: str, *, promote: bool = True) -> tracking.Promotion:
    """Into the active run: the pyfunc model (signature, input example, pinned requirements, the
    feature and training code); then register it and move the aliases through the promotion gate."""
    uri = tracking.log_model(
        trained.model,
        name="model",
        input_example=trained.input_example,
        output_example=trained.output_example,
        params=trained.predict_params,
        required_inputs=trained.required_inputs,
        pip_requirements=pip_requirements(),
        code_paths=CODE_PATHS,
    )
    rescored, champion_note = champion_figure(trained) if promote else (None, "")
    return tracking.register_and_promote(
        uri,
        trained.registered_name,
        tracking.Candidate(
            metric=trained.report.primary_metric,
            value=trained.report.primary,
            test_window=f"{dataset.config.name}: {trained.test_window}",
            candidate=trained.candidate,
            baselines={name: report.primary for name, report in trained.baselines.items()},
            family=trained.family,
            dataset=dataset.config.name,
            description=describe(trained, dataset),
        ),
        run_id=run_id,
        champion_rescored=rescored,
        champion_note=champion_note,
        promote=promote,
    )


def log_trained(trained: Trained, dataset: Dataset) -> tuple[str, tracking.Promotion]:
    """One MLflow run for a trained model, its candidates as child runs; register and promote."""
    with tracking.run(
        families.get(trained.family).experiment, run_name("", trained, dataset), run_tags(trained, dataset)
    ) as run_id:
        log_evaluation(trained, dataset)
        promotion = log_and_register(trained, dataset, run_id)
    return run_id, promotion


def train_fitting_horizon(
    family: str, dataset: Dataset, config: ModelConfig, echo: Callable[[str], None]
) -> tuple[Trained, list[str]]:
    """The family trained with the config's horizon or, when the history is too short for it, the
    largest of 365/180/90/30 days that fits (said so)."""
    declared = families.get(family)
    notes: list[str] = []
    try:
        return declared.train(dataset, config), notes
    except ShortHistoryError as first:
        shorter = [h for h in FALLBACK_HORIZONS if h < config.horizon_days]
        if not shorter or dataset.transactions is None or config.test_cutoff is not None:
            raise
        for horizon in shorter:
            update: dict[str, Any] = {"horizon_days": horizon}
            if config.validation_horizon_days is not None:
                update["validation_horizon_days"] = min(horizon, config.validation_horizon_days)
            if config.train_horizon_days is not None:
                update["train_horizon_days"] = min(horizon, config.train_horizon_days)
            try:
                trained = declared.train(dataset, config.model_copy(update=update))
            except ShortHistoryError:
                continue
            note = f"horizon lowered from {config.horizon_days} to {horizon} days to fit the history ({first})"
            echo(f"{family}: {note}")
            notes.append(note)
            return trained, notes
        raise


def train_and_log(
    family: str,
    data: str,
    *,
    config_path: Path | None = None,
    echo: Callable[[str], None] = print,
    dataset: Dataset | None = None,
) -> Outcome:
    import time

    start = time.perf_counter()
    declared = families.get(family)
    if dataset is None:
        echo(f"{family}: reading and checking '{data}'")
        _, config, dataset = load_for(family, data, config_path)
    else:
        config = load_model_config(family, dataset.config.name, config_path)
    echo(f"{family}: training and comparing {', '.join(declared.candidates)}")
    trained, notes = train_fitting_horizon(family, dataset, config, echo)
    echo(f"{family}: logging to MLflow ({tracking.redacted(tracking.tracking_uri())}) and registering")
    run_id, promotion = log_trained(trained, dataset)
    quarantined = quarantined_rows(dataset, declared.tables)
    return Outcome(
        family, dataset.config.name, run_id, trained, promotion, time.perf_counter() - start, quarantined, notes
    )


def metrics_frame(outcomes: list[Outcome]) -> pd.DataFrame:
    rows = []
    for outcome in outcomes:
        report = outcome.trained.report
        name, best = outcome.trained.best_baseline() if outcome.trained.baselines else ("", report)
        rows.append(
            {
                "family": outcome.family,
                "dataset": outcome.dataset,
                "candidate": outcome.trained.candidate,
                "metric": report.primary_metric,
                "model": report.primary,
                "best_baseline": name,
                "baseline": best.primary,
                "alias": outcome.promotion.alias,
                "version": outcome.promotion.version,
                "run_id": outcome.run_id,
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Refusal:
    family: str
    reason: str


def summary_frame(results: list[Outcome | Refusal]) -> pd.DataFrame:
    """One row per family of ``make train MODEL=all``: trained or refused and why, the champion's
    metric against the best baseline, promoted or not, quarantined rows, skipped categories."""
    rows: list[dict[str, Any]] = []
    for result in results:
        if isinstance(result, Refusal):
            rows.append({"family": result.family, "status": f"refused: {result.reason}"})
            continue
        trained = result.trained
        name, best = trained.best_baseline() if trained.baselines else ("", trained.report)
        rows.append(
            {
                "family": result.family,
                "status": "trained",
                "candidate": trained.candidate,
                "metric": trained.report.primary_metric,
                "value": round(trained.report.primary, 4),
                "best_baseline": f"{name} {best.primary:.4f}",
                "promoted": f"{'yes' if result.promotion.promoted else 'no'} (v{result.promotion.version} "
                f"{result.promotion.alias})",
                "quarantined": result.quarantined,
                "skipped": ", ".join(result.skipped()) or "-",
            }
        )
    return pd.DataFrame(rows).fillna("")
