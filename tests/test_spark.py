"""ENGINE=spark: the same numbers as the local engine, on real Spark in local mode."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.config import ConfigError
from serving import batch, spark_engine
from serving.scoring import load_champions
from valuecast.cli import app

from .conftest import SERVING_AS_OF, load_real

pytestmark = pytest.mark.slow


def assert_same_table(theirs: pd.DataFrame, ours: pd.DataFrame, what: str) -> None:
    """The same columns and rows: numbers within 1e-9 (an engine's number can differ in the last bit:
    BLAS rounds a row's product by the rows batched with it, and the engines batch customers
    differently), everything else the same text and the same missing values (an all-missing text
    column is Parquet's null type from pandas, a string column from Spark)."""
    assert list(theirs.columns) == list(ours.columns) and len(theirs) == len(ours), what
    for column in ours.columns:
        where = f"{what}: {column}"
        if pd.api.types.is_float_dtype(ours[column].dtype):
            np.testing.assert_allclose(
                theirs[column].to_numpy(float), ours[column].to_numpy(float), rtol=0, atol=1e-9, err_msg=where
            )
        else:
            assert theirs[column].isna().tolist() == ours[column].isna().tolist(), where
            assert theirs[column].dropna().astype(str).tolist() == ours[column].dropna().astype(str).tolist(), where


@pytest.fixture(scope="module")
def spark():  # type: ignore[no-untyped-def]
    session = spark_engine.session("local[2]")
    yield session
    session.stop()


def test_spark_scores_every_cdnow_customer_like_the_local_engine(champion_store: dict[str, str], spark) -> None:  # type: ignore[no-untyped-def]
    dataset = load_real("cdnow")
    as_of = pd.Timestamp(SERVING_AS_OF)
    champions = load_champions("cdnow_sample")  # scoring all of CDNOW with the sample's models
    local = batch.score_dataset(champions, dataset, as_of).sort_values("customer_id", ignore_index=True)
    distributed = spark_engine.score_dataset(
        champions, dataset, as_of, batch.customer_ids(dataset, as_of), None, spark=spark, buckets=8
    )
    assert len(local) == len(distributed) == 23_570
    assert_same_table(distributed, local, "scores")


def test_make_score_with_the_spark_engine_writes_the_local_engines_files(
    champion_store: dict[str, str],
    spark,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    runner = CliRunner()
    for engine, folder in (("local", "local"), ("spark", "spark"), ("spark", "spark-again")):
        command = ["score", "--data", "cdnow_sample", "--out", str(tmp_path / folder), "--as-of", SERVING_AS_OF]
        result = runner.invoke(app, [*command, "--engine", engine])
        assert result.exit_code == 0, result.output
    # Spark wrote its scores.parquet itself (Spark's Parquet writer: other bytes, the same table)
    written = pq.read_metadata(tmp_path / "spark" / "scores.parquet").metadata
    assert b"org.apache.spark.version" in written
    theirs, ours = (pd.read_parquet(tmp_path / e / "scores.parquet") for e in ("spark", "local"))
    assert len(ours) == 2_357
    assert_same_table(theirs, ours, "scores.parquet")
    for name in ("scores.csv", "lists/protect.csv", "lists/maintain.csv"):
        theirs, ours = (pd.read_csv(tmp_path / e / name, dtype={"customer_id": str}) for e in ("spark", "local"))
        assert_same_table(theirs, ours, name)
    summaries = [json.loads((tmp_path / e / "summary.json").read_text()) for e in ("spark", "local")]
    assert [s.pop("engine") for s in summaries] == ["spark", "local"] and summaries[0] == summaries[1]
    assert sorted(p.name for p in (tmp_path / "spark").iterdir()) == sorted(
        p.name for p in (tmp_path / "local").iterdir()
    )
    # the same command writes the same files
    again = tmp_path / "spark-again" / "scores.parquet"
    assert again.read_bytes() == (tmp_path / "spark" / "scores.parquet").read_bytes()


def test_a_bucket_comes_back_in_the_files_order_and_the_local_engines_types() -> None:
    import pyarrow as pa

    local = pd.DataFrame(
        {
            "customer_id": pd.Series(["a", "b", "a"], dtype="category"),
            "timestamp": pd.to_datetime(["2020-01-01 10:00", "2020-01-02 00:00", "2020-01-01 10:00"]),
            "amount": [1.5, 2.0, 3.25],
            "category": pd.Categorical(["toys", None, "books"], categories=["books", "toys", "garden"]),
            "_row": [0, 1, 2],
        }
    )
    table = spark_engine._table_for_spark(local)
    assert table.schema.field("category").type == pa.string() and table.schema.field("customer_id").type == pa.string()
    # as a Spark shuffle may hand them over: another order, times in microseconds in UTC, a bucket column
    shuffled = table.take([2, 1, 0]).append_column("bucket", pa.array([0, 0, 0], pa.int32()))
    shuffled = shuffled.set_column(1, "timestamp", shuffled.column("timestamp").cast(pa.timestamp("us", "UTC")))
    back = spark_engine._bucket_rows(shuffled, ["amount"], {"category": local["category"].dtype})
    assert back["_row"].tolist() == [0, 1, 2] and list(back.columns) == list(local.columns)
    assert back["timestamp"].dtype == "datetime64[ns]" and (back["timestamp"] == local["timestamp"]).all()
    assert back["category"].dtype == local["category"].dtype
    assert back["category"].cat.codes.tolist() == local["category"].cat.codes.tolist() == [1, -1, 0]
    assert back["customer_id"].tolist() == ["a", "b", "a"] and back["amount"].tolist() == [1.5, 2.0, 3.25]


def test_without_pyspark_the_spark_engine_stops_before_reading_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make setup leaves PySpark out (the 'spark' extra): ENGINE=spark says how to install it, exit 2,
    and OUT is not touched."""
    monkeypatch.setitem(sys.modules, "pyspark", None)  # as if not installed
    out = tmp_path / "scores"
    command = ["score", "--data", "cdnow_sample", "--out", str(out), "--as-of", SERVING_AS_OF, "--engine", "spark"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert "ENGINE=spark needs PySpark" in result.output and "make setup-spark" in result.output
    assert not out.exists()
    with pytest.raises(ConfigError, match="valuecast\\[spark\\]"):
        spark_engine.session()
