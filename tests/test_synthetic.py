"""The synthetic generator: seeded, and BG/NBD / Gamma-Gamma parameters can be recovered from it."""

from __future__ import annotations

import pandas as pd
import pytest
from lifetimes import BetaGeoFitter, GammaGammaFitter

from features.synthetic import SyntheticSpec, generate_transactions
from features.transactions import compute_transaction_features


def test_same_seed_same_data_other_seed_other_data() -> None:
    spec = SyntheticSpec(customers=500, seed=7)
    first, again = generate_transactions(spec), generate_transactions(spec)
    pd.testing.assert_frame_equal(first.transactions, again.transactions)
    other = generate_transactions(spec.with_(seed=8))
    assert not first.transactions["amount"].equals(other.transactions["amount"])


@pytest.mark.slow
def test_bgnbd_and_gamma_gamma_parameters_are_recovered() -> None:
    # CDNOW-like cohort: 20,000 customers acquired over 12 weeks, observed for 78 weeks.
    spec = SyntheticSpec(customers=20_000, seed=1, effects=False, refund_rate=0.0, days=546, acquisition_days=84)
    generated = generate_transactions(spec)
    as_of = pd.Timestamp(spec.start) + pd.Timedelta(days=spec.days)
    summary = compute_transaction_features(generated.transactions, as_of)
    bgnbd = BetaGeoFitter().fit(summary["frequency_days"], summary["recency_days"] / 7, summary["T_days"] / 7)
    true_bgnbd = {"r": spec.r, "alpha": spec.alpha, "a": spec.a, "b": spec.b}
    for name, truth in true_bgnbd.items():
        assert bgnbd.params_[name] == pytest.approx(truth, rel=0.15), name

    repeat = summary.loc[summary["frequency_days"] > 0]
    gamma_gamma = GammaGammaFitter().fit(repeat["frequency_days"], repeat["monetary_value_days"])
    true_spend = {"p": spec.p_spend, "q": spec.q, "v": spec.gamma}
    for name, truth in true_spend.items():
        assert gamma_gamma.params_[name] == pytest.approx(truth, rel=0.15), name


def test_known_effects_show_in_the_data() -> None:
    generated = generate_transactions(SyntheticSpec(customers=6_000, seed=2))
    per_customer = generated.transactions.loc[generated.transactions["amount"] > 0].groupby("customer_id")
    joined = (
        generated.customers.set_index("customer_id")
        .join(per_customer.size().rename("purchases"))
        .join(per_customer["amount"].mean().rename("mean_spend"))
    )
    purchases = joined.groupby("region")["purchases"].mean()
    assert purchases["south"] > purchases["north"] > purchases["west"]  # rate x1.6, x1.0, x0.6
    spend = joined.groupby("plan")["mean_spend"].median()
    assert spend["premium"] / spend["basic"] == pytest.approx(1.8, rel=0.15)
    by_newsletter = joined.groupby("newsletter")["purchases"].mean()
    assert by_newsletter[1] / by_newsletter[0] == pytest.approx(1.0, abs=0.12)  # no effect


def test_dense_profile_has_about_ten_transactions_per_customer() -> None:
    generated = generate_transactions(SyntheticSpec.dense(5_000))
    assert 8 <= len(generated.transactions) / 5_000 <= 12
