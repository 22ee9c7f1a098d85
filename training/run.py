"""Train a model family on a dataset, log it to MLflow, register it and move the aliases.

``train_and_log`` is what ``make train`` runs for each family: read and check the data, train and
evaluate (the family's pure ``train``), then one MLflow run in the experiment ``valuecast-<family>``
with the config as params, a data fingerprint, the git commit, every metric of the model and of each
baseline (``baseline_<name>_<metric>``; each baseline also gets a child run of its own so that the UI
lists it beside the model), the figures and tables, and the pyfunc model with its signature, input
example, explicit pip requirements and the feature and training code. The new version becomes
``champion`` only if it beats the current champion on the same test window.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from features.config import PROJECT_ROOT, DatasetConfig, load_dataset_config
from features.io import Dataset, load_dataset, table_path
from training import tracking
from training.common import Trained
from training.config import FAMILIES, ModelConfig, load_model_config

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
    "setuptools",
)
CODE_PATHS = [str(PROJECT_ROOT / "features"), str(PROJECT_ROOT / "training")]
# Which tables each family reads: leads for the lead score, customer data for the others.
KINDS = {
    "lead_score": ("leads",),
    "churn": ("transactions", "customers"),
    "propensity": ("transactions", "customers"),
    "clv": ("transactions", "customers"),
}


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in MODEL_REQUIREMENTS]


def family_module(family: str) -> Any:
    return importlib.import_module(f"training.{family}")


def experiment_name(family: str) -> str:
    return f"valuecast-{family}"


def fingerprint(dataset: Dataset, kinds: tuple[str, ...]) -> tracking.DataFingerprint:
    """Source, rows, entities, date range and file hash of the tables a family read."""
    sources, hashes, rows, entities, first, last = [], [], 0, 0, "", ""
    for kind in kinds:
        checked = getattr(dataset, kind)
        table = getattr(dataset.config, kind)
        if checked is None or table is None:
            continue
        path = table_path(dataset.config, table)
        sources.append(str(path))
        hashes.append(tracking.file_hash(path))
        rows += len(checked.frame)
        id_column = "lead_id" if kind == "leads" else "customer_id"
        entities = max(entities, int(checked.frame[id_column].nunique()))
        if kind == "transactions":
            stamps = checked.frame["timestamp"]
            first, last = f"{stamps.min():%Y-%m-%d}", f"{stamps.max():%Y-%m-%d}"
    return tracking.DataFingerprint(";".join(sources), rows, entities, first, last, ";".join(hashes))


@dataclass(frozen=True)
class Outcome:
    family: str
    dataset: str
    run_id: str
    trained: Trained
    promotion: tracking.Promotion
    seconds: float

    def summary(self) -> list[str]:
        report = self.trained.report
        lines = [f"{self.family} on {self.dataset}: run {self.run_id}", f"  model     {report.summary_line()}"]
        for name, baseline in self.trained.baselines.items():
            lines.append(f"  baseline  {name}: {baseline.summary_line()}")
        lines.append(f"  {self.promotion.message()}")
        return lines


def load_for(family: str, data: str, config_path: Path | None = None) -> tuple[DatasetConfig, ModelConfig, Dataset]:
    dataset_config = load_dataset_config(data)
    config = load_model_config(family, dataset_config.name, config_path)
    kinds = tuple(k for k in KINDS[family] if getattr(dataset_config, k) is not None)
    dataset = load_dataset(dataset_config, kinds=kinds)  # type: ignore[arg-type]
    return dataset_config, config, dataset


def run_tags(trained: Trained, dataset: Dataset) -> dict[str, str]:
    """What tells runs apart in the UI and in ``make compare``: family, dataset, model, test window."""
    return {
        "family": trained.family,
        "dataset": dataset.config.name,
        "model": str(trained.params.get("champion_method", "xgboost")),
        "git_commit": tracking.git_commit(),
        "test_window": trained.test_window,
        "primary_metric": trained.report.primary_metric,
        "quality": trained.report.quality,
    }


def run_name(kind: str, trained: Trained, dataset: Dataset) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    method = str(trained.params.get("champion_method", "xgboost"))
    return f"{kind}{trained.family} | {dataset.config.name} | {method} | {stamp}"


def log_evaluation(trained: Trained, dataset: Dataset, *, prefix: str = "", details: bool = True) -> None:
    """Into the active run: the config and data fingerprint as params, the model's and each baseline's
    metrics (``<prefix>baseline_<name>_<metric>``). With ``details``, also the figures and tables, and
    each baseline as a child run so that the UI lists it beside the model."""
    tracking.log_params(
        {
            **trained.params,
            **fingerprint(dataset, KINDS[trained.family]).as_params(),
            "dataset_config": dataset.config.source_file,
            "train_rows": trained.train_rows,
            "test_rows": trained.test_rows,
        }
    )
    tracking.log_metrics(trained.report.metrics, prefix=prefix)
    tracking.log_metrics(trained.extra_metrics, prefix=prefix)
    for name, baseline in trained.baselines.items():
        tracking.log_metrics(baseline.metrics, prefix=f"{prefix}baseline_{name}_")
    if not details:
        return
    tracking.log_figures(trained.report.figures)
    tracking.log_tables(trained.report.tables)
    tracking.log_tables(trained.tables)
    tags = run_tags(trained, dataset)
    for name, baseline in trained.baselines.items():
        with tracking.child_run(f"baseline | {name}", {**tags, "model": name, "baseline": "true"}):
            tracking.log_metrics(baseline.metrics)
            tracking.log_figures(baseline.figures)


def log_and_register(trained: Trained, dataset: Dataset, run_id: str, *, promote: bool = True) -> tracking.Promotion:
    """Into the active run: the pyfunc model (signature, input example, pinned requirements, the
    feature and training code); then register it and move the aliases."""
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
    return tracking.register_and_promote(
        uri,
        trained.registered_name,
        metric=trained.report.primary_metric,
        value=trained.report.primary,
        test_window=f"{dataset.config.name}: {trained.test_window}",
        run_id=run_id,
        promote=promote,
    )


def log_trained(trained: Trained, dataset: Dataset, config: ModelConfig) -> tuple[str, tracking.Promotion]:
    """One MLflow run for a trained model, its baselines as child runs; register and promote."""
    with tracking.run(
        experiment_name(trained.family), run_name("", trained, dataset), run_tags(trained, dataset)
    ) as run_id:
        log_evaluation(trained, dataset)
        promotion = log_and_register(trained, dataset, run_id)
    return run_id, promotion


def train_and_log(
    family: str, data: str, *, config_path: Path | None = None, echo: Callable[[str], None] = print
) -> Outcome:
    import time

    start = time.perf_counter()
    if family not in FAMILIES:
        from features.config import ConfigError

        raise ConfigError(f"unknown model '{family}': use one of {', '.join(FAMILIES)} or all")
    echo(f"{family}: reading and checking '{data}'")
    _, config, dataset = load_for(family, data, config_path)
    echo(f"{family}: training and evaluating")
    trained = family_module(family).train(dataset, config)
    echo(f"{family}: logging to MLflow ({tracking.tracking_uri()}) and registering")
    run_id, promotion = log_trained(trained, dataset, config)
    return Outcome(family, dataset.config.name, run_id, trained, promotion, time.perf_counter() - start)


def families_for(dataset_config: DatasetConfig) -> list[str]:
    """The families a dataset can support: customer models need customer data, lead score needs leads."""
    chosen = []
    has_log = dataset_config.transactions is not None
    if has_log or dataset_config.customers is not None:
        chosen.append("churn")
    if has_log:
        chosen += ["propensity", "clv"]
    if dataset_config.leads is not None:
        chosen.append("lead_score")
    return chosen


def metrics_frame(outcomes: list[Outcome]) -> pd.DataFrame:
    rows = []
    for outcome in outcomes:
        report = outcome.trained.report
        name, best = outcome.trained.best_baseline()
        rows.append(
            {
                "family": outcome.family,
                "dataset": outcome.dataset,
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
