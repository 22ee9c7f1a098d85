"""Experiments: definitions, the validation protocol, a real Optuna sweep into a real MLflow store,
``compare``, an interrupted sweep, promote/rollback in the registry, and the MLflow server's REST API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest

from experiments.sweep import _StopRequest, apply, load_experiment, run_experiment
from features.config import PROJECT_ROOT, ConfigError
from training.config import load_model_config
from training.customers import time_split, validation_config
from training.guards import TrainingRefusedError

from .conftest import free_port, load_real, running_server

VALUECAST = str(Path(sys.executable).with_name("valuecast"))
CHURN = "valuecast-churn-cdnow_sample"  # the sweep and make train both use the CDNOW sample
SWEEP = """\
name: sweep-test
family: churn
dataset: cdnow_sample
trials: 3
seed: 0
settings:
  calibration: none
search_space:
  xgboost.max_depth: {type: int, low: 2, high: 4}
  xgboost.n_estimators: {type: int, low: 20, high: 120, step: 20}
  xgboost.learning_rate: {type: float, low: 0.05, high: 0.3, log: true}
"""


def store_client(uri: str) -> mlflow.MlflowClient:
    """A client of this store for tracking and registry (MLflow's default registry is process-global)."""
    return mlflow.MlflowClient(uri, registry_uri=uri)


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- definitions ------------------------------------------------------------------------------------


def test_every_shipped_experiment_loads() -> None:
    shipped = sorted((PROJECT_ROOT / "experiments").glob("*.yaml"))
    families = {load_experiment(path).family for path in shipped}
    assert families == {"churn", "propensity", "lead_score", "clv"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("famly: churn\n", "famly: unknown key"),
        ("search_space:\n  xgboost.max_dept: {type: int, low: 2, high: 4}\n", "max_dept: unknown key"),
        ("search_space:\n  xgboost.max_depth: {type: int, low: 5, high: 4}\n", "'low' <= 'high'"),
        ("search_space:\n  seed.x: {type: int, low: 1, high: 4}\n", "'seed.x' is not a model setting"),
        ("settings:\n  calibration: platt\n", "settings: calibration"),
        ("family: loyalty\n", "unknown model 'loyalty'"),
    ],
)
def test_bad_experiment_files_name_the_key(tmp_path: Path, change: str, message: str) -> None:
    base = "name: x\nfamily: churn\ndataset: cdnow_sample\n"
    if change.startswith("family"):
        base = base.replace("family: churn\n", "")
    with pytest.raises(ConfigError, match=message):
        load_experiment(write(tmp_path, base + change))


def test_apply_sets_nested_settings_without_touching_the_others() -> None:
    config = load_model_config("churn", "cdnow")
    changed = apply(config, {"xgboost.max_depth": 2, "calibration": "sigmoid"})
    assert changed.xgboost.max_depth == 2 and changed.calibration == "sigmoid"
    assert changed.xgboost.learning_rate == config.xgboost.learning_rate
    assert config.xgboost.max_depth != 2  # the input config is unchanged


# -- the validation protocol ------------------------------------------------------------------------


def test_the_validation_window_ends_where_the_test_window_starts() -> None:
    dataset = load_real("cdnow_sample")
    config = load_model_config("churn", "cdnow_sample")
    test = time_split(dataset, config)
    validation = time_split(dataset, validation_config(dataset, config))
    assert validation.test_cutoff + pd.Timedelta(days=config.horizon_days) <= test.test_cutoff
    assert validation.test_cutoff == pd.Timestamp("1998-01-01") and test.test_cutoff == pd.Timestamp("1998-04-01")
    # every training label of the validation protocol ends by the validation cut-off
    assert max(validation.train_cutoffs) + pd.Timedelta(days=config.horizon_days) <= validation.test_cutoff


