"""The MLflow module against a real SQLite store under tmp_path: runs, registry, champion rules."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from training import tracking


class Constant(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        return pd.DataFrame({"score": [self.value] * len(model_input)})


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("VALUECAST_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    return tmp_path


def train_version(value: float, auc: float, window: str = "1997-10-01+90d") -> tracking.Promotion:
    example = pd.DataFrame({"x": [1.0, 2.0]})
    with tracking.run("test-experiment", f"constant-{value}") as run_id:
        tracking.log_metrics({"roc_auc": auc})
        uri = tracking.log_model(
            Constant(value),
            name="model",
            input_example=example,
            output_example=pd.DataFrame({"score": [value, value]}),
            pip_requirements=["pandas"],
        )
        current = tracking.load_champion("valuecast-test")
        # the champion re-scored on this version's rows: here the figure it was registered with, when
        # the window is the same (a real family re-scores it with Trained.rescore)
        rescored = None
        if current is not None:
            tags = tracking.connect().get_model_version("valuecast-test", current[0]).tags
            rescored = float(tags["primary_value"]) if tags["test_window"] == window else None
        candidate = tracking.Candidate("roc_auc", auc, window, "constant", {"rate": 0.6}, "test", "test")
        return tracking.register_and_promote(
            uri, "valuecast-test", candidate, run_id=run_id, champion_rescored=rescored
        )


@pytest.mark.slow
def test_champion_moves_only_when_beaten(store: Path) -> None:
    first = train_version(1.0, 0.70)
    assert first.promoted and first.champion_value is None
    worse = train_version(2.0, 0.65)
    assert worse.alias == tracking.CHALLENGER and worse.champion_value == pytest.approx(0.70)
    better = train_version(3.0, 0.75)
    assert better.promoted and better.champion_version == first.version
    below_baseline = train_version(4.0, 0.55)
    assert below_baseline.alias == tracking.CHALLENGER and "loses to the baseline rate" in below_baseline.reason

    champion = mlflow.pyfunc.load_model("models:/valuecast-test@champion")
    assert champion.predict(pd.DataFrame({"x": [0.0]}))["score"].tolist() == [3.0]
    client = tracking.connect()
    run = client.get_run(client.get_model_version("valuecast-test", worse.version).run_id)
    assert run.data.tags["promotion_alias"] == "challenger"
    assert "scores 0.7000 on the same test rows" in run.data.tags["promotion"]
    assert (store / "mlflow.db").exists() and (store / "artifacts").exists()


def test_models_are_logged_as_code_and_a_changed_state_is_refused(store: Path) -> None:
    import yaml

    with tracking.run("test-experiment", "constant-code"):
        uri = tracking.log_model(
            Constant(7.0),
            name="model",
            input_example=pd.DataFrame({"x": [1.0]}),
            output_example=pd.DataFrame({"score": [7.0]}),
            pip_requirements=["pandas"],
        )
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(store / "download")))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models from code, not a pickle
    assert not (local / "python_model.pkl").exists()
    assert (local / "logged_model.py").exists()
    loaded = mlflow.pyfunc.load_model(str(local))
    assert isinstance(tracking.fitted(loaded), Constant)
    assert loaded.predict(pd.DataFrame({"x": [0.0, 1.0]}))["score"].tolist() == [7.0, 7.0]

    state = local / flavor["artifacts"][tracking.STATE]["path"]
    state.write_bytes(state.read_bytes() + b"\0")  # the fitted state changed after logging
    with pytest.raises(Exception, match="changed after logging"):
        mlflow.pyfunc.load_model(str(local))


def test_integer_outputs_are_logged_without_mlflows_missing_values_hint_which_inputs_keep(store: Path) -> None:
    import warnings

    hint = "Inferred schema contains integer column"
    with tracking.run("test-experiment", "integer-output"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        uri = tracking.log_model(
            Constant(1.0),
            name="model",
            input_example=pd.DataFrame({"x": [1.0]}),
            output_example=pd.DataFrame({"segment_id": [-1, 2]}),  # like macro_segment_id: -1, never missing
            pip_requirements=["pandas"],
        )
    assert not [w for w in caught if hint in str(w.message)]
    outputs = mlflow.models.get_model_info(uri).signature.outputs
    assert outputs.input_names() == ["segment_id"] and outputs.input_types()[0] == mlflow.types.DataType.long

    with tracking.run("test-experiment", "integer-input"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracking.log_model(
            Constant(1.0),
            name="model",
            input_example=pd.DataFrame({"x": [1, 2]}),  # an input MLflow enforces: the hint stays
            output_example=pd.DataFrame({"score": [1.0, 1.0]}),
            pip_requirements=["pandas"],
        )
    assert [w for w in caught if hint in str(w.message)]


def test_a_model_with_only_a_challenger_says_why_and_how_to_serve_it(store: Path) -> None:
    from serving.scoring import load_champions

    with tracking.run("test-experiment", "constant-challenger") as run_id:
        uri = tracking.log_model(
            Constant(0.5),
            name="model",
            input_example=pd.DataFrame({"x": [1.0]}),
            output_example=pd.DataFrame({"score": [0.5]}),
            pip_requirements=["pandas"],
        )
        candidate = tracking.Candidate("roc_auc", 0.60, "w", "xgboost", {"rfm": 0.62}, "churn", "shop")
        promotion = tracking.register_and_promote(uri, "valuecast-churn-shop", candidate, run_id=run_id)
    assert promotion.alias == tracking.CHALLENGER
    problem = load_champions("shop").problems["churn"]
    assert "v1 is a challenger (loses to the baseline rfm (0.6200)" in problem
    assert "make promote MODEL=churn DATA=shop VERSION=1" in problem


def test_a_dataset_input_has_mlflows_own_schema_and_a_digest_of_every_row(store: Path) -> None:
    """The schema read from the column types is what MLflow infers value by value (text as object, as
    MLflow needs it), and the digest changes when a row past MLflow's first 10,000 changes."""
    from mlflow.data.pandas_dataset import from_pandas

    rows = 10_050
    frame = pd.DataFrame(
        {
            "customer_id": pd.Categorical([f"c{i % 7}" for i in range(rows)]),
            "country": pd.Series(["DE", None] * (rows // 2), dtype="str"),
            "timestamp": pd.date_range("2020-01-01", periods=rows, freq="h"),
            "amount": [float(i) for i in range(rows)],
            "discount": pd.array([0.5, None] * (rows // 2), dtype="Float64"),
            "quantity": list(range(rows)),
            "first": [True, False] * (rows // 2),
            "note": pd.Series(["a", "b"] * (rows // 2), dtype="string"),
        }
    )
    as_text = frame.astype({c: object for c in ("customer_id", "country", "note")})

    def logged(table: pd.DataFrame) -> mlflow.entities.Dataset:
        with tracking.run("test-inputs", "inputs") as run_id:
            tracking.log_dataset_input(table, source=str(store / "t.csv"), name="shop.transactions")
        return mlflow.MlflowClient().get_run(run_id).inputs.dataset_inputs[0].dataset

    with pytest.warns(UserWarning, match="integer column"):
        inferred = from_pandas(as_text, source=str(store / "t.csv")).schema
    first = logged(frame)
    assert json.loads(first.schema)["mlflow_colspec"] == json.loads(inferred.to_json())
    assert first.name == "shop.transactions" and '"num_rows": 10050' in first.profile
    changed = frame.copy()
    changed.loc[rows - 1, "amount"] = -1.0
    assert logged(changed).digest != first.digest
    assert logged(frame.copy()).digest == first.digest
