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


@contextmanager
def child_run(run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """A run nested under the active one (baselines, sweep trials), in the same experiment."""
    import mlflow

    parent = mlflow.active_run()
    experiment_id = parent.info.experiment_id if parent is not None else None
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=True, tags=dict(tags or {})) as child:
        yield str(child.info.run_id)


def end_active_run(status: str) -> None:
    """End the active run with ``status`` (FINISHED, FAILED, KILLED): an interrupted sweep is KILLED."""
    import mlflow

    mlflow.end_run(status=status)


def log_text(text: str, path: str) -> None:
    import mlflow

    mlflow.log_text(text, path)


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
            first = f"{self.registered_name} v{self.version}: first version, now {self.alias}"
            return f"{first} ({self.metric} {self.new_value:.4f})"
        verb = "beats" if self.promoted else "does not beat"
        return (
            f"{self.registered_name} v{self.version} ({self.metric} {self.new_value:.4f}) {verb} "
            f"{CHAMPION} v{self.champion_version} ({self.champion_value:.4f}): now {self.alias}"
        )


CHAMPION_HISTORY = "champion_history"


def _champion(client: Any, registered_name: str) -> Any | None:
    import mlflow

    try:
        return client.get_model_version_by_alias(registered_name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def _history(client: Any, registered_name: str, current: Any | None) -> list[str]:
    """The versions that held ``champion``, oldest first, ending with the current one (a champion
    moved by hand in the UI is added, so that a rollback returns to it)."""
    import json

    raw = client.get_registered_model(registered_name).tags.get(CHAMPION_HISTORY, "[]")
    history = [str(v) for v in json.loads(raw)]
    if current is not None and (not history or history[-1] != str(current.version)):
        history.append(str(current.version))
    return history


def move_champion(client: Any, registered_name: str, version: str, reason: str) -> str | None:
    """Point ``champion`` at ``version``, recorded as tags: the registered model's champion history,
    and on the version when and why. Returns the version that was champion before (or None)."""
    import json

    current = _champion(client, registered_name)
    history = _history(client, registered_name, current)
    previous = str(current.version) if current is not None else None
    if previous != str(version):
        history.append(str(version))
    client.set_registered_model_alias(registered_name, CHAMPION, version)
    client.set_registered_model_tag(registered_name, CHAMPION_HISTORY, json.dumps(history))
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
    client.set_model_version_tag(registered_name, version, "champion_since", stamp)
    client.set_model_version_tag(registered_name, version, "champion_reason", reason)
    if previous is not None and previous != str(version):
        client.set_model_version_tag(registered_name, previous, "replaced_as_champion", f"{stamp} by v{version}")
    return previous


def register_and_promote(
    model_uri: str,
    registered_name: str,
    *,
    metric: str,
    value: float,
    test_window: str,
    run_id: str,
    promote: bool = True,
) -> Promotion:
    """Register a version; alias it ``champion`` only if it beats the champion on the same test window.

    The champion's figure is read from its version tags (``metric``/``test_window``), so two versions
    are compared only when they were scored on the same window; otherwise the new one is a challenger.
    Higher is better for every primary metric (ROC AUC, normalized Gini). With ``promote=False`` (the
    best model of a sweep) the version is a challenger whatever its figure: a person promotes it.
    """
    import mlflow

    client = connect()
    version = mlflow.register_model(model_uri, registered_name)
    for key, tag in (("primary_metric", metric), ("primary_value", repr(float(value))), ("test_window", test_window)):
        client.set_model_version_tag(registered_name, version.version, key, tag)

    champion_value = champion_version = None
    current = _champion(client, registered_name)
    if current is not None:
        champion_version = str(current.version)
        same_window = current.tags.get("test_window") == test_window and current.tags.get("primary_metric") == metric
        if same_window:
            champion_value = float(current.tags["primary_value"])
    better = current is None or (champion_value is not None and value > champion_value)
    alias = CHAMPION if better and promote else CHALLENGER
    if current is not None and champion_value is None:
        champion_value = float("nan")  # a champion scored on another window: no comparison possible
    if alias == CHAMPION:
        move_champion(client, registered_name, str(version.version), f"trained, {metric} {value:.4f} (run {run_id})")
    else:
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


class RegistryError(ValueError):
    """A promote or rollback that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class AliasMove:
    registered_name: str
    version: str
    previous: str | None
    metric: str
    value: str
    test_window: str

    def message(self, verb: str) -> str:
        was = f" (was v{self.previous})" if self.previous else ""
        figure = f", {self.metric} {self.value} on {self.test_window}" if self.metric else ""
        return f"{verb} {self.registered_name}: {CHAMPION} is now v{self.version}{was}{figure}"


def _move(client: Any, registered_name: str, version: str, reason: str) -> AliasMove:
    previous = move_champion(client, registered_name, version, reason)
    tags = client.get_model_version(registered_name, version).tags
    return AliasMove(
        registered_name,
        version,
        previous,
        tags.get("primary_metric", ""),
        f"{float(tags['primary_value']):.4f}" if "primary_value" in tags else "",
        tags.get("test_window", ""),
    )


def promote(registered_name: str, version: str) -> AliasMove:
    """Make ``version`` the champion (a person's decision: any version, e.g. a sweep's challenger)."""
    import mlflow

    client = connect()
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{registered_name}'"))
    except mlflow.exceptions.MlflowException:
        versions = []
    if not versions:
        raise RegistryError(f"no registered model '{registered_name}' in {tracking_uri()}: train it first")
    if not version.isdigit() or int(version) not in versions:
        raise RegistryError(
            f"{registered_name} has no version '{version}'; its versions are {', '.join(map(str, versions))}"
        )
    user = os.environ.get("USER", "someone")
    moved = _move(client, registered_name, version, f"promoted by {user} (make promote)")
    try:  # the challenger alias stays only on a version that is not the champion
        if str(client.get_model_version_by_alias(registered_name, CHALLENGER).version) == version:
            client.delete_registered_model_alias(registered_name, CHALLENGER)
    except mlflow.exceptions.MlflowException:
        pass
    return moved


def rollback(registered_name: str) -> AliasMove:
    """Move ``champion`` back to the version that held it before the current one."""
    import json

    client = connect()
    current = _champion(client, registered_name)
    if current is None:
        raise RegistryError(f"{registered_name} has no {CHAMPION} in {tracking_uri()}: nothing to roll back")
    history = _history(client, registered_name, current)
    if len(history) < 2:
        raise RegistryError(
            f"{registered_name} v{current.version} is the only champion on record: nothing to roll back to "
            "(promote another version with make promote MODEL=<family> VERSION=<n>)"
        )
    history.pop()
    target = history[-1]
    client.set_registered_model_alias(registered_name, CHAMPION, target)
    client.set_registered_model_tag(registered_name, CHAMPION_HISTORY, json.dumps(history))
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
    client.set_model_version_tag(registered_name, str(current.version), "rolled_back", stamp)
    client.set_model_version_tag(registered_name, target, "champion_since", stamp)
    client.set_model_version_tag(registered_name, target, "champion_reason", f"rollback from v{current.version}")
    tags = client.get_model_version(registered_name, target).tags
    return AliasMove(
        registered_name,
        target,
        str(current.version),
        tags.get("primary_metric", ""),
        f"{float(tags['primary_value']):.4f}" if "primary_value" in tags else "",
        tags.get("test_window", ""),
    )


def search_runs(experiment: str) -> pd.DataFrame:
    """Every run of an experiment as MLflow's table (``params.*``, ``metrics.*``, ``tags.*`` columns)."""
    import mlflow

    client = connect()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise RegistryError(f"no experiment '{experiment}' in {tracking_uri()}; there are: {', '.join(names)}")
    return mlflow.search_runs(experiment_ids=[found.experiment_id], max_results=50000)


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
