"""Published CDNOW figures, reproduced from our own features (../shared/data/README.md).

Fader, Hardie & Lee (2005), BG/NBD on the 2,357-customer sample, weeks 1-39 (to 1997-09-30);
Fader & Hardie (2013), Gamma-Gamma on its 946 repeat customers.
"""

from __future__ import annotations

import pandas as pd
import pytest

from features.transactions import compute_transaction_features
from tests.conftest import load_real
from training.btyd import bgnbd_log_likelihood, compress, fit_btyd


@pytest.fixture(scope="module")
def calibration() -> pd.DataFrame:
    dataset = load_real("cdnow_sample")
    assert dataset.transactions is not None
    return compute_transaction_features(dataset.transactions.frame, "1997-10-01")


@pytest.fixture(scope="module")
def fitted(calibration: pd.DataFrame):  # type: ignore[no-untyped-def]
    return fit_btyd(calibration)


def test_sample_has_the_papers_customers(calibration: pd.DataFrame) -> None:
    assert len(calibration) == 2_357
    assert (calibration["frequency_days"] > 0).sum() == 946


def test_bgnbd_parameters_and_log_likelihood(fitted, calibration: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    published = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    for name, value in published.items():
        assert fitted.params[f"bgnbd_{name}"] == pytest.approx(value, rel=0.005), name
    ll = bgnbd_log_likelihood(
        {k: fitted.params[f"bgnbd_{k}"] for k in published},
        calibration["frequency_days"],
        calibration["recency_days"] / 7,
        calibration["T_days"] / 7,
    )
    assert ll == pytest.approx(-9582.4, rel=0.005)


def test_bgnbd_expectations(fitted) -> None:  # type: ignore[no-untyped-def]
    bgnbd = fitted.bgnbd
    assert bgnbd.expected_number_of_purchases_up_to_time(78) == pytest.approx(1.8576, rel=0.005)
    assert bgnbd.probability_of_n_purchases_up_to_time(39, 0) == pytest.approx(0.5738, rel=0.005)
    conditional = bgnbd.conditional_expected_number_of_purchases_up_to_time(39, 2, 30.43, 38.86)
    assert conditional == pytest.approx(1.226, rel=0.005)


def test_gamma_gamma_parameters_and_mean_spend(fitted) -> None:  # type: ignore[no-untyped-def]
    published = {"p": 6.25, "q": 3.74, "v": 15.44}
    for name, value in published.items():
        assert fitted.params[f"gg_{name}"] == pytest.approx(value, rel=0.005), name
    p, q, v = (fitted.params[f"gg_{k}"] for k in ("p", "q", "v"))
    assert p * v / (q - 1) == pytest.approx(35.17, rel=0.005)


def test_compressed_fit_equals_the_row_by_row_fit(calibration: pd.DataFrame) -> None:
    from lifetimes import BetaGeoFitter

    rows, weights = compress(
        calibration.assign(recency=calibration["recency_days"] / 7, T=calibration["T_days"] / 7),
        ["frequency_days", "recency", "T"],
    )
    assert weights.sum() == len(calibration) and len(rows) < len(calibration) / 2
    full = BetaGeoFitter().fit(
        calibration["frequency_days"], calibration["recency_days"] / 7, calibration["T_days"] / 7
    )
    compressed = BetaGeoFitter().fit(rows["frequency_days"], rows["recency"], rows["T"], weights=weights)
    for name in ("r", "alpha", "a", "b"):
        assert compressed.params_[name] == pytest.approx(full.params_[name], rel=1e-4)
