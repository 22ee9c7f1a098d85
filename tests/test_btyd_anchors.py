"""Published CDNOW figures, reproduced from our own features (../shared/data/README.md).

Fader, Hardie & Lee (2005), BG/NBD on the 2,357-customer sample, weeks 1-39 (to 1997-09-30);
Fader & Hardie (2013), Gamma-Gamma on its 946 repeat customers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import hyp2f1

from features.transactions import compute_transaction_features
from tests.conftest import load_real
from training.btyd import (
    bgnbd_log_likelihood,
    compress,
    expected_orders_up_to,
    fit_btyd,
    predict_btyd,
    probability_alive,
)


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


def test_bgnbd_formulas_equal_lifetimes(fitted, calibration: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    """Scoring computes lifetimes' two conditional formulas itself (no per-call Series reads and
    autograd wrappers): the same floats as lifetimes, to the last bit, on the paper's customers, on
    customers with so many purchases that lifetimes switches to its other hypergeometric formula,
    for one horizon and one per customer; and the published conditional expectation."""
    bgnbd = fitted.bgnbd
    frequency = calibration["frequency_days"].to_numpy(dtype=float)
    recency, T = calibration["recency_days"].to_numpy() / 7, calibration["T_days"].to_numpy() / 7
    heavy = np.arange(50.0, 400.0, 10.0)  # hyp2f1 overflows for these: lifetimes' alternative branch
    heavy_recency, heavy_T = np.full(len(heavy), 38.0), np.full(len(heavy), 39.0)
    r, alpha, a, b = (bgnbd.params_[k] for k in ("r", "alpha", "a", "b"))
    assert np.isinf(np.log(hyp2f1(r + heavy, b + heavy, a + b + heavy - 1, 520 / (alpha + heavy_T + 520)))).any()
    per_customer_t = np.linspace(1.0, 104.0, len(frequency))
    for x, last, age, t in (
        (frequency, recency, T, 39.0),
        (frequency, recency, T, per_customer_t),
        (heavy, heavy_recency, heavy_T, 520.0),
        (frequency[:1], recency[:1], T[:1], 52.0),
    ):
        np.testing.assert_array_equal(
            expected_orders_up_to(fitted, t, x, last, age),
            bgnbd.conditional_expected_number_of_purchases_up_to_time(t, x, last, age),
        )
        np.testing.assert_array_equal(
            probability_alive(fitted, x, last, age), bgnbd.conditional_probability_alive(x, last, age)
        )
    one = expected_orders_up_to(fitted, 39.0, np.array([2.0]), np.array([30.43]), np.array([38.86]))
    assert one[0] == pytest.approx(1.226, rel=0.005)
    predicted = predict_btyd(fitted, calibration, 39 * 7)
    np.testing.assert_array_equal(
        predicted["expected_orders"],
        bgnbd.conditional_expected_number_of_purchases_up_to_time(39.0, frequency, recency, T),
    )


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


def test_fits_on_two_threads_leave_the_process_stdout_as_it_was() -> None:
    """lifetimes' printing is captured by swapping sys.stdout, which is the whole process's: a fit
    ending on one thread while another thread's fit is under way must not leave that fit's capture
    as everyone's stdout (one fit at a time holds it; here the first fit waits a second for the
    second to come in, which it cannot, then the second runs)."""
    import sys
    import threading
    import time

    from training.btyd import _try_penalizers

    class Fitted:
        params_ = pd.Series([1.0, 2.0])

    stdout, second_in = sys.stdout, threading.Event()

    def first_fit(penalizer: float) -> object:
        second_in.wait(1.0)
        return Fitted()

    def second_fit(penalizer: float) -> object:
        second_in.set()
        first.join(10.0)  # without the lock: the first fit ends (and puts back its stdout) meanwhile
        return Fitted()

    first = threading.Thread(target=_try_penalizers, args=(first_fit, [0.0], "first"))
    second = threading.Thread(target=_try_penalizers, args=(second_fit, [0.0], "second"))
    try:
        first.start()
        deadline = time.monotonic() + 10
        while sys.stdout is stdout and first.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)  # the first fit has swapped stdout: it is under way
        second.start()
        first.join(10.0)
        second.join(10.0)
        assert sys.stdout is stdout
    finally:
        sys.stdout = stdout
