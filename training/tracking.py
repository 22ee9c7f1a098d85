"""Every MLflow call of valuecast: the store, runs, what a run logs, the registry and its aliases.

Training steps return metrics, tables and figures; this module names runs, logs them, registers
models and moves aliases. Nothing here runs at import time: the store is chosen by
:func:`tracking_uri` when a command asks for it.

Store: ``MLFLOW_TRACKING_URI`` when set; otherwise a SQLite database ``mlflow.db`` and an artifact
folder ``mlruns/`` under the project root (both ignored by git).
"""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from features.config import PROJECT_ROOT
from features.quiet import held_warnings

CHAMPION, CHALLENGER = "champion", "challenger"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def redacted(uri: str) -> str:
    """A URI fit to print or log: user name and password replaced (``https://***@host/``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# up to the last "@" of the authority: a password may itself hold an "@"
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")


def scrubbed(text: str) -> str:
    """Text fit to print or log: the user name and password of every URI in it replaced by ``***``
    (error messages of the tracking client quote the URI they failed to reach)."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


def artifact_root() -> str:
    return os.environ.get("VALUECAST_ARTIFACT_ROOT") or (PROJECT_ROOT / "mlruns").as_uri()


def connect() -> Any:
    """Point MLflow at the store and return a client for it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    return mlflow.MlflowClient(tracking_uri(), registry_uri=tracking_uri())


def ensure_store() -> None:
    """Create the tracking store's tables if the store is new. MLflow does so on first use; two
    processes doing it at once on a new SQLite file can collide, so the demo calls this first."""
    connect().search_experiments(max_results=1)


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


@dataclass(frozen=True)
class DataFingerprint:
    """What a model was trained on, logged with every run."""

    source: str
    rows: int
    entities: int
    first: str
    last: str

    def as_params(self) -> dict[str, str]:
        return {f"data_{k}": str(v) for k, v in self.__dict__.items()}


def log_dataset_input(frame: pd.DataFrame, *, source: str, name: str, targets: str | None = None) -> None:
    """A table a run read, as an MLflow dataset input (source, digest, schema, row count), so the UI
    shows what each model was trained on.

    MLflow's ``from_pandas`` would work out the schema and the digest value by value in Python (7.5 s
    for Online Retail's 401,528 checked rows, more than its model took to log); here the schema comes
    from the checked table's column types (text and categorical columns are strings; a column is
    required when it has no missing value) and the digest is MLflow's normalised MD5 over pandas'
    hash of every row, where MLflow's own hashes the first 10,000."""
    import mlflow
    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.digest_utils import get_normalized_md5_digest
    from mlflow.types import ColSpec, Schema

    types = {str(c): _column_type(frame[c]) for c in frame.columns}
    schema = (
        Schema([ColSpec(types[str(c)], str(c), required=not frame[c].isna().any()) for c in frame.columns])
        if None not in types.values()
        else None  # as MLflow's PandasDataset does when it cannot infer a column
    )
    row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = get_normalized_md5_digest([row_hashes, np.int64(len(frame)), *(str(c).encode() for c in frame.columns)])
    dataset = _table_dataset_class()(
        frame, schema, source=resolve_dataset_source(source), name=name, targets=targets, digest=digest
    )
    mlflow.log_input(dataset, context="training")


def _column_type(column: pd.Series) -> Any:
    """The MLflow schema type of a checked table's column, from its dtype; MLflow's own inference for
    a dtype not listed here (e.g. an object column of mixed values), None when that fails."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature
    from mlflow.types import DataType

    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(column):
        return DataType.string
    if pd.api.types.is_bool_dtype(dtype):
        return DataType.boolean
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return DataType.datetime
    if pd.api.types.is_integer_dtype(dtype):
        return DataType.long if dtype.itemsize == 8 else DataType.integer
    if pd.api.types.is_float_dtype(dtype):
        return DataType.double if dtype.itemsize == 8 else DataType.float
    try:
        return infer_signature(column.to_frame()).inputs.input_types()[0]
    except MlflowException:
        return None


@cache
def _table_dataset_class() -> Any:
    from mlflow.data.pandas_dataset import PandasDataset

    class TableDataset(PandasDataset):
        """MLflow's pandas dataset with a schema given rather than inferred."""

        def __init__(self, df: pd.DataFrame, schema: Any, **kwargs: Any) -> None:
            self._given_schema = schema
            super().__init__(df, **kwargs)

        @property
        def schema(self) -> Any:
            return self._given_schema

    return TableDataset


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


