"""Batch scoring (local engine): files, determinism, atomic output, bad input, MLflow run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from valuecast.cli import app

from .conftest import SERVING_AS_OF, load_real, register_copy

runner = CliRunner()


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shop in the contract's shape: 300 CDNOW-sample customers' transactions (one row with an
    unreadable amount), and a customers table with e-mail addresses and do-not-contact flags. Named
    cdnow_sample: a dataset is scored with its own champions, and these customers are the sample's."""
    folder = tmp_path_factory.mktemp("shop")
    dataset = load_real("cdnow_sample")
    assert dataset.transactions is not None
    tx = dataset.transactions.frame
    ids = sorted(tx["customer_id"].astype(str).unique())[:300]
    rows = tx.loc[tx["customer_id"].astype(str).isin(ids), ["customer_id", "timestamp", "amount"]].copy()
    rows["customer_id"] = rows["customer_id"].astype(str)
    rows["amount"] = rows["amount"].map("{:.2f}".format)
    rows.iloc[3, rows.columns.get_loc("amount")] = "twelve"
    rows.to_csv(folder / "orders.csv", index=False)
    customers = pd.DataFrame(
        {
            "cid": ids,
            "email": [f"c{i}@example.com" for i in range(len(ids))],
            "dnc": ["yes" if i % 10 == 0 else "no" for i in range(len(ids))],
        }
    )
    customers.to_csv(folder / "customers.csv", index=False)
    (folder / "shop.yaml").write_text(
        "name: cdnow_sample\n"
        "transactions:\n  path: orders.csv\n"
        "  columns: {customer_id: customer_id, timestamp: timestamp, amount: amount}\n"
        "  duplicates: keep\n"
        "customers:\n  path: customers.csv\n  columns: {customer_id: cid, do_not_contact: dnc}\n"
        "value_maps:\n  dnc: {'yes': 1, 'no': 0}\n"
    )
    return folder


