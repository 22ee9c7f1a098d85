"""ENGINE=spark: the same numbers as the local engine, on real Spark in local mode."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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


def test_a_bucket_holds_its_customers_rows_in_the_files_order_with_the_local_engines_types() -> None:
    import pickle

    import pyarrow as pa

    from features.config import DatasetConfig, TableConfig
    from features.io import Dataset
    from features.validate import Checked

    frame = pd.DataFrame(
        {
            "customer_id": pd.Categorical(["c", "a", "x", "b", "a", "c"], categories=["x", "c", "a", "b"]),
            "timestamp": pd.to_datetime([f"2020-01-0{d}" for d in range(1, 7)]),
            "amount": [1.5, 2.0, 3.25, 4.0, 5.0, 6.0],
            "category": pd.Categorical(
                ["toys", None, "books", "toys", "toys", "books"], categories=pd.Index(["books", "toys"], dtype=object)
            ),
            "_row": [0, 1, 2, 3, 4, 5],
        }
    )
    dataset = Dataset(
        DatasetConfig(name="t", transactions=TableConfig(path="-")), transactions=Checked(frame, pd.DataFrame())
    )
    # "x" is not scored (say, it bought only after the as-of date); "d" has no rows at all
    buckets = spark_engine.buckets_of(dataset, ["a", "b", "c", "d"], 2)
    assert [ids for ids, _ in buckets] == [["a", "b"], ["c", "d"]]
    first, second = (rows for _, rows in buckets)
    assert first["amount"].tolist() == [2.0, 4.0, 5.0] and second["amount"].tolist() == [1.5, 6.0]  # the file's order
    assert first["customer_id"].tolist() == ["a", "b", "a"] and second["customer_id"].tolist() == ["c", "c"]
    assert list(first["customer_id"].cat.categories) == ["a", "b"]  # the bucket's own ids, not the file's
    for rows in (first, second):  # the local engine's columns and types but for _row (places in the file)
        assert list(rows.columns) == ["customer_id", "timestamp", "amount", "category"]
        assert (rows.dtypes.drop("customer_id") == frame.dtypes.drop(["customer_id", "_row"])).all()
        assert rows["category"].dtype == frame["category"].dtype
    assert first["category"].cat.codes.tolist() == [-1, 1, 1]
    # as the worker gets it: through Arrow (and pickle), back with the local engine's types
    sent = pickle.loads(pickle.dumps(pa.Table.from_pandas(first, preserve_index=False)))
    back = spark_engine.frame_of(sent, frame.dtypes.drop("customer_id"))
    assert list(back.columns) == list(first.columns) and back["customer_id"].tolist() == ["a", "b", "a"]
    assert (back.dtypes.drop("customer_id") == first.dtypes.drop("customer_id")).all()
    assert back["category"].dtype == frame["category"].dtype  # the full data's categories, not Arrow's text type
    pd.testing.assert_frame_equal(
        back.drop(columns="customer_id"), first.drop(columns="customer_id").reset_index(drop=True)
    )
    # ids as text: the same buckets
    text = Dataset(dataset.config, transactions=Checked(frame.astype({"customer_id": str}), pd.DataFrame()))
    again = spark_engine.buckets_of(text, ["a", "b", "c", "d"], 2)
    assert [rows["amount"].tolist() for _, rows in again] == [[2.0, 4.0, 5.0], [1.5, 6.0]]
    assert [rows["customer_id"].tolist() for _, rows in again] == [["a", "b", "a"], ["c", "c"]]


def test_buckets_are_two_per_core_or_more_when_their_rows_would_make_too_large_a_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = pd.DataFrame({"customer_id": pd.Categorical(["a"] * 1000), "amount": 1.0, "_row": range(1000)})
    assert spark_engine.bucket_count(frame, 1) == 2 and spark_engine.bucket_count(frame, 8) == 16
    monkeypatch.setattr(spark_engine, "BUCKET_BYTES", 1000)  # 9,010 bytes without _row: 10 tasks of <= 1,000
    assert spark_engine.bucket_count(frame, 2) == 10


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