def logged_table(run_id: str, name: str, folder: str = "tables") -> pd.DataFrame | None:
    """A table :func:`log_tables` logged on a run (``<folder>/<name>.csv``); None when the run has none
    (an older run, or a family that logs no such table)."""
    import mlflow

    path = f"{folder}/{name}.csv"
    if path not in {item.path for item in connect().list_artifacts(run_id, folder)}:
        return None
    return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def set_tags(tags: Mapping[str, object]) -> None:
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


# Models from code (training/logged_model.py): the artifact holding the fitted model object, and the
# key of its SHA-256 in the model's config, checked before it is unpickled.
LOGGED_MODEL_CODE = Path(__file__).with_name("logged_model.py")
STATE = "fitted_state"
DIGEST = "state_sha256"


def digest_of(path: str | Path) -> str:
    """SHA-256 of a file, hex."""
    import hashlib

    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


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
    from mlflow.models import ModelSignature, infer_signature

    inferred = infer_signature(input_example, params=dict(params) if params else None)
    inputs = inferred.inputs
    if required_inputs is not None and inputs is not None:
        # columns outside the required ones may be left out by callers (optional contract columns,
        # attributes a lead form did not ask): the model treats them as missing
        from mlflow.types.schema import ColSpec, Schema

        inputs = Schema([ColSpec(c.type, c.name, required=c.name in required_inputs) for c in inputs.inputs])
    with held_warnings():
        # MLflow hints that integer columns cannot hold missing values; it matters for inputs, which
        # MLflow enforces, not for outputs (macro_segment_id is -1 without purchases, never missing).
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        outputs = infer_signature(output_example).inputs
    signature = ModelSignature(inputs, outputs, inferred.params)
    import tempfile

    import joblib

    with tempfile.TemporaryDirectory(prefix="valuecast-state-") as folder:
        state = Path(folder) / "model.joblib"
        joblib.dump(python_model, state)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(LOGGED_MODEL_CODE),  # models from code: the code is this file, the state an artifact
            artifacts={STATE: str(state)},
            model_config={DIGEST: digest_of(state)},
            signature=signature,
            input_example=(input_example, dict(params)) if params else input_example,
            pip_requirements=pip_requirements,
            code_paths=code_paths,
        )
    return str(info.model_uri)


def fitted(pyfunc_model: Any) -> Any:
    """The family's model object inside a loaded pyfunc: the state a models-from-code version loaded
    (:mod:`training.logged_model`), or the Python model itself for a version logged before that."""
    unwrapped = pyfunc_model.unwrap_python_model()
    return unwrapped.model if type(unwrapped).__name__ == "LoggedModel" else unwrapped


@dataclass(frozen=True)
class Candidate:
    """A new version's figures on its test window, what the promotion gate reads."""

    metric: str
    value: float
    test_window: str
    candidate: str
    baselines: Mapping[str, float]
    family: str
    dataset: str
    description: str = ""

    def best_baseline(self) -> tuple[str, float]:
        if not self.baselines:
            return "", float("nan")
        name = max(self.baselines, key=lambda k: self.baselines[k])
        return name, float(self.baselines[name])


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
    reason: str = ""

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION

    def message(self) -> str:
        figure = f"{self.metric} {self.new_value:.4f}"
        return f"{self.registered_name} v{self.version} ({figure}): {self.alias}, {self.reason}"


CHAMPION_HISTORY = "champion_history"
# A baseline within this much of the new version on the same test window counts as a tie.
TIE_TOLERANCE = 0.001


