"""ENGINE=spark for batch scoring: the same scoring code, run per group of customers on Apache Spark.

The checked transactions go to Spark with a bucket per customer (a stable hash of the id, so a
customer's rows stay together); ``cogroup(...).applyInPandas`` hands each bucket's transactions and
customer ids to :func:`serving.scoring.score_customers`, the function the local engine and the API
use, with the champion models shipped to the executors by Spark's pickling. Features and models are
applied in that one per-group pandas function: the features of one customer are computed by the
feature code from that customer's rows only, so grouping by customer gives the local engine's numbers.
Spark writes the scores (:func:`write_parquet`); the driver reads them back for the small outputs.

Spark runs ``local[*]`` unless ``SPARK_MASTER`` names a cluster (see the README for spark-submit).
Needs Java 17.
"""

from __future__ import annotations

import os
import shutil
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.config import ConfigError
from features.io import Dataset
from features.validate import Checked
from serving.scoring import Champions, events_read, score_customers

SPARK_TYPES = {"float64": "double", "int64": "bigint", "bool": "boolean", "int8": "tinyint"}


def session(master: str | None = None) -> Any:
    """A Spark session whose Python workers run this interpreter (pandas, pyarrow, the models)."""
    import warnings

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    warnings.filterwarnings("ignore", message=".*does not yet fully support pandas >= 3.*")
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(master or os.environ.get("SPARK_MASTER", "local[*]"))
        .appName("valuecast-score")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "4g"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def bucket_of(ids: pd.Series, buckets: int) -> np.ndarray:
    """A stable bucket per customer id (crc32, the same on every machine and run)."""
    return np.fromiter((zlib.crc32(i.encode()) % buckets for i in ids.astype(str)), dtype=np.int32, count=len(ids))


def _schema(frame: pd.DataFrame) -> str:
    parts = []
    for column, dtype in frame.dtypes.items():
        kind = SPARK_TYPES.get(str(dtype), "string")
        parts.append(f"`{column}` {kind}")
    return ", ".join(parts)


def write_parquet(scored: Any, path: Path) -> None:
    """Spark writes ``scored`` as one Parquet file at ``path``, rows sorted by customer_id: one sorted
    partition written to a staging folder beside ``path``, its part file renamed into place (Spark's
    part names carry a random id; the local engine's layout is one file)."""
    staging = path.with_name(f".{path.name}.spark")
    scored.repartition(1).sortWithinPartitions("customer_id").write.mode("overwrite").parquet(staging.as_uri())
    parts = sorted(staging.glob("part-*.parquet"))
    if len(parts) != 1:
        raise RuntimeError(f"Spark wrote {len(parts)} part files to {staging}, expected one")
    parts[0].replace(path)
    shutil.rmtree(staging, ignore_errors=True)


def _rows_for_spark(frame: pd.DataFrame, buckets: int) -> pd.DataFrame:
    """The checked transactions as Spark takes them: text ids, plain objects for text and categories
    (missing as None), and each row's bucket."""
    tx = frame[[c for c in frame.columns if c != "_row"]]
    tx = tx.assign(customer_id=tx["customer_id"].astype(str))
    for column in tx.columns:
        if isinstance(tx[column].dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(tx[column].dtype):
            tx[column] = tx[column].astype(object).where(tx[column].notna(), None)
    tx["bucket"] = bucket_of(tx["customer_id"], buckets)
    return tx


def _bucket_scorer(
    champions: Champions, dataset: Dataset, as_of: pd.Timestamp, customers: pd.DataFrame | None, probe: pd.DataFrame
) -> Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]:
    """What each Spark worker runs on one bucket: its transactions back in the local engine's types,
    scored by the same :func:`score_customers`, in ``probe``'s columns (text as Arrow strings)."""
    assert dataset.transactions is not None
    config, dtypes, columns_out = dataset.config, dataset.transactions.frame.dtypes, list(probe.columns)

    def score_bucket(rows: pd.DataFrame, who: pd.DataFrame) -> pd.DataFrame:
        if who.empty:
            return pd.DataFrame({c: pd.Series([], dtype=probe[c].dtype) for c in columns_out})
        rows = rows.drop(columns=["bucket"])
        rows["timestamp"] = pd.to_datetime(rows["timestamp"]).astype("datetime64[ns]")
        rows["amount"] = rows["amount"].astype("float64")
        rows["customer_id"] = rows["customer_id"].astype("string")
        for column in rows.columns:
            if column in dtypes and pd.api.types.is_float_dtype(dtypes[column]):
                rows[column] = rows[column].astype("float64")
        part = Dataset(config, transactions=Checked(rows.reset_index(drop=True), pd.DataFrame()))
        scored = score_customers(champions, part, as_of, who["customer_id"].astype(str).tolist(), attributes=customers)
        return scored[columns_out].astype({c: "string" for c in columns_out if probe[c].dtype == object})

    return score_bucket


def score_dataset(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    ids: list[str],
    customers: pd.DataFrame | None,
    *,
    spark: Any = None,
    buckets: int | None = None,
    out_parquet: Path | None = None,
) -> pd.DataFrame:
    """The local engine's :func:`serving.batch.score_dataset`, on Spark; rows sorted by customer_id.

    With ``out_parquet``, Spark writes the scores there itself (one file, sorted by customer_id, like
    the local engine's), and the frame returned for the summary, report and lists is read from it.
    """
    assert dataset.transactions is not None
    if events_read(champions):
        raise ConfigError(
            f"the champions of dataset '{dataset.config.name}' read its events table, which ENGINE=spark does not "
            "send to the workers: leave out ENGINE=spark"
        )
    spark = spark or session()
    buckets = buckets or max(2, 2 * spark.sparkContext.defaultParallelism)
    tx = _rows_for_spark(dataset.transactions.frame, buckets)
    wanted = pd.DataFrame({"customer_id": ids})
    wanted["bucket"] = bucket_of(wanted["customer_id"], buckets)
    # the output's columns and types, from the same function on one customer
    probe = score_customers(champions, dataset, as_of, ids[:1], attributes=customers)
    schema = _schema(probe.astype({c: "string" for c in probe.columns if probe[c].dtype == object}))
    score_bucket = _bucket_scorer(champions, dataset, as_of, customers, probe)
    spark_tx = spark.createDataFrame(tx)
    spark_ids = spark.createDataFrame(wanted)
    scored = spark_tx.groupBy("bucket").cogroup(spark_ids.groupBy("bucket")).applyInPandas(score_bucket, schema=schema)
    if out_parquet is not None:
        write_parquet(scored, out_parquet)
        result = pd.read_parquet(out_parquet)
    else:
        result = scored.toPandas()
    columns_out = list(probe.columns)
    for column in columns_out:
        if probe[column].dtype == object:
            result[column] = result[column].astype(object).where(result[column].notna(), None)
        elif str(probe[column].dtype) != str(result[column].dtype):
            result[column] = result[column].astype(probe[column].dtype)
    return result.sort_values("customer_id", kind="stable", ignore_index=True)[columns_out]
