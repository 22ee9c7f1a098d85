"""No leakage: features as of a cut-off ignore everything dated on or after it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.config import DatasetConfig, TableConfig
from features.io import Dataset
from features.pipeline import build_customer_features
from features.validate import Checked

CUTOFF = pd.Timestamp("2024-03-01")
START = pd.Timestamp("2023-06-01")

row = st.tuples(
    st.sampled_from(["a", "b", "c", "d", "e"]),
    st.integers(min_value=0, max_value=400 * 24),  # hours after START: both sides of the cut-off
    st.floats(min_value=-50, max_value=500, allow_nan=False).map(lambda x: round(x, 2)),
    st.sampled_from(["books", "music", "games", "toys"]),
    st.sampled_from(["UK", "FR", "DE"]),
)


def frame(rows: list[tuple[str, int, float, str, str]]) -> pd.DataFrame:
    tx = pd.DataFrame(rows, columns=["customer_id", "hours", "amount", "category", "Country"])
    tx["timestamp"] = START + pd.to_timedelta(tx.pop("hours"), unit="h")
    tx["customer_id"] = tx["customer_id"].astype("category")
    tx["category"] = tx["category"].astype("category")
    return tx


def features_of(tx: pd.DataFrame) -> pd.DataFrame:
    config = DatasetConfig(name="t", transactions=TableConfig(path="-"))
    dataset = Dataset(config, transactions=Checked(tx.reset_index(drop=True), tx.iloc[0:0], []))
    return build_customer_features(dataset, CUTOFF).frame


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row, min_size=1, max_size=40), data=st.data())
def test_features_ignore_rows_after_the_cutoff(
    rows: list[tuple[str, int, float, str, str]], data: st.DataObject
) -> None:
    tx = frame(rows)
    before = tx.loc[tx["timestamp"] < CUTOFF]
    if before.empty:
        return
    after = tx.loc[tx["timestamp"] >= CUTOFF]
    reference = features_of(tx)

    # 1. Delete every row on or after the cut-off.
    pd.testing.assert_frame_equal(features_of(before), reference)

    # 2. Alter them: new amounts, categories, countries, customers, and times still after the cut-off.
    if not after.empty:
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        altered = after.copy()
        altered["amount"] = rng.uniform(-100, 1000, len(after)).round(2)
        altered["category"] = pd.Categorical(rng.choice(["books", "music", "new"], len(after)))
        altered["Country"] = rng.choice(["XX", "UK"], len(after))
        altered["customer_id"] = pd.Categorical(rng.choice(["a", "z"], len(after)))
        altered["timestamp"] = CUTOFF + pd.to_timedelta(rng.integers(0, 10**6, len(after)), unit="s")
        mixed = pd.concat([altered, before]).sample(frac=1.0, random_state=0)
        for column in ("customer_id", "category"):
            mixed[column] = mixed[column].astype("string").astype("category")
        pd.testing.assert_frame_equal(features_of(mixed), reference)
