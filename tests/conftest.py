"""Shared fixtures: the real datasets (skipped when absent, a failure under CI=true)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.config import load_dataset_config
from features.io import Dataset, DatasetMissingError, load_dataset

IN_CI = os.environ.get("CI", "").lower() == "true"


def load_real(name: str) -> Dataset:
    """A bundled dataset; skip when its file is absent, except under CI=true where that fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_dataset(load_dataset_config(name))
    except DatasetMissingError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and a real dataset is absent: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def cdnow() -> Dataset:
    return load_real("cdnow")


@pytest.fixture(scope="session")
def cdnow_transactions(cdnow: Dataset) -> pd.DataFrame:
    assert cdnow.transactions is not None
    return cdnow.transactions.frame


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store and artifact folder under tmp_path, for this test; returns its URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VALUECAST_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    return uri


@pytest.fixture()
def write_csv(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write text as a CSV file under tmp_path and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


SERVING_AS_OF = "1998-07-01"


@pytest.fixture(scope="session")
def champion_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A fresh MLflow store with champions trained on the CDNOW sample (``valuecast-<family>-cdnow_sample``)
    and X Education (``valuecast-lead-score-x_education``), and the CDNOW sample's frozen segment file;
    the variables are set for this process too (in-process scoring reads the same store)."""
    with store_environment(tmp_path_factory.mktemp("champions")) as values:
        from serving.scoring import load_champions, model_scores
        from serving.segments.rules import freeze, load_rules, write_frozen
        from training import tracking
        from training.run import train_and_log

        trained = [train_and_log(f, "cdnow_sample", echo=lambda _: None) for f in ("churn", "propensity", "clv")]
        trained.append(train_and_log("lead_score", "x_education", echo=lambda _: None))
        for outcome in trained:  # on the sample a version may tie a baseline and stay challenger: serve it
            if not outcome.promotion.promoted:
                tracking.promote(outcome.promotion.registered_name, outcome.promotion.version)
        champions = load_champions("cdnow_sample")
        scores, facts = model_scores(champions, load_real("cdnow_sample"), SERVING_AS_OF)
        write_frozen(freeze(pd.concat([scores, facts], axis=1), load_rules(), "cdnow_sample"), "cdnow_sample")
        yield values


@contextmanager
def store_environment(folder: Path) -> Iterator[dict[str, str]]:
    """The variables of a fresh MLflow store, artifact, segment and reload-stamp folders under
    ``folder``, set in this process until the block ends (then the previous values are put back)."""
    values = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "VALUECAST_ARTIFACT_ROOT": (folder / "artifacts").as_uri(),
        "VALUECAST_SEGMENTS_DIR": str(folder / "segments"),
        "VALUECAST_RELOAD_STAMP": str(folder / "reload.stamp"),
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def champion_store_copy(champion_store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the champion store's database and segment files, set for this test: a test that trains,
    promotes or freezes there leaves the champions the other tests serve as they were. Returns the folder."""
    database = Path(champion_store["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    shutil.copy(database, tmp_path / "mlflow.db")
    shutil.copytree(champion_store["VALUECAST_SEGMENTS_DIR"], tmp_path / "segments")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("VALUECAST_SEGMENTS_DIR", str(tmp_path / "segments"))
    return tmp_path


def register_copy(source: Any, registered_name: str, dataset: str, family: str) -> str:
    """Log an already trained Python model again, in the store the environment names now, from a run
    tagged with ``family`` and ``dataset``, and register it as ``registered_name``'s champion: a store
    shaped as another dataset's (or an earlier version's) without training again. Returns the version."""
    import mlflow

    from training import tracking

    client = tracking.connect()
    with tracking.run(f"copies-{family}", f"copy | {family} | {dataset}", {"family": family, "dataset": dataset}):
        info = mlflow.pyfunc.log_model(name="model", python_model=source, pip_requirements=[])
    version = mlflow.register_model(info.model_uri, registered_name)
    client.set_registered_model_alias(registered_name, "champion", version.version)
    return str(version.version)


def ends_with_this_process() -> None:
    """``preexec_fn`` of a server the tests start in its own process group: the kernel sends it SIGTERM
    when the test process dies, so a killed test run does not leave servers behind (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_server(command: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """A server process in its own process group, its output to ``log`` (a file: a pipe nobody reads
    fills up), ending with this process (:func:`ends_with_this_process`)."""
    from features.config import PROJECT_ROOT

    return subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=ends_with_this_process,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_of(answer: Any) -> int | None:
    """The worker number in a /readyz answer of the API, None for any other answer."""
    try:
        body = answer.json()
    except ValueError:
        return None
    worker = body.get("worker") if isinstance(body, dict) else None
    return worker if isinstance(worker, int) else None


@contextmanager
def running_server(command: list[str], env: dict[str, str], ready_url: str, timeout: float = 120) -> Iterator[None]:
    """Start a server process (its own process group), wait until it is ready, stop it after.

    Ready: where ``ready_url`` answers with the number of the worker that answered (the API's
    /readyz), 200 from every one of ``VALUECAST_WORKERS`` workers (each probe on a new connection,
    which any worker may accept); each worker loads the models on its own, and one ready worker does
    not make the other ready (found as a 503 "loading" right after a wait that counted ten 200s in a
    row, all from the worker that had loaded). Elsewhere, 200 ten times in a row.

    Its output goes to a file, not a pipe: a pipe nobody reads fills up with the access log (64 KiB)
    and the server then blocks on its next log line (found as a load test that hung after 44 answers)."""
    import tempfile

    import httpx

    with tempfile.TemporaryFile() as log:
        process = start_server(command, env, log)
        try:
            deadline, in_a_row, ready_workers = time.time() + timeout, 0, set()
            workers = int(env.get("VALUECAST_WORKERS", "2"))  # the API's default
            while time.time() < deadline:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{command[0]} exited: {log.read().decode(errors='replace')[-5000:]}")
                try:
                    answer = httpx.get(ready_url, timeout=2)
                    answered = answer.status_code == 200
                    worker = _worker_of(answer) if answered else None
                except httpx.HTTPError:
                    answered, worker = False, None
                in_a_row = in_a_row + 1 if answered else 0
                if worker is not None:
                    ready_workers.add(worker)
                if len(ready_workers) >= workers or (worker is None and in_a_row >= 10):
                    break
                time.sleep(0.05 if answered else 0.5)
            else:
                raise RuntimeError(f"{ready_url} did not answer within {timeout:.0f} s")
            yield
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