def test_score_writes_every_output_and_logs_the_run(champion_store: dict[str, str], shop: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    result = runner.invoke(
        app, ["score", "--data", str(shop / "shop.yaml"), "--out", str(out), "--as-of", SERVING_AS_OF]
    )
    assert result.exit_code == 0, result.output
    assert "20/80 check: tier A is" in result.output and "scored 300 customers as of 1998-07-01" in result.output

    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 300 and scores["customer_id"].is_unique
    for column in (
        "churn_probability",
        "purchase_probability",
        "p_alive",
        "clv",
        "value_at_risk",
        "value_tier",
        "segment",
        "action",
        "suppressed",
        "suppression_reason",
        "as_of",
        "clv_model_version",
    ):
        assert column in scores.columns, column
    assert (
        pd.read_csv(out / "scores.csv", dtype={"customer_id": str})["customer_id"].tolist()
        == scores["customer_id"].tolist()
    )

    suppressed = set(scores.loc[scores["suppressed"], "customer_id"])
    assert len(suppressed) == 30 and set(scores.loc[scores["suppressed"], "suppression_reason"]) == {"do not contact"}
    listed = pd.concat([pd.read_csv(p, dtype={"customer_id": str}) for p in (out / "lists").glob("*.csv")])
    assert list(listed.columns) == ["customer_id", "email", "segment", "action"]
    assert len(listed) == 270 and not (set(listed["customer_id"]) & suppressed)

    quarantine = pd.read_csv(out / "quarantine.transactions.csv")
    assert len(quarantine) == 1 and "amount" in quarantine["reason"].iat[0]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["as_of"] == SERVING_AS_OF and summary["summary"]["customers"] == 300
    assert set(summary["models"]) >= {"churn", "propensity", "clv"}
    assert "<img" in (out / "report.html").read_text()

    client = mlflow.MlflowClient(champion_store["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("batch-scoring")
    run = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"], max_results=1)[0]
    assert run.data.params["as_of"] == SERVING_AS_OF and run.data.params["clv_version"] == summary["models"]["clv"]
    assert run.data.metrics["customers"] == 300
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.html", "summary.json"}


def test_the_same_command_writes_the_same_files(champion_store: dict[str, str], shop: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    command = ["score", "--data", str(shop / "shop.yaml"), "--out", str(out), "--as-of", SERVING_AS_OF]
    assert runner.invoke(app, command).exit_code == 0
    first = digest(out)
    assert runner.invoke(app, command).exit_code == 0
    assert digest(out) == first


def test_a_failed_run_leaves_the_previous_output_intact(
    champion_store: dict[str, str], shop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "scores"
    command = ["score", "--data", str(shop / "shop.yaml"), "--out", str(out), "--as-of", SERVING_AS_OF]
    assert runner.invoke(app, command).exit_code == 0
    before = digest(out)

    def broken(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt  # as if the operator pressed Ctrl-C while the report was written

    monkeypatch.setattr("serving.batch.report_html", broken)
    runner.invoke(app, [*command[:-1], "1998-06-01"])
    assert digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["scores"]  # no temporary folders left behind


def test_unusable_data_is_a_clear_error_and_writes_nothing(champion_store: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text("customer_id,when,amount\nc1,2020-01-01,3\n")
    (tmp_path / "bad.yaml").write_text(
        "name: bad\ntransactions:\n  path: orders.csv\n"
        "  columns: {customer_id: customer_id, timestamp: timestamp, amount: amount}\n"
    )
    out = tmp_path / "scores"
    result = runner.invoke(app, ["score", "--data", str(tmp_path / "bad.yaml"), "--out", str(out)])
    assert result.exit_code == 2
    assert "the config maps column 'timestamp', which the file does not have" in result.output
    assert not out.exists()


def test_score_uses_the_datasets_own_champions_and_segment_file(
    champion_store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make score DATA=cdnow` reads valuecast-<family>-cdnow, never another dataset's churn model, and
    freezes and reads CDNOW's own segment file."""
    from serving.scoring import CUSTOMER_FAMILIES, load_champions
    from training import tracking

    source = load_champions("cdnow_sample")
    out = tmp_path / "scores"
    with monkeypatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        env.setenv("VALUECAST_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
        env.setenv("VALUECAST_SEGMENTS_DIR", str(tmp_path / "segments"))
        for _ in range(3):  # another dataset's churn champion, at a version number CDNOW's do not have
            register_copy(source.models["churn"].model, "valuecast-churn-online_retail", "online_retail", "churn")
        for family in CUSTOMER_FAMILIES:
            register_copy(source.models[family].model, f"valuecast-{family}-cdnow", "cdnow", family)
        result = runner.invoke(app, ["score", "--data", "cdnow", "--out", str(out), "--as-of", SERVING_AS_OF])
    tracking.connect()  # back to the session's store for the tests after this one
    assert result.exit_code == 0, result.output
    assert "loading the champion models of 'cdnow'" in result.output
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 23_570
    assert {f: set(scores[f"{f}_model_version"]) for f in CUSTOMER_FAMILIES} == {f: {"1"} for f in CUSTOMER_FAMILIES}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "cdnow" and summary["models"] == {"churn": "1", "propensity": "1", "clv": "1"}
    frozen = list((tmp_path / "segments" / "cdnow").glob("segments-*.json"))
    assert [p.name for p in frozen] == [summary["segment_file"]]
    assert sorted(p.name for p in (tmp_path / "segments").iterdir()) == ["cdnow"]


def test_batch_refuses_another_datasets_champions(champion_store: dict[str, str], tmp_path: Path) -> None:
    from serving.batch import run
    from serving.scoring import NotReadyError, load_champions

    with pytest.raises(NotReadyError, match="champions of dataset 'cdnow_sample' cannot score dataset 'cdnow'"):
        run(load_champions("cdnow_sample"), load_real("cdnow"), tmp_path / "scores")
    assert not (tmp_path / "scores").exists()


def test_chunks_scored_side_by_side_give_the_numbers_of_one_pass(
    champion_store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of customers on two threads (one OpenMP thread each) against the same chunks one at a
    time and against the whole sample in one chunk: the same scores and facts, row for row."""
    from serving import batch
    from serving.scoring import load_champions

    champions, dataset = load_champions("cdnow_sample"), load_real("cdnow_sample")
    whole = batch.model_scores_of_dataset(champions, dataset, pd.Timestamp(SERVING_AS_OF))
    monkeypatch.setattr(batch, "CHUNK_CUSTOMERS", 97)  # uneven chunks: the last is short
    done: list[int] = []
    side_by_side = batch.model_scores_of_dataset(
        champions, dataset, pd.Timestamp(SERVING_AS_OF), lambda number, total: done.append(number), workers=2
    )
    one_at_a_time = batch.model_scores_of_dataset(champions, dataset, pd.Timestamp(SERVING_AS_OF), workers=1)
    assert len(whole[0]) > 10 * 97 and done == list(range(1, len(done) + 1)) and len(done) > 10
    for got, expected in zip(side_by_side, one_at_a_time, strict=True):  # the same chunks: bit for bit
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
    for got, expected in zip(side_by_side, whole, strict=True):  # other chunks: a few CLV values 1 ulp apart
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12, atol=0)