def test_a_validation_window_into_the_test_window_is_refused() -> None:
    dataset = load_real("cdnow_sample")
    # the shipped config sets its own validation window; without it, 1997-10-01 - 273 days leaves no history
    config = load_model_config("clv", "cdnow_sample").model_copy(
        update={"validation_cutoff": None, "validation_horizon_days": None}
    )
    with pytest.raises(TrainingRefusedError, match=r"validation window 1997-01-01 \+ 273 days: 0 days of history"):
        validation_config(dataset, config)
    late = config.model_copy(update={"validation_cutoff": "1997-08-01", "validation_horizon_days": 91})
    with pytest.raises(TrainingRefusedError, match="runs into the test window"):
        validation_config(dataset, late)
    shipped = apply(config, {"validation_cutoff": "1997-07-02", "validation_horizon_days": 91})
    chosen = validation_config(dataset, shipped)
    assert chosen.test_cutoff == "1997-07-02" and chosen.horizon_days == 91


def test_snapshot_validation_never_scores_the_test_part() -> None:
    from training import lead_score

    dataset = load_real("x_education")
    config = load_model_config("lead_score", "x_education").model_copy(
        update={"xgboost": load_model_config("lead_score").xgboost.model_copy(update={"n_estimators": 50})}
    )
    full = lead_score.train(dataset, config)
    inner = lead_score.train(dataset, validation_config(dataset, config))
    assert inner.train_rows + inner.test_rows == full.train_rows  # only the training part is used
    assert inner.test_window.startswith("validation")


# -- a sweep into a real store ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A champion trained with ``make train``'s code, then a three-trial sweep, in a store of its own."""
    from training.run import train_and_log

    folder = tmp_path_factory.mktemp("sweep")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "VALUECAST_ARTIFACT_ROOT": (folder / "artifacts").as_uri(),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        champion = train_and_log("churn", "cdnow_sample", echo=lambda _: None)
        if not champion.promotion.promoted:  # on the sample it may lose to a baseline by a hair: a person's call
            from training import tracking

            tracking.promote(CHURN, champion.promotion.version)
        lines: list[str] = []
        outcome = run_experiment(write(folder, SWEEP), echo=lines.append)
        yield {"env": env, "folder": folder, "outcome": outcome, "champion": champion, "lines": lines}


@pytest.mark.slow
@pytest.mark.real_data
def test_a_sweep_logs_nested_trials_and_registers_a_challenger(sweep: dict[str, object]) -> None:
    outcome = sweep["outcome"]
    client = store_client(str(sweep["env"]["MLFLOW_TRACKING_URI"]))  # type: ignore[index]
    experiment = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([experiment.experiment_id])
    parent = client.get_run(outcome.parent_run_id)  # type: ignore[attr-defined]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 3 and {r.info.status for r in trials} == {"FINISHED"}
    assert all(r.data.tags["window"] == "validation" and "val_roc_auc" in r.data.metrics for r in trials)
    best = max(trials, key=lambda r: r.data.metrics["val_roc_auc"])
    # the parent holds the best trial's parameters and metrics, and the test-window figures of its refit
    assert parent.data.metrics["val_roc_auc"] == best.data.metrics["val_roc_auc"]
    for key in ("search_xgboost.max_depth", "search_xgboost.n_estimators", "xgb_max_depth", "test_cutoff"):
        assert parent.data.params[key] == best.data.params[key]
    assert parent.data.tags["best_trial"] == best.data.tags["trial"]
    assert 0.5 < parent.data.metrics["roc_auc"] < 1.0
    assert parent.data.tags["test_window"] == sweep["champion"].trained.test_window  # type: ignore[attr-defined]
    # trials were scored on the window before the test window, the refit on the test window
    assert best.data.params["test_cutoff"] == "1998-01-01"
    assert parent.data.tags["test_window"].startswith("1998-04-01")
    # registered, never promoted: the champion of make train stays
    version = outcome.promotion.version  # type: ignore[attr-defined]
    assert outcome.promotion.alias == "challenger"  # type: ignore[attr-defined]
    model = client.get_registered_model(CHURN)
    assert str(model.aliases["challenger"]) == version
    assert str(model.aliases["champion"]) == sweep["champion"].promotion.version  # type: ignore[attr-defined]
    assert client.get_model_version(CHURN, version).run_id == parent.info.run_id


