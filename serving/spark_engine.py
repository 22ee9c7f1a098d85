"""ENGINE=spark for batch scoring: the same scoring code, run per bucket of customers on Apache Spark.

The driver cuts the sorted customer ids into buckets of consecutive ids (as the local engine cuts
its chunks) and gives each bucket its customers' transactions, in the file's order, as an Arrow
table (columns in Arrow's buffers: no Python object per row). Spark runs
:func:`serving.scoring.score_customers`, the function the local engine and the API use, on each
bucket on its Python workers (``parallelize(...).map``), with the champion models shipped in the
task; each worker sends back its bucket's scores, and the driver puts the buckets together in id
order. A customer's features come from that customer's rows only, so a bucket gives the local
engine's numbers.

Measured from the checked frame to the scores on 1M customers / 10M transactions
(docs/benchmarks.md): Spark's SQL engine was slower for this. ``createDataFrame`` of the rows as
Arrow, a bucket by Spark's hash of the id, ``cogroup(...).applyInArrow`` and Spark writing the
Parquet took 35 s (Arrow into Spark's rows, a shuffle, rows back into Arrow); ``mapInArrow`` over
partitions cut on the driver, no shuffle, 29 s; these buckets 20-22 s, most of it the scoring.

Spark runs ``local[*]`` unless ``SPARK_MASTER`` names a cluster (see the README for spark-submit).
Needs Java 17.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd
import pyarrow as pa

from features.config import ConfigError
from features.io import Dataset
from features.validate import ROW, Checked
from serving.scoring import Champions, events_read, score_customers

# A bucket's rows at most (in memory): they travel inside the bucket's task, and a cluster refuses a
# task over spark.rpc.message.maxSize (128 MiB by default)
BUCKET_BYTES = 96 * 2**20


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
        # the workers' scores all come back to the driver, which writes them (283 MB a million customers,
        # more than the 1 GiB default allows from 3.5 million on): SPARK_DRIVER_MEMORY is the bound
        .config("spark.driver.maxResultSize", "0")
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


def buckets_of(dataset: Dataset, ids: list[str], buckets: int) -> list[tuple[list[str], pd.DataFrame]]:
    """``ids`` cut into ``buckets`` runs of consecutive ids, each with its customers' transactions in
    the file's order. customer_id comes as a categorical of the run's own ids (not the full data's
    million categories with every bucket); every other column as the local engine has it except
    ``_row`` (each row's line in the file, for messages about the file: the scoring does not read
    it, and it is a fifth of the bytes). Rows of customers not among ``ids`` (no purchase before the
    as-of date) are left out."""
    from serving.batch import chunk_ids, id_positions, rows_by_chunk  # not on the workers: the report's imports

    assert dataset.transactions is not None
    frame = dataset.transactions.frame
    size = max(1, -(-len(ids) // buckets))
    runs = chunk_ids(ids, size)
    place = id_positions(frame["customer_id"], ids)
    result = []
    for number, (run, rows) in enumerate(zip(runs, rows_by_chunk(place, size, len(runs)), strict=True)):
        own = pd.Categorical.from_codes(place[rows] - number * size, categories=pd.Index(run, dtype=object))
        result.append((run, frame.iloc[rows].drop(columns=ROW, errors="ignore").assign(customer_id=own)))
    return result


def bucket_count(frame: pd.DataFrame, cores: int) -> int:
    """Two buckets per core (a core that finishes early takes another), more when a bucket's rows
    would pass :data:`BUCKET_BYTES`: each bucket travels inside its Spark task."""
    size = int(frame.drop(columns=ROW, errors="ignore").memory_usage(index=False).sum())
    return max(2, 2 * cores, -(-size // BUCKET_BYTES))


# what a Spark task gets: a bucket's ids, their transactions (Arrow) and their customers-table rows
Bucket = tuple[list[str], pa.Table, pd.DataFrame | None]


def _bucket_scorer(champions: Champions, dataset: Dataset, as_of: pd.Timestamp) -> Callable[[Bucket], pd.DataFrame]:
    """What each Spark worker runs on one bucket: its customers' rows, scored by the same
    :func:`score_customers` (features, the three models, segments) as on the local engine."""
    assert dataset.transactions is not None
    config = dataset.config
    dtypes = dataset.transactions.frame.dtypes.drop(["customer_id", ROW], errors="ignore")  # not a million ids

    def score_bucket(bucket: Bucket) -> pd.DataFrame:
        ids, rows, attributes = bucket
        part = Dataset(config, transactions=Checked(frame_of(rows, dtypes), pd.DataFrame()))
        return score_customers(champions, part, as_of, ids, attributes=attributes)

    return score_bucket


def frame_of(rows: pa.Table, dtypes: pd.Series) -> pd.DataFrame:
    """A bucket's Arrow rows as the local engine's frame: Arrow keeps numbers, times and text, and
    pandas' metadata the column types, but a categorical's categories can come back in another
    text type; the columns of ``dtypes`` (the full data's, without customer_id, which keeps its
    bucket's own categories) are given their type again."""
    frame = rows.to_pandas()
    for column, dtype in dtypes.items():
        if column in frame.columns and frame[column].dtype != dtype:
            frame[column] = frame[column].astype(dtype)
    return frame


def score_dataset(
    champions: Champions,
    dataset: Dataset,
    as_of: pd.Timestamp,
    ids: list[str],
    customers: pd.DataFrame | None,
    *,
    spark: Any = None,
    buckets: int | None = None,
) -> pd.DataFrame:
    """The local engine's :func:`serving.batch.score_dataset` on Spark: every customer of ``ids``
    (sorted, as :func:`serving.batch.customer_ids` gives them) scored in ``buckets`` tasks (default:
    :func:`bucket_count`), rows in the order of ``ids``. ``customers``: the customers table's
    attributes, indexed by customer_id; each bucket gets its own customers' rows."""
    assert dataset.transactions is not None
    if events_read(champions):
        raise ConfigError(
            f"the champions of dataset '{dataset.config.name}' read its events table, which ENGINE=spark does not "
            "send to the workers: leave out ENGINE=spark"
        )
    spark = spark or session()
    buckets = buckets or bucket_count(dataset.transactions.frame, spark.sparkContext.defaultParallelism)
    work: list[Bucket] = [
        (
            run,
            pa.Table.from_pandas(rows, preserve_index=False),
            None if customers is None else customers[customers.index.isin(run)],
        )
        for run, rows in buckets_of(dataset, ids, buckets)
    ]
    scored = spark.sparkContext.parallelize(work, len(work)).map(_bucket_scorer(champions, dataset, as_of)).collect()
    return pd.concat(scored, ignore_index=True)