def _champion(client: Any, registered_name: str) -> Any | None:
    import mlflow

    try:
        return client.get_model_version_by_alias(registered_name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def load_champion(registered_name: str) -> tuple[str, Any] | None:
    """The current champion's version and its Python model (None when there is none)."""
    import mlflow

    client = connect()
    current = _champion(client, registered_name)
    if current is None:
        return None
    model = fitted(mlflow.pyfunc.load_model(f"models:/{registered_name}/{current.version}"))
    return str(current.version), model


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


def gate(new: Candidate, champion_version: str | None, champion_value: float | None, note: str) -> tuple[bool, str]:
    """Whether a new version may become champion, and why: at least as good on its test window as
    every baseline (ties within TIE_TOLERANCE) and as the current champion re-scored on the same rows."""
    best_name, best_value = new.best_baseline()
    if best_name and new.value < best_value - TIE_TOLERANCE:
        return False, f"loses to the baseline {best_name} ({best_value:.4f}) on the same test window"
    versus = f" and baseline {best_name} {best_value:.4f}" if best_name else ""
    if champion_version is None:
        return True, f"first version; {new.candidate} wins on validation{versus}"
    if champion_value is None:
        return True, f"current champion {note}; promoted on the baseline gate{versus}"
    if new.value < champion_value:
        return False, f"current champion v{champion_version} scores {champion_value:.4f} on the same test rows"
    return True, f"at least as good as champion v{champion_version} ({champion_value:.4f} on the same rows){versus}"


def register_and_promote(
    model_uri: str,
    registered_name: str,
    new: Candidate,
    *,
    run_id: str,
    champion_rescored: float | None = None,
    champion_note: str = "",
    promote: bool = True,
) -> Promotion:
    """Register a version; alias it ``champion`` only if it passes :func:`gate`.

    ``champion_rescored`` is the current champion's primary metric on the new version's test rows
    (computed by the caller, which has the data); the new version, the baselines and the champion are
    compared on the same rows. Higher is better for every primary metric (ROC AUC, normalized Gini).
    With ``promote=False`` (the best model of a sweep) the version is a challenger whatever its
    figures: a person promotes it. Both figures and the reason are recorded on the version.
    """
    import mlflow

    client = connect()
    version = mlflow.register_model(model_uri, registered_name)
    number = str(version.version)
    client.set_registered_model_tag(registered_name, "family", new.family)
    client.set_registered_model_tag(registered_name, "dataset", new.dataset)
    current = _champion(client, registered_name)
    champion_version = str(current.version) if current is not None and str(current.version) != number else None
    if promote:
        passes, reason = gate(new, champion_version, champion_rescored, champion_note)
    else:
        passes, reason = False, "a sweep's best: promote it with make promote after review"
    alias = CHAMPION if passes else CHALLENGER
    _tag_version(client, registered_name, number, new, champion_rescored, reason)
    if alias == CHAMPION:
        move_champion(
            client, registered_name, number, f"trained, {new.metric} {new.value:.4f} (run {run_id}): {reason}"
        )
        client.update_registered_model(registered_name, description=new.description)
    else:
        client.set_registered_model_alias(registered_name, alias, number)
    promotion = Promotion(
        registered_name, number, alias, new.metric, float(new.value), champion_rescored, champion_version, reason
    )
    _tag_run(client, run_id, promotion)
    return promotion


def _tag_version(
    client: Any, registered_name: str, number: str, new: Candidate, champion_rescored: float | None, reason: str
) -> None:
    """Record on the version its figures, the best baseline's, the rescored champion's and the reason
    it was (or was not) promoted; the candidate's description too."""
    best_name, best_value = new.best_baseline()
    tags = {
        "family": new.family,
        "dataset": new.dataset,
        "primary_metric": new.metric,
        "primary_value": repr(float(new.value)),
        "test_window": new.test_window,
        "candidate": new.candidate,
        "best_baseline": best_name,
        "best_baseline_value": repr(best_value),
        "champion_value_rescored": repr(champion_rescored),
        "promotion_reason": reason,
    }
    for key, tag in tags.items():
        client.set_model_version_tag(registered_name, number, key, tag)
    if new.description:
        client.update_model_version(registered_name, number, description=new.description)


def _tag_run(client: Any, run_id: str, promotion: Promotion) -> None:
    """Record on the training run what became of its model: the message, alias, figures and version."""
    client.set_tag(run_id, "promotion", promotion.message())
    client.set_tag(run_id, "promotion_alias", promotion.alias)
    client.set_tag(run_id, "promotion_new_value", repr(promotion.new_value))
    client.set_tag(run_id, "promotion_champion_value", repr(promotion.champion_value))
    client.set_tag(run_id, "registered_version", promotion.version)


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


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None and value not in ("", "None") else None
    except ValueError:
        return None


def registered_models() -> list[dict[str, Any]]:
    """Every per-dataset registered model with its champion's figures, read from the registry only."""
    from training.families import parse_registered_name

    client = connect()
    rows = []
    for model in client.search_registered_models(filter_string="name LIKE 'valuecast-%'"):
        parsed = parse_registered_name(model.name)
        if parsed is None:
            continue
        family, dataset = parsed
        version_number = model.aliases.get(CHAMPION) if model.aliases else None
        row: dict[str, Any] = {
            "name": model.name,
            "dataset": model.tags.get("dataset", dataset),
            "family": model.tags.get("family", family),
            "champion_version": str(version_number) if version_number is not None else None,
            "candidate": None,
            "metric": None,
            "test_value": None,
            "best_baseline": None,
            "best_baseline_value": None,
            "trained_at": None,
        }
        if version_number is not None:
            version = client.get_model_version(model.name, str(version_number))
            tags = version.tags
            row |= {
                "candidate": tags.get("candidate"),
                "metric": tags.get("primary_metric"),
                "test_value": _float(tags.get("primary_value")),
                "best_baseline": tags.get("best_baseline") or None,
                "best_baseline_value": _float(tags.get("best_baseline_value")),
                "trained_at": pd.Timestamp(version.creation_timestamp, unit="ms", tz="UTC").isoformat(),
            }
        rows.append(row)
    return sorted(rows, key=lambda r: (r["dataset"], r["family"]))


def migrate_legacy(echo: Any = print) -> list[str]:
    """Move the champions of the one-per-family registered models of earlier versions
    (``valuecast-churn``) to the per-dataset names (``valuecast-churn-cdnow``, the dataset read from the
    training run's tags), once, with one line each. The old models stay, tagged ``migrated_to``."""
    import mlflow

    from training.families import legacy_name, names, registered_name

    client = connect()
    lines = []
    for family in names():
        old = legacy_name(family)
        try:
            model = client.get_registered_model(old)
        except mlflow.exceptions.MlflowException:
            continue
        if "migrated_to" in model.tags:
            continue
        current = _champion(client, old)
        if current is None:
            client.set_registered_model_tag(old, "migrated_to", "(no champion to migrate)")
            continue
        dataset = str(client.get_run(current.run_id).data.tags.get("dataset", ""))
        new = registered_name(family, dataset)
        copied = client.copy_model_version(f"models:/{old}/{current.version}", new)
        for key, value in current.tags.items():
            client.set_model_version_tag(new, copied.version, key, value)
        client.set_registered_model_tag(new, "family", family)
        client.set_registered_model_tag(new, "dataset", dataset)
        if _champion(client, new) is None:
            move_champion(client, new, str(copied.version), f"migrated from {old} v{current.version}")
        client.set_registered_model_tag(old, "migrated_to", f"{new} v{copied.version}")
        line = f"migrated {old} v{current.version} (dataset {dataset}) to {new} v{copied.version}; {old} is kept"
        echo(line)
        lines.append(line)
    return lines


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
                "segment_version": info["segment_version"] or "none",
                **{f"{family}_version": version for family, version in info["models"].items()},
            }
        )
        metrics = {"customers": summary["customers"], "suppressed": summary["suppressed"]}
        if "segments" in summary:  # value tiers and segments (not for a dataset scored by uplift alone)
            metrics |= {
                "tier_a_share_of_value": summary["tier_a_share_of_value"],
                "tier_a_share_of_customers": summary["tier_a_share_of_customers"],
                **{f"value_tier_{k}": v for k, v in summary["value_by_tier"].items()},
                **{f"value_at_risk_tier_{k}": v for k, v in summary["value_at_risk_by_tier"].items()},
                **{f"segment_{k}": v for k, v in summary["segments"].items()},
            }
        if info.get("uplift"):  # the action mix: customers and expected incremental value per action
            from training.uplift import arm_slug

            mix = info["uplift"]
            metrics |= {f"action_{arm_slug(k)}": v for k, v in mix["actions"].items()}
            metrics |= {f"action_{arm_slug(k)}_value": v for k, v in mix["expected_incremental_value"].items()}
        log_metrics(metrics)
        mlflow.log_artifact(str(out / "report.html"))
        mlflow.log_artifact(str(out / "summary.json"))
    return run_id


def log_lookalike_run(info: Mapping[str, Any], out: Path) -> str:
    """A look-alike run in the experiment ``lookalike``: seed, method and sizes as parameters, the
    recall of the hidden seed members in the top N and its lift over random per method as metrics
    (``<method>_recall_at_n``...), and the summary as an artifact. Returns the run id."""
    import mlflow

    with run(
        "lookalike",
        f"lookalike | {info['dataset']} | {info['seed']} | as of {info['as_of']}",
        {"dataset": str(info["dataset"]), "method": str(info["method"])},
    ) as run_id:
        log_params({k: info[k] for k in ("dataset", "as_of", "seed", "method", "random_state")})
        log_metrics({k: info[k] for k in ("seed_size", "customers", "candidates", "suppressed_excluded", "audience")})
        for quality in info["quality"]:
            figures = {k: quality[k] for k in ("recall_at_n", "random_recall_at_n", "lift", "top_n", "hidden")}
            log_metrics(figures, prefix=f"{quality['method']}_")
        mlflow.log_artifact(str(out / "summary.json"))
    return run_id