@pytest.mark.slow
@pytest.mark.real_data
def test_compare_prints_the_runs_sorted_and_writes_a_figure(sweep: dict[str, object]) -> None:
    env = {**os.environ, **sweep["env"]}  # type: ignore[dict-item]
    figure = Path(str(sweep["folder"])) / "compare.png"
    done = subprocess.run(
        [VALUECAST, "compare", "--experiment", "sweep-test", "--out", str(figure)],
        env=env,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(figure.with_suffix(".csv"), dtype={"version": str, "alias": str})
    assert {"run", "model", "val_roc_auc", "baseline", "test_roc_auc", "version", "alias"} <= set(table.columns)
    assert len(table) == 4  # three trials and the parent; no baseline runs
    assert table["val_roc_auc"].is_monotonic_decreasing
    parent = table.loc[table["run"].str.startswith("sweep | churn | cdnow_sample")]
    assert len(parent) == 1 and parent["alias"].iloc[0] == "challenger"
    assert parent["val_roc_auc"].iloc[0] == table["val_roc_auc"].max()
    assert str(parent["version"].iloc[0]) == sweep["outcome"].promotion.version  # type: ignore[attr-defined]
    header = done.stdout.splitlines()[0].split()
    assert header[:3] == ["run", "model", "status"] and "val_roc_auc" in header
    assert "4 run(s) sorted by val_roc_auc" in done.stdout
    assert figure.stat().st_size > 5_000

    by_test = subprocess.run(
        [VALUECAST, "compare", "--experiment", "valuecast-churn", "--metric", "roc_auc", "--out", str(figure)],
        env=env,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert by_test.returncode == 0 and "1 run(s) sorted by roc_auc" in by_test.stdout, by_test.stderr
    unknown = subprocess.run(
        [VALUECAST, "compare", "--experiment", "sweep-test", "--metric", "accuracy"],
        env=env,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert unknown.returncode == 2 and "no run has the metric 'accuracy'" in unknown.stderr


@pytest.mark.slow
@pytest.mark.real_data
def test_promote_and_rollback_move_the_champion_and_record_it(sweep: dict[str, object]) -> None:
    env = {**os.environ, **sweep["env"]}  # type: ignore[dict-item]
    client = store_client(str(sweep["env"]["MLFLOW_TRACKING_URI"]))  # type: ignore[index]
    first = sweep["champion"].promotion.version  # type: ignore[attr-defined]
    challenger = sweep["outcome"].promotion.version  # type: ignore[attr-defined]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([VALUECAST, *args], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)

    promoted = cli("promote", "--model", "churn", "--data", "cdnow_sample", "--version", challenger)
    assert promoted.returncode == 0, promoted.stderr
    assert f"champion is now v{challenger} (was v{first})" in promoted.stdout
    model = client.get_registered_model(CHURN)
    # a promoted challenger is no longer one
    assert {k: str(v) for k, v in model.aliases.items()} == {"champion": challenger}
    assert model.tags["champion_history"] == f'["{first}", "{challenger}"]'
    assert "make promote" in client.get_model_version(CHURN, challenger).tags["champion_reason"]

    rolled = cli("rollback", "--model", "churn", "--data", "cdnow_sample")
    assert rolled.returncode == 0 and f"champion is now v{first} (was v{challenger})" in rolled.stdout
    assert str(client.get_registered_model(CHURN).aliases["champion"]) == first
    assert "rolled_back" in client.get_model_version(CHURN, challenger).tags

    nothing_left = cli("rollback", "--model", "churn", "--data", "cdnow_sample")
    assert nothing_left.returncode == 2 and "only champion on record" in nothing_left.stderr
    missing = cli("promote", "--model", "churn", "--data", "cdnow_sample", "--version", "99")
    assert missing.returncode == 2 and "has no version '99'" in missing.stderr
    unknown = cli("promote", "--model", "loyalty", "--data", "cdnow_sample", "--version", "1")
    assert unknown.returncode == 2 and "unknown model 'loyalty'" in unknown.stderr


@pytest.mark.slow
@pytest.mark.real_data
def test_an_interrupted_sweep_keeps_its_finished_trials(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "VALUECAST_ARTIFACT_ROOT": (tmp_path / "artifacts").as_uri(),
    }
    process = subprocess.Popen(
        [VALUECAST, "experiment", "--config", str(write(tmp_path, SWEEP)), "--trials", "200"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a user at a terminal sends it: a suite started in the background (`make test &`)
        # hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    client = store_client(env["MLFLOW_TRACKING_URI"])
    deadline = time.time() + 180
    finished: list[object] = []
    while time.time() < deadline and process.poll() is None:
        time.sleep(1)
        experiment = client.get_experiment_by_name("sweep-test") if (tmp_path / "mlflow.db").exists() else None
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], "tags.window = 'validation'")
            finished = [r for r in runs if r.info.status == "FINISHED"]
            if len(finished) >= 2:
                break
    assert len(finished) >= 2, "no trial finished in time"
    assert process.poll() is None, "the sweep ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "stopping after the trial under way" in err
    assert "interrupted: the finished trials are kept" in out
    experiment = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([experiment.experiment_id])
    kept = [r for r in runs if r.data.tags.get("window") == "validation" and r.info.status == "FINISHED"]
    assert len(kept) >= len(finished)
    parent = next(r for r in runs if r.data.tags.get("sweep") == "true" and "trial" not in r.data.tags)
    assert parent.info.status == "KILLED" and parent.data.tags["interrupted"] == "true"
    assert parent.data.metrics["val_roc_auc"] == max(r.data.metrics["val_roc_auc"] for r in kept)
    assert client.search_registered_models() == []  # nothing registered


def test_ctrl_c_waits_for_the_trial_under_way_unless_sigint_is_ignored() -> None:
    """The sweep's SIGINT handler is in place only while it runs, and a process that ignores SIGINT
    (started with `&` or `nohup`) keeps ignoring it."""
    said: list[str] = []
    stop = _StopRequest(said.append)
    # as at a terminal, whatever this suite inherited (a background job's SIGINT is ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with stop.on_sigint():
            assert signal.getsignal(signal.SIGINT) == stop._handle
            signal.raise_signal(signal.SIGINT)  # the first: a request, no exception
            assert stop.requested and said
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)  # the second: at once
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with _StopRequest(said.append).on_sigint():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# -- the MLflow server ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.real_data
def test_the_mlflow_server_serves_what_training_created(champion_store: dict[str, str]) -> None:
    """`make ui`'s command against the store the champions were trained into, read through REST."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    command = [VALUECAST, "ui", "--port", str(port)]
    with running_server(command, {**os.environ, **champion_store}, f"http://127.0.0.1:{port}/health", timeout=90):
        experiment = httpx.get(f"{api}/experiments/get-by-name", params={"experiment_name": "valuecast-churn"})
        assert experiment.status_code == 200, experiment.text
        experiment_id = experiment.json()["experiment"]["experiment_id"]
        champion = httpx.get(f"{api}/registered-models/alias", params={"name": CHURN, "alias": "champion"})
        assert champion.status_code == 200, champion.text
        version = champion.json()["model_version"]
        tags = {t["key"]: t["value"] for t in version["tags"]}
        assert tags["primary_metric"] == "roc_auc" and tags["test_window"].startswith("cdnow_sample")
        found = httpx.post(
            f"{api}/runs/search",
            json={"experiment_ids": [experiment_id], "filter": "tags.dataset = 'cdnow_sample'", "max_results": 100},
        ).json()["runs"]
        run = next(r for r in found if r["info"]["run_id"] == version["run_id"])  # the champion's run
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert metrics["roc_auc"] == pytest.approx(float(tags["primary_value"]))
        assert "baseline_rfm_logistic_regression_roc_auc" in metrics
        assert params["data_entities"] == "2357"
        children = [r for r in found if any(t["key"] == "mlflow.parentRunId" for t in r["data"]["tags"])]
        assert {"baseline | rfm_logistic_regression"} <= {r["info"]["run_name"] for r in children}
        history = httpx.get(
            f"{api}/metrics/get-history", params={"run_id": run["info"]["run_id"], "metric_key": "roc_auc"}
        ).json()["metrics"]
        assert history[0]["value"] == metrics["roc_auc"]
        artifacts = httpx.get(f"{api}/artifacts/list", params={"run_id": run["info"]["run_id"], "path": "figures"})
        assert {"figures/roc.png", "figures/calibration.png"} <= {f["path"] for f in artifacts.json()["files"]}

        names = {m["name"] for m in httpx.get(f"{api}/registered-models/search").json()["registered_models"]}
        assert {
            "valuecast-churn-cdnow_sample",
            "valuecast-propensity-cdnow_sample",
            "valuecast-clv-cdnow_sample",
            "valuecast-lead-score-x_education",
        } <= names
