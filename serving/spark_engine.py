"""ENGINE=spark for batch scoring: the same scoring code, run per group of customers on Apache Spark.

The checked transactions go to Spark as an Arrow table (text stays in Arrow buffers: no Python
object per row), and Spark gives each customer a bucket (a stable hash of the id, so a customer's
rows stay together); ``cogroup(...).applyInArrow`` hands each bucket's transactions and customer ids
to :func:`serving.scoring.score_customers`, the function the local engine and the API use, with the
champion models shipped to the executors by Spark's pickling of the function. Features and models
are applied in that one per-group function: the features of one customer are computed by the feature
code from that customer's rows only, so grouping by customer gives the local engine's numbers. Spark
writes the scores (:func:`write_parquet`); the driver reads them back for the small outputs.

Spark runs ``local[*]`` unless ``SPARK_MASTER`` names a cluster (see the README for spark-submit).
Needs Java 17.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.config import ConfigError
from features.io import Dataset
from features.validate import Checked
from serving.scoring import Champions, events_read, score_customers

# pandas dtypes of the scores and their Spark types (pyspark.sql.types); anything else is text
SPARK_TYPES = {"float64": "DoubleType", "int64": "LongType", "bool": "BooleanType", "int8": "ByteType"}


def require_pyspark() -> None:
    """Stop with the fix when PySpark is not installed: ``make setup`` leaves it out (the ``spark``
    extra, installed by ``make setup-spark``)."""
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        raise ConfigError(
            "ENGINE=spark needs PySpark, which make setup leaves out (it is the 'spark' extra): run make "
            "setup-spark (or pip install 'valuecast[spark]'), or leave out ENGINE=spark to score on this machine"
        )


def session(master: str | None = None) -> Any:
    """A Spark session whose Python workers run this interpreter (pandas, pyarrow, the models)."""
    import warnings

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    warnings.filterwarnings("ignore", message=".*does not yet fully support pandas >= 3.*")
    require_pyspark()
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


def start_session_in_background() -> None:
    """Start :func:`session` on a thread, so that the JVM starts (seconds) while the driver reads and
    checks the data. :func:`session` later returns that session (``getOrCreate`` waits for a start
    under way); if the start failed here, it fails again there and its error is the one reported."""

    def start() -> None:
        with contextlib.suppress(Exception):
            session()

    threading.Thread(target=start, name="spark-session-start", daemon=True).start()


def _struct(frame: pd.DataFrame) -> Any:
    """The Spark schema of the scores ``frame``: numbers as they are, everything else as text."""
    from pyspark.sql import types

    fields = [
        types.StructField(str(c), getattr(types, SPARK_TYPES.get(str(d), "StringType"))())
        for c, d in frame.dtypes.items()
    ]
    return types.StructType(fields)


def _create_frame(spark: Any, table: pa.Table) -> Any:
    """``spark.createDataFrame(table)`` in a few large partitions: Spark makes one partition per
    Arrow batch of ``maxRecordsPerBatch`` rows (10,000 by default: a thousand tasks for ten million
    transactions); four per core instead (measured: the stage took half the time)."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    parts = 4 * spark.sparkContext.defaultParallelism
    before = spark.conf.get(key)
    spark.conf.set(key, str(max(int(before), -(-table.num_rows // parts))))
    try:
        return spark.createDataFrame(table)
    finally:
        spark.conf.set(key, before)


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


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column in a type Spark takes: categories decoded, text as ``string``, times in microseconds
    (Spark's precision; the features count days)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
        column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
    return column


def _table_for_spark(frame: pd.DataFrame) -> pa.Table:
    """The checked transactions as an Arrow table for Spark: no Python objects per row (text stays
    in Arrow's buffers). ``_row`` (the row's place in the file) goes too: Spark's shuffle does not
    keep the order of rows, and the workers put them back in it."""
    if "_row" not in frame.columns:
        frame = frame.assign(_row=np.arange(len(frame)))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return pa.table([_plain(c) for c in table.columns], names=table.column_names)


def _with_bucket(rows: Any, buckets: int) -> Any:
    """``rows`` with each customer's bucket: Spark's own stable hash of the id (Murmur3, the same on
    every machine and run), computed by Spark in parallel."""
    from pyspark.sql import functions as F  # noqa: N812 (Spark's convention)

    return rows.withColumn("bucket", F.pmod(F.hash("customer_id"), F.lit(buckets)))


def _as_category(column: pa.ChunkedArray, dtype: pd.CategoricalDtype) -> pd.Categorical:
    """``column`` as a categorical of ``dtype``; text is matched to the categories in Arrow (no
    Python object per row)."""
    if not (pa.types.is_string(column.type) and dtype.categories.inferred_type == "string"):
        return pd.Categorical(column.to_pandas(), dtype=dtype)
    known = pa.array(dtype.categories.to_numpy(dtype=object), type=pa.string())
    codes = pc.index_in(column, value_set=known).fill_null(-1).to_numpy()
    return pd.Categorical.from_codes(codes, dtype=dtype)


def _bucket_rows(rows: pa.Table, floats: list[str], categories: dict[str, pd.CategoricalDtype]) -> pd.DataFrame:
    """One bucket's transactions from Spark back in the local engine's types: times in nanoseconds
    without a zone (Spark's session zone is UTC), the ids as text, categories with the full data's
    categories, float columns as floats; in the file's order (a customer's purchases at the same time
    are summed in the same order as on the local engine: the same floating-point results)."""
    place = rows.column("_row").to_numpy()
    if len(place) > 1 and not (place[1:] > place[:-1]).all():
        rows = rows.sort_by("_row")
    names = [c for c in rows.column_names if c != "bucket" and c not in categories]
    columns = [rows.column(c) for c in names]
    columns = [c.cast(pa.timestamp("ns")) if pa.types.is_timestamp(c.type) else c for c in columns]
    frame = pa.table(columns, names=names).to_pandas()
    frame["customer_id"] = frame["customer_id"].astype("string")
    for column in floats:
        frame[column] = frame[column].astype("float64")
    for column, dtype in categories.items():
        frame[column] = _as_category(rows.column(column), dtype)
    return frame[[c for c in rows.column_names if c != "bucket"]]


def _bucket_scorer(
    champions: Champions, dataset: Dataset, as_of: pd.Timestamp, customers: pd.DataFrame | None, out: pa.Schema
) -> Callable[[pa.Table, pa.Table], pa.Table]:
    """What each Spark worker runs on one bucket: its transactions back in the local engine's types,
    scored by the same :func:`score_customers`, as an Arrow table of schema ``out``. The closure
    carries only what the worker needs (not the full data's 1M-id category list)."""
    assert dataset.transactions is not None
    config, dtypes = dataset.config, dataset.transactions.frame.dtypes
    floats = [str(c) for c, d in dtypes.items() if c != "customer_id" and pd.api.types.is_float_dtype(d)]
    categories = {str(c): d for c, d in dtypes.items() if c != "customer_id" and isinstance(d, pd.CategoricalDtype)}
    wanted = list(out.names)

    def score_bucket(rows: pa.Table, who: pa.Table) -> pa.Table:
        if who.num_rows == 0:
            return out.empty_table()
        frame = _bucket_rows(rows, floats, categories)
        part = Dataset(config, transactions=Checked(frame, pd.DataFrame()))
        ids = who.column("customer_id").to_pylist()
        scored = score_customers(champions, part, as_of, ids, attributes=customers)
        return pa.Table.from_pandas(scored[wanted], preserve_index=False).cast(out)

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
    from pyspark.sql.pandas.types import to_arrow_schema

    spark = spark or session()
    buckets = buckets or max(2, 2 * spark.sparkContext.defaultParallelism)
    frame = dataset.transactions.frame
    # the output's columns and types, from the same function on one customer (and only their rows)
    first = frame[frame["customer_id"] == ids[0]] if ids else frame.iloc[:0]
    probe = score_customers(
        champions, replace(dataset, transactions=Checked(first, pd.DataFrame())), as_of, ids[:1], attributes=customers
    )
    struct = _struct(probe)
    large = spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false") == "true"
    out = to_arrow_schema(struct, prefers_large_types=large)
    score_bucket = _bucket_scorer(champions, dataset, as_of, customers, out)
    spark_tx = _with_bucket(_create_frame(spark, _table_for_spark(frame)), buckets)
    spark_ids = _with_bucket(_create_frame(spark, pa.table({"customer_id": pa.array(ids, pa.string())})), buckets)
    scored = spark_tx.groupBy("bucket").cogroup(spark_ids.groupBy("bucket")).applyInArrow(score_bucket, schema=struct)
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
