"""Every MLflow call of valuecast: the store, runs, what a run logs, the registry and its aliases.

Training steps return metrics, tables and figures; this module names runs, logs them, registers
models and moves aliases. Nothing here runs at import time: the store is chosen by
:func:`tracking_uri` when a command asks for it.

Store: ``MLFLOW_TRACKING_URI`` when set; otherwise a SQLite database ``mlflow.db`` and an artifact
folder ``mlruns/`` under the project root (both ignored by git).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from features.config import PROJECT_ROOT

CHAMPION, CHALLENGER = "champion", "challenger"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def artifact_root() -> str:
    return os.environ.get("VALUECAST_ARTIFACT_ROOT") or (PROJECT_ROOT / "mlruns").as_uri()


def connect() -> Any:
    """Point MLflow at the store and return a client for it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    return mlflow.MlflowClient(tracking_uri(), registry_uri=tracking_uri())


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it (with artifacts under :func:`artifact_root`) when new."""
    import mlflow

    client = connect()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    uri = tracking_uri()
    location = artifact_root() if uri.startswith("sqlite:") or uri.startswith("file:") else None
    return str(mlflow.create_experiment(name, artifact_location=location))


@contextmanager
def run(experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start a run in ``experiment``; yields its id. A failure marks the run FAILED."""
    import mlflow

    experiment_id = ensure_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})) as active:
        yield str(active.info.run_id)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class DataFingerprint:
    """What a model was trained on, logged with every run."""

    source: str
    rows: int
    entities: int
    first: str
    last: str
    file_sha256: str

    def as_params(self) -> dict[str, str]:
        return {f"data_{k}": str(v) for k, v in self.__dict__.items()}


def log_params(params: Mapping[str, object]) -> None:
    import mlflow

    mlflow.log_params({k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in params.items()})


def log_metrics(metrics: Mapping[str, float], prefix: str = "") -> None:
    import mlflow

    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items() if pd.notna(v)})


def log_figures(figures: Mapping[str, Any], folder: str = "figures") -> None:
    import mlflow

    for name, figure in figures.items():
        mlflow.log_figure(figure, f"{folder}/{name}")


def log_tables(tables: Mapping[str, pd.DataFrame], folder: str = "tables") -> None:
    import mlflow

    for name, table in tables.items():
        mlflow.log_text(table.to_csv(index=False), f"{folder}/{name}.csv")


def set_tags(tags: Mapping[str, object]) -> None:
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_model(
    python_model: Any,
    *,
    name: str,
    input_example: pd.DataFrame,
    output_example: pd.DataFrame,
    pip_requirements: list[str],
    code_paths: list[str] | None = None,
    params: Mapping[str, Any] | None = None,
    required_inputs: list[str] | None = None,
) -> str:
    """Log a pyfunc model with its signature; returns the model URI.

    Requirements are passed explicitly: inferring them costs seconds per model.
    """
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(input_example, output_example, params=dict(params) if params else None)
    if required_inputs is not None and signature.inputs is not None:
        # columns outside the required ones may be left out by callers (optional contract columns,
        # attributes a lead form did not ask): the model treats them as missing
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        inputs = Schema([ColSpec(c.type, c.name, required=c.name in required_inputs) for c in signature.inputs.inputs])
        signature = ModelSignature(inputs, signature.outputs, signature.params)
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=python_model,
        signature=signature,
        input_example=(input_example, dict(params)) if params else input_example,
        pip_requirements=pip_requirements,
        code_paths=code_paths,
    )
    return str(info.model_uri)


@dataclass(frozen=True)
class Promotion:
    """The registry's answer to a new version: which alias it got and why."""

    registered_name: str
    version: str
    alias: str
    metric: str
    new_value: float
    champion_value: float | None
    champion_version: str | None

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION

    def message(self) -> str:
        if self.champion_value is None:
            first = f"{self.registered_name} v{self.version}: first version, now {CHAMPION}"
            return f"{first} ({self.metric} {self.new_value:.4f})"
        verb = "beats" if self.promoted else "does not beat"
        return (
            f"{self.registered_name} v{self.version} ({self.metric} {self.new_value:.4f}) {verb} "
            f"{CHAMPION} v{self.champion_version} ({self.champion_value:.4f}): now {self.alias}"
        )


def register_and_promote(
    model_uri: str, registered_name: str, *, metric: str, value: float, test_window: str, run_id: str
) -> Promotion:
    """Register a version; alias it ``champion`` only if it beats the champion on the same test window.

    The champion's figure is read from its version tags (``metric``/``test_window``), so two versions
    are compared only when they were scored on the same window; otherwise the new one is a challenger.
    Higher is better for every primary metric (ROC AUC, normalized Gini).
    """
    import mlflow

    client = connect()
    version = mlflow.register_model(model_uri, registered_name)
    for key, tag in (("primary_metric", metric), ("primary_value", repr(float(value))), ("test_window", test_window)):
        client.set_model_version_tag(registered_name, version.version, key, tag)

    champion_value = champion_version = None
    try:
        current = client.get_model_version_by_alias(registered_name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is not None:
        champion_version = str(current.version)
        same_window = current.tags.get("test_window") == test_window and current.tags.get("primary_metric") == metric
        if same_window:
            champion_value = float(current.tags["primary_value"])
    better = current is None or (champion_value is not None and value > champion_value)
    alias = CHAMPION if better else CHALLENGER
    if current is not None and champion_value is None:
        champion_value = float("nan")  # a champion scored on another window: no comparison possible
    client.set_registered_model_alias(registered_name, alias, version.version)
    promotion = Promotion(
        registered_name, str(version.version), alias, metric, float(value), champion_value, champion_version
    )
    client.set_tag(run_id, "promotion", promotion.message())
    client.set_tag(run_id, "promotion_alias", alias)
    client.set_tag(run_id, "promotion_new_value", repr(float(value)))
    client.set_tag(run_id, "promotion_champion_value", repr(champion_value))
    client.set_tag(run_id, "registered_version", str(version.version))
    return promotion


def log_batch_run(info: Mapping[str, Any], out: Path) -> str:
    """The batch scoring run in the experiment ``batch-scoring``: as-of date, model versions, summary
    figures, and the report and summary as artifacts. Returns the run id."""
    import mlflow

    summary = info["summary"]
    with run(
        "batch-scoring", f"score | {info['dataset']} | as of {info['as_of']}", {"dataset": str(info["dataset"])}
    ) as run_id:
        log_params(
            {
                "as_of": info["as_of"],
                "dataset": info["dataset"],
                "segment_version": info["segment_version"],
                **{f"{family}_version": version for family, version in info["models"].items()},
            }
        )
        metrics = {
            "customers": summary["customers"],
            "suppressed": summary["suppressed"],
            "tier_a_share_of_value": summary["tier_a_share_of_value"],
            "tier_a_share_of_customers": summary["tier_a_share_of_customers"],
            **{f"value_tier_{k}": v for k, v in summary["value_by_tier"].items()},
            **{f"value_at_risk_tier_{k}": v for k, v in summary["value_at_risk_by_tier"].items()},
            **{f"segment_{k}": v for k, v in summary["segments"].items()},
        }
        log_metrics(metrics)
        mlflow.log_artifact(str(out / "report.html"))
        mlflow.log_artifact(str(out / "summary.json"))
    return run_id
