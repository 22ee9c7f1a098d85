"""The evaluation report against values worked out by hand or by another route."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from training.evaluation import (
    capture_at,
    decile_table,
    evaluate_classifier,
    evaluate_regression,
    expected_calibration_error,
    lift_at,
    normalized_gini,
)


def test_perfect_random_and_reversed_rankings() -> None:
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1, 0, 0], dtype=float)
    perfect = evaluate_classifier(y, y * 0.8 + 0.1)
    reversed_ = evaluate_classifier(y, 0.9 - y * 0.8)
    assert perfect.metrics["roc_auc"] == 1.0 and perfect.quality == "excellent"
    assert reversed_.metrics["roc_auc"] == 0.0 and reversed_.quality == "poor"
    value = np.array([5.0, 0.0, 10.0, 1.0])
    assert normalized_gini(value, value) == pytest.approx(1.0)
    assert normalized_gini(value, -value) == pytest.approx(-1.0)


def test_lift_and_capture_by_hand() -> None:
    # 20 customers, 4 positive (20 %); the top 10 % by score (2 customers) hold 1 positive: 50 % -> lift 2.5.
    y = np.zeros(20)
    y[[0, 5, 6, 7]] = 1
    score = np.linspace(1, 0, 20)  # customer 0 ranks first, customer 1 second
    assert lift_at(y, score, 0.1) == pytest.approx(0.5 / 0.2)
    spend = np.array([100.0, 50, 0, 0, 0, 0, 0, 0, 0, 50])  # top 20 % = customers 0 and 1
    assert capture_at(spend, np.arange(10, 0, -1), 0.2) == pytest.approx(150 / 200)


def test_expected_calibration_error_by_hand() -> None:
    y = np.array([1, 0] * 50, dtype=float)
    assert expected_calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)


def test_classifier_metrics_agree_with_a_direct_count() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(float)
    report = evaluate_classifier(y, p, feature_importance=pd.Series({"a": 3.0, "b": 1.0}))
    # ROC AUC = P(score of a random positive > score of a random negative), counted pairwise.
    pos, neg = p[y == 1], p[y == 0]
    assert report.metrics["roc_auc"] == pytest.approx((pos[:, None] > neg[None, :]).mean())
    assert report.metrics["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert set(report.figures) == {"roc.png", "pr.png", "calibration.png", "gains.png", "feature_importance.png"}
    assert all(isinstance(f, Figure) and f.axes for f in report.figures.values())
    assert report.primary_metric == "roc_auc" and "roc_auc" in report.summary_line()


def test_regression_report_and_deciles() -> None:
    rng = np.random.default_rng(1)
    actual = rng.gamma(1.0, 50.0, 1_000)
    predicted = actual * rng.uniform(0.5, 1.5, 1_000)
    report = evaluate_regression(actual, predicted)
    table = report.tables["deciles"]
    assert table["customers"].sum() == 1_000 and list(table["decile"]) == list(range(1, 11))
    assert table["actual_sum"].sum() == pytest.approx(actual.sum())
    assert table["share_of_actual"].sum() == pytest.approx(1.0)
    assert report.metrics["aggregate_error"] == pytest.approx(predicted.sum() / actual.sum() - 1)
    assert report.metrics["mae"] == pytest.approx(np.abs(predicted - actual).mean())
    assert 0.5 < report.metrics["gini_normalized"] < 1.0
    assert set(report.figures) == {"deciles.png", "gains.png"}


def test_decile_ties_are_deterministic() -> None:
    first = decile_table(np.arange(20.0), np.zeros(20))
    again = decile_table(np.arange(20.0), np.zeros(20))
    pd.testing.assert_frame_equal(first, again)
    assert first["actual_sum"].iloc[0] == 0 + 1  # ties keep input order: rows 0 and 1 form decile 1


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([1, 1, 1], [0.2, 0.5, 0.9], "only one class"),
        ([0, 1], [0.5], "2 outcomes but 1 predictions"),
        ([0, 1], [0.5, float("nan")], "NaN"),
        ([0, 1], [0.5, 1.5], r"\[0, 1\]"),
    ],
)
def test_bad_inputs_are_refused(y: list[float], p: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_classifier(y, p)
