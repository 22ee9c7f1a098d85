"""The compiled walk of xgboost's trees gives xgboost's own floats, bit for bit, and leaves to
xgboost whatever it does not walk the same way."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from xgboost import XGBClassifier, XGBRegressor

from features.io import Dataset
from features.pipeline import build_customer_features
from training import tree_predict


@pytest.fixture(scope="module")
def cdnow_rows(cdnow: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CDNOW's customer features before 1997-10-01 (missing values included), whether each bought
    again in the next 90 days, and what they spent then."""
    features = build_customer_features(cdnow, pd.Timestamp("1997-10-01")).frame
    later = build_customer_features(cdnow, pd.Timestamp("1997-12-30")).frame.set_index("customer_id")
    spend = (
        later["total_spend"].reindex(features["customer_id"]).fillna(0) - features["total_spend"].to_numpy()
    ).to_numpy()
    x = features.drop(columns=["customer_id", "as_of"]).select_dtypes("number").to_numpy(dtype=float)
    assert np.isnan(x).any()  # the walk meets missing values
    return x, (spend > 0).astype(int), np.maximum(spend, 0.0)


MODELS = {
    "binary:logistic": lambda: XGBClassifier(n_estimators=300, max_depth=4, n_jobs=1, random_state=0),
    "reg:tweedie": lambda: XGBRegressor(n_estimators=300, max_depth=4, objective="reg:tweedie", n_jobs=1),
    "reg:squarederror": lambda: XGBRegressor(n_estimators=300, max_depth=3, n_jobs=1),
}


@pytest.mark.parametrize("objective", list(MODELS))
def test_the_walk_gives_xgboosts_floats(objective: str, cdnow_rows: tuple[np.ndarray, ...]) -> None:
    x, bought, spend = cdnow_rows
    model = MODELS[objective]().fit(x, bought if objective == "binary:logistic" else spend)
    booster = model.get_booster()
    forest = tree_predict.forest_of(booster)
    assert forest is not None and forest.transform == tree_predict._TRANSFORMS[objective]
    # every CDNOW customer; rows on the thresholds, just below them and missing; far-out values
    rng = np.random.default_rng(0)
    edges = tree_predict._probe_rows(forest)
    wild = x[rng.integers(0, len(x), 5000)] * rng.choice([0.0, -1.0, 1e-3, 1e3, 1e30], size=(5000, x.shape[1]))
    wild[rng.random(wild.shape) < 0.2] = np.nan
    for rows in (x, edges, wild):
        expected = booster.inplace_predict(rows)
        np.testing.assert_array_equal(tree_predict.walk(forest, rows), expected)
    # what the scoring code calls: a few rows are walked (one customer, a small request), more go to xgboost
    for part in (x[:1], x[5:6], x[: tree_predict.MAX_ROWS], x[:1000], np.asfortranarray(x[:7])):
        np.testing.assert_array_equal(tree_predict.predict(booster, part), booster.inplace_predict(part))
    np.testing.assert_array_equal(
        tree_predict.predict(booster, x[:1]),
        model.predict(x[:1]) if objective != "binary:logistic" else model.predict_proba(x[:1])[:, 1],
    )


def test_boosters_it_does_not_walk_are_left_to_xgboost(cdnow_rows: tuple[np.ndarray, ...]) -> None:
    x, bought, spend = cdnow_rows
    classes = np.digitize(spend, [0.01, 50.0])  # three classes: a softmax, not walked here
    others = [
        XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(x, classes),
        XGBRegressor(n_estimators=20, booster="dart", rate_drop=0.1, n_jobs=1).fit(x, spend),
        XGBRegressor(n_estimators=20, objective="count:poisson", n_jobs=1).fit(x, spend),
        XGBRegressor(n_estimators=20, objective="reg:squarederror", n_jobs=1).fit(x, np.column_stack([spend, bought])),
    ]
    frame = pd.DataFrame({"group": pd.Categorical(np.where(bought == 1, "a", "b")), "other": x[:, 0]})
    categorical = XGBRegressor(n_estimators=20, enable_categorical=True, tree_method="hist", n_jobs=1)
    others.append(categorical.fit(frame, spend))
    for model in others:
        assert tree_predict.forest_of(model.get_booster()) is None
    for model in others[:4]:
        booster = model.get_booster()
        np.testing.assert_array_equal(tree_predict.predict(booster, x[:3]), booster.inplace_predict(x[:3]))


def test_an_infinity_or_a_forest_unlike_xgboost_is_left_to_xgboost(
    cdnow_rows: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    x, _, spend = cdnow_rows
    booster = XGBRegressor(n_estimators=30, max_depth=3, n_jobs=1).fit(x, spend).get_booster()
    infinite = x[:3].copy()
    infinite[1, 0] = np.inf
    infinite[2, 1] = 1e300  # an infinity once rounded to float32, as xgboost rounds
    np.testing.assert_array_equal(tree_predict.predict(booster, infinite), booster.inplace_predict(infinite))
    # a forest whose probe rows disagree with xgboost (here: the wrong output transform) is not used
    other = XGBRegressor(n_estimators=30, max_depth=3, n_jobs=1).fit(x, spend).get_booster()
    monkeypatch.setitem(tree_predict._TRANSFORMS, "reg:squarederror", tree_predict.EXP)
    with caplog.at_level(logging.WARNING, logger="training.tree_predict"):
        assert tree_predict.forest_of(other) is None
    assert "differ" in caplog.text
    np.testing.assert_array_equal(tree_predict.predict(other, x[:2]), other.inplace_predict(x[:2]))
