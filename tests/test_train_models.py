"""Training pipelines end to end: real data, a real SQLite MLflow store, the registry and aliases."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from features.io import Dataset
from training import churn, clv, lead_score, propensity
from training.config import load_model_config
from training.guards import TrainingRefusedError
from training.run import log_trained, train_and_log

from .conftest import load_real


@pytest.fixture(scope="module")
def cdnow_clv_and_warnings() -> tuple[Dataset, object, list[warnings.WarningMessage]]:
    dataset = load_real("cdnow")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = clv.train(dataset, load_model_config("clv", "cdnow"))
    return dataset, trained, caught


@pytest.fixture(scope="module")
def cdnow_clv(cdnow_clv_and_warnings) -> tuple[Dataset, object]:  # type: ignore[no-untyped-def]
    dataset, trained, _ = cdnow_clv_and_warnings
    return dataset, trained


@pytest.mark.real_data
def test_cdnow_clv_candidates_converge(cdnow_clv_and_warnings) -> None:  # type: ignore[no-untyped-def]
    """Every candidate is compared as a finished fit: the Poisson GLM with L-BFGS stopped at its
    1,000-iteration limit on CDNOW (scikit-learn's ConvergenceWarning) until its solver became
    Newton-Cholesky (few features, many rows)."""
    from sklearn.exceptions import ConvergenceWarning

    *_, caught = cdnow_clv_and_warnings
    assert not [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.real_data
def test_cdnow_clv_champion_is_at_least_as_good_as_both_baselines(cdnow_clv) -> None:  # type: ignore[no-untyped-def]
    """The issue's CDNOW protocol: calibration to 1997-09-30, holdout to 1998-06-30, all 23,570
    customers; the candidate chosen on the validation quarter is not worse than either baseline."""
    _, trained = cdnow_clv
    assert trained.test_rows == 23_570
    assert trained.test_window == "1997-10-01 + 273 days"
    assert set(trained.baselines) == {"last_year_spend", "bgnbd_gamma_gamma"}
    champion = trained.report.metrics
    for name, other in trained.baselines.items():
        assert champion["gini_normalized"] >= other.metrics["gini_normalized"] - 0.001, name
    assert abs(champion["aggregate_error"]) < 0.10


@pytest.mark.real_data
def test_clv_outputs_are_consistent(cdnow_clv) -> None:  # type: ignore[no-untyped-def]
    _, trained = cdnow_clv
    out = trained.output_example
    assert list(out.columns) == [
        "customer_id",
        "expected_orders",
        "p_alive",
        "expected_order_value",
        "expected_spend",
        "clv",
        "clv_method",
    ]
    assert (out["p_alive"].between(0, 1)).all() and (out["expected_spend"] >= 0).all()
    # a positive monthly discount rate makes CLV smaller than the undiscounted spend, never larger
    assert (out["clv"] <= out["expected_spend"] + 1e-9).all() and (out["clv"] > 0).any()


@pytest.mark.real_data
def test_logged_model_scores_raw_transactions_like_the_trained_one(cdnow_clv, store: str) -> None:  # type: ignore[no-untyped-def]
    dataset, trained = cdnow_clv
    run_id, promotion = log_trained(trained, dataset)
    assert promotion.promoted and promotion.version == "1"

    loaded = mlflow.pyfunc.load_model("models:/valuecast-clv-cdnow@champion")
    served = loaded.predict(trained.input_example, params=trained.predict_params)
    pd.testing.assert_frame_equal(served.reset_index(drop=True), trained.output_example.reset_index(drop=True))

    client = mlflow.MlflowClient(store)
    run = client.get_run(run_id)
    assert run.data.tags["family"] == "clv" and run.data.tags["dataset"] == "cdnow"
    assert run.data.params["data_entities"] == "23570"
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["cdnow.transactions"]
    assert "CDNOW_master.txt" in inputs[0].dataset.source and len(inputs[0].dataset.digest) >= 8
    assert "baseline_last_year_spend_gini_normalized" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert "figures/deciles.png" in artifacts or any("decile" in a for a in artifacts)
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert {c.data.tags["model"] for c in children} == set(trained.choice.test)
    winners = [c for c in children if c.data.tags["winner"] == "true"]
    assert [w.data.tags["candidate"] for w in winners] == [trained.candidate]
    assert all("val_gini_normalized" in c.data.metrics for c in children)


@pytest.mark.real_data
def test_same_data_config_and_seed_give_identical_metrics_and_the_champion_rescored_equal(store: str) -> None:
    """Train the lead score twice: identical metrics; the champion re-scored on the second run's test
    rows gives exactly the second run's figure, so the second is at least as good and is promoted."""
    first = train_and_log("lead_score", "x_education", echo=lambda _: None)
    second = train_and_log("lead_score", "x_education", echo=lambda _: None)
    assert first.trained.report.metrics == second.trained.report.metrics
    assert first.trained.report.primary >= 0.90
    assert second.promotion.champion_value == pytest.approx(second.trained.report.primary, abs=1e-12)
    assert first.promotion.alias == "champion" and second.promotion.alias == "champion"
    client = mlflow.MlflowClient(store)
    name = "valuecast-lead-score-x_education"
    assert str(client.get_model_version_by_alias(name, "champion").version) == second.promotion.version
    tags = client.get_run(second.run_id).data.tags
    assert tags["promotion_alias"] == "champion" and "at least as good as champion v1" in tags["promotion"]


@pytest.mark.real_data
def test_lead_score_meets_its_target_without_the_leaking_columns() -> None:
    dataset = load_real("x_education")
    trained = lead_score.train(dataset, load_model_config("lead_score", "x_education"))
    assert trained.report.metrics["roc_auc"] >= max(b.primary for b in trained.baselines.values()) - 0.001
    assert trained.test_rows == round(0.3 * 9240)
    used = set(dataset.config.leads.exclude) & set(trained.model.encoder.numeric + trained.model.encoder.categorical)  # type: ignore[union-attr, attr-defined]
    assert not used
    out = trained.output_example
    assert set(out["tier"]) <= {"hot", "warm", "cold"}
    assert out["score"].between(0, 100).all()
    # reasons name source columns with signed contributions, at most three each way
    for text in out["reasons_up"]:
        assert len([r for r in text.split("; ") if r]) <= 3 and "(-" not in text


@pytest.mark.real_data
def test_telco_snapshot_churn_trains_on_a_stratified_split() -> None:
    dataset = load_real("telco")
    trained = churn.train(dataset, load_model_config("churn", "telco"))
    assert trained.test_rows == 2113 and trained.report.metrics["positive_rate"] == pytest.approx(1869 / 7043, abs=0.01)
    assert trained.report.metrics["roc_auc"] > 0.83
    assert "churn_probability" in trained.output_example.columns


@pytest.mark.real_data
def test_propensity_has_a_model_per_top_category_and_splits_strictly_by_time() -> None:
    dataset = load_real("online_retail")
    # the linear candidates only: this test is about the outputs and the split, and gradient boosting
    # for seven outputs twice (validation and test) is most of the suite's time
    config = load_model_config("propensity", "online_retail").model_copy(
        update={"candidates": ["rfm_logistic_regression", "logistic_regression"]}
    )
    trained = propensity.train(dataset, config)
    outputs = [c for c in trained.output_example.columns if c.startswith("purchase_probability_")]
    table = trained.tables["candidates"]
    assert set(table["candidate"]) == {"rfm_logistic_regression", "logistic_regression"}
    assert set(table["output"]) == {"purchase_probability", *outputs}  # each output chose on its own
    assert len(outputs) >= 3
    assert all(trained.output_example[c].between(0, 1).all() for c in outputs)
    # no training label window reaches into the test window
    _first, last = trained.params["train_cutoffs"].split(", ")[0].split(" ")[-1].split("..")
    test_cutoff = pd.Timestamp(trained.test_window.split(" ")[0])
    assert pd.Timestamp(last) + pd.Timedelta(days=config.horizon_days) <= test_cutoff


def test_training_refuses_too_few_examples(tmp_path: Path) -> None:
    from features.config import load_dataset_config
    from features.io import load_dataset

    rows = ["Prospect ID,Converted,Origin"] + [f"L{i},{int(i < 30)},{'a' if i % 2 else 'b'}" for i in range(300)]
    (tmp_path / "leads.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "small.yaml").write_text(
        "name: small\nleads:\n  path: leads.csv\n  columns: {lead_id: Prospect ID, converted: Converted}\n"
    )
    dataset = load_dataset(load_dataset_config(tmp_path / "small.yaml"))
    with pytest.raises(TrainingRefusedError, match="30 positive and 270 negative examples; at least 100"):
        lead_score.train(dataset, load_model_config("lead_score"))


def test_training_refuses_a_leaking_column(tmp_path: Path) -> None:
    from features.config import load_dataset_config
    from features.io import load_dataset

    rng = np.random.default_rng(0)
    converted = rng.integers(0, 2, 600)
    status = np.where(converted == 1, "Closed won", "Lost")
    rows = ["Prospect ID,Converted,Status,Visits"] + [
        f"L{i},{c},{s},{v}" for i, (c, s, v) in enumerate(zip(converted, status, rng.integers(0, 9, 600), strict=True))
    ]
    (tmp_path / "leads.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "leaky.yaml").write_text(
        "name: leaky\nleads:\n  path: leads.csv\n  columns: {lead_id: Prospect ID, converted: Converted}\n"
    )
    dataset = load_dataset(load_dataset_config(tmp_path / "leaky.yaml"))
    with pytest.raises(TrainingRefusedError, match=re.escape("'Status' (AUC 1.000)")):
        lead_score.train(dataset, load_model_config("lead_score"))


def test_clv_refuses_too_little_history(cdnow: Dataset) -> None:
    config = load_model_config("clv")  # 365-day horizon: CDNOW's 18 months are less than two horizons
    with pytest.raises(TrainingRefusedError, match="leaves a full 365-day label window"):
        clv.train(cdnow, config)
    # a fixed test cut-off with less than two training horizons of history before it
    short = config.model_copy(update={"horizon_days": 120, "test_cutoff": "1997-06-01"})
    with pytest.raises(TrainingRefusedError, match="151 days of history before the test cut-off 1997-06-01"):
        clv.train(cdnow, short)
