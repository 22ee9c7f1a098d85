"""The commands a user runs, end to end on CDNOW, and the Makefile as the front door."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from valuecast.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_features_labels_and_training_set_on_cdnow(tmp_path: Path) -> None:
    features_out, labels_out, training_out = tmp_path / "f.parquet", tmp_path / "l.csv", tmp_path / "t.parquet"
    result = runner.invoke(app, ["features", "--data", "cdnow", "--as-of", "1997-10-01", "--out", str(features_out)])
    assert result.exit_code == 0, result.output
    features = pd.read_parquet(features_out)
    assert len(features) == 23_570
    assert (features["as_of"] == pd.Timestamp("1997-10-01")).all()
    assert features["T_days"].max() == 272  # 1997-01-01 .. 1997-09-30

    result = runner.invoke(
        app, ["labels", "--data", "cdnow", "--as-of", "1997-10-01", "--horizon-days", "90", "--out", str(labels_out)]
    )
    assert result.exit_code == 0, result.output
    labels = pd.read_csv(labels_out)
    assert len(labels) == 23_570
    assert set(labels.columns) >= {"customer_id", "purchased", "churned", "future_spend", "future_orders"}

    result = runner.invoke(
        app, ["training-set", "--data", "cdnow", "--horizon-days", "90", "--cutoffs", "2", "--out", str(training_out)]
    )
    assert result.exit_code == 0, result.output
    training = pd.read_parquet(training_out)
    assert sorted(training["cutoff"].unique()) == [pd.Timestamp("1998-03-01"), pd.Timestamp("1998-04-01")]


def test_bad_as_of_is_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["features", "--data", "cdnow", "--as-of", "01/10/1997", "--out", str(tmp_path / "x.parquet")]
    )
    assert result.exit_code == 2
    assert "AS_OF='01/10/1997' is not a date: write it as YYYY-MM-DD" in result.output
    assert "Traceback" not in result.output


def test_labels_past_the_data_are_refused(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "labels",
            "--data",
            "cdnow",
            "--as-of",
            "1998-06-01",
            "--horizon-days",
            "90",
            "--out",
            str(tmp_path / "l.parquet"),
        ],
    )
    assert result.exit_code == 2
    assert "after the last transaction day 1998-06-30" in result.output
    assert not (tmp_path / "l.parquet").exists()


def test_synthesize_writes_a_log_the_features_command_reads(tmp_path: Path) -> None:
    out = tmp_path / "synthetic.parquet"
    result = runner.invoke(app, ["synthesize", "--customers", "300", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = tmp_path / "synthetic.yaml"
    config.write_text(
        "transactions:\n  path: synthetic.parquet\n"
        "  columns: {customer_id: customer_id, timestamp: timestamp, amount: amount, category: category}\n"
    )
    result = runner.invoke(app, ["features", "--data", str(config), "--out", str(tmp_path / "f.parquet")])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "f.parquet")) == 300


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):.*?## ", text, flags=re.M))


def test_make_help_is_the_default_and_lists_every_target() -> None:
    listed = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT)], capture_output=True, text=True, check=True
    )
    targets = make_targets()
    assert {
        "help",
        "setup",
        "demo",
        "test",
        "features",
        "labels",
        "training-set",
        "bench-features",
        "train",
        "model-quality",
        "bench-train",
        "models",
        "promote",
        "rollback",
    } <= targets
    for target in targets:
        assert re.search(rf"^  {re.escape(target)} +\S", listed.stdout, flags=re.M), target
    variables = ["MODEL=churn", "DATA=telco", "VERSION=2", "JSON=1"]
    dry = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "promote", "rollback", "models", *variables],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "promote --model churn --data telco --version 2" in dry.stdout
    assert "rollback --model churn --data telco" in dry.stdout and "models --json" in dry.stdout


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VALUECAST_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    monkeypatch.setenv("VALUECAST_SEGMENTS_DIR", str(tmp_path / "segments"))
    return uri


@pytest.mark.slow
def test_demo_builds_every_bundled_dataset_and_registers_the_models(tmp_path: Path, mlflow_store: str) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cdnow" / "features.parquet").exists()
    assert "cdnow" in result.output and "23,570 customers" in result.output
    import mlflow

    client = mlflow.MlflowClient(mlflow_store)
    for name in (
        "valuecast-churn-cdnow",
        "valuecast-propensity-cdnow",
        "valuecast-clv-cdnow",
        "valuecast-lead-score-x_education",
        "valuecast-macro-segment-online_retail",
        "valuecast-uplift-hillstrom",
    ):
        assert client.get_model_version_by_alias(name, "champion").version is not None, name
    assert len(list((tmp_path / "segments" / "cdnow").glob("segments-*.json"))) == 1
    assert re.search(
        r"20/80 check: tier A is \d+\.\d% of customers and holds 5\d\.\d% of predicted value", result.output
    )
    assert (tmp_path / "scores" / "scores.parquet").exists() and (tmp_path / "scores" / "report.html").exists()


def test_train_prints_runs_metrics_baselines_and_the_promotion(mlflow_store: str) -> None:
    result = runner.invoke(app, ["train", "--data", "telco", "--model", "churn"])
    assert result.exit_code == 0, result.output
    assert re.search(r"churn on telco: run [0-9a-f]{32}", result.output)
    assert re.search(
        r"model +(xgboost|logistic_regression|blend|plain_logistic_regression): roc_auc 0\.8\d+", result.output
    )
    assert "baseline  plain_logistic_regression: roc_auc" in result.output
    assert re.search(r"chose +best roc_auc on 5-fold cross-validation on the training part", result.output)
    assert re.search(r"valuecast-churn-telco v1 \(roc_auc 0\.\d+\): champion, first version", result.output)


def test_train_refusals_and_unknown_models_are_one_line(mlflow_store: str) -> None:
    refused = runner.invoke(app, ["train", "--data", "cdnow", "--model", "lead_score"])
    assert refused.exit_code == 1  # refused: the data cannot support the model (2 is a usage or config error)
    assert (
        "lead_score: training refused: dataset 'cdnow' has no leads table with a 'converted' column" in refused.output
    )
    unknown = runner.invoke(app, ["train", "--data", "cdnow", "--model", "ltv"])
    assert (
        unknown.exit_code == 2
        and "unknown model 'ltv': use one of churn, propensity, clv, lead_score" in unknown.output
    )


def test_demo_without_the_shared_data_uses_cdnow_and_synthetic_leads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VALUECAST_DATA_ROOT", str(tmp_path / "nothing-here"))
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "out"), "--no-train"])
    assert result.exit_code == 0, result.output
    assert "using synthetic leads instead of X Education" in result.output
    assert "skipped online_retail" in result.output
    assert (tmp_path / "out" / "cdnow" / "features.parquet").exists()
    leads = pd.read_parquet(tmp_path / "out" / "synthetic_leads" / "lead_features.parquet")
    assert len(leads) == 2_000 and set(leads["converted"].unique()) == {0, 1}


def test_a_demo_process_skips_what_is_absent_and_returns_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mlflow_store: str
) -> None:
    """One of the demo's two training processes: a dataset that is absent is skipped with a line naming
    the family, and a user's error comes back as its message and exit code for the demo to report."""
    from valuecast.cli import train_families_in_process

    monkeypatch.setenv("VALUECAST_DATA_ROOT", str(tmp_path / "nothing-here"))
    frame, error = train_families_in_process((("macro_segment", "online_retail"),))
    assert error is None and frame.empty
    assert "macro_segment on online_retail: skipped" in capsys.readouterr().err
    frame, error = train_families_in_process((("churn", "no_such_dataset"),))
    assert error is not None and error[1] == 2 and "no_such_dataset" in error[0], error


def test_the_demos_processes_import_this_projects_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has loaded a logged model has that model's copy of features/ first on sys.path
    (MLflow puts a model's code there): the demo's spawned training processes still import this
    project's packages, whose configs sit beside them."""
    import importlib.resources

    from features.config import PROJECT_ROOT
    from valuecast.cli import training_pool

    decoy = tmp_path / "code" / "features"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    with training_pool(1) as pool:
        found = pool.apply(importlib.resources.files, ("features",))
    assert Path(str(found)).resolve() == (PROJECT_ROOT / "features").resolve()
