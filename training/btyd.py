"""BG/NBD and Gamma-Gamma fits with ``lifetimes``: compressed inputs, penalizer retries, clear failures.

Customers with the same (frequency, recency, T) contribute identical likelihood terms, so the fits
run on the distinct rows with their counts as ``weights``: the same parameters, several times faster
(CDNOW: 23,570 customers, ~9,000 distinct rows; a million synthetic customers, far fewer by share).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import betaln, expit, gammaln, hyp2f1

from features.quiet import held_warnings
from training.columns import values_of

DEFAULT_PENALIZERS = (0.0, 0.001, 0.01, 0.1)


class FitError(RuntimeError):
    """A model could not be fitted; the message lists every attempt."""


@dataclass
class BTYDModel:
    """A fitted BG/NBD (and, with spend, Gamma-Gamma) model and how it was fitted."""

    bgnbd: object  # lifetimes.BetaGeoFitter
    gamma_gamma: object | None  # lifetimes.GammaGammaFitter
    bgnbd_penalizer: float
    gamma_gamma_penalizer: float | None
    attempts: list[str] = field(default_factory=list)

    @cached_property
    def bgnbd_formula_params(self) -> tuple[float, float, float, float] | None:
        """BG/NBD's (r, alpha, a, b) as floats when ``bgnbd`` is lifetimes' ``BetaGeoFitter`` (else
        None), read once: each read from its pandas Series costs ~10 us, four per formula call."""
        from lifetimes import BetaGeoFitter

        if type(self.bgnbd) is not BetaGeoFitter:
            return None
        params = self.bgnbd.params_  # type: ignore[attr-defined]
        return float(params["r"]), float(params["alpha"]), float(params["a"]), float(params["b"])

    @cached_property
    def gamma_gamma_params(self) -> tuple[float, float, float] | None:
        """Gamma-Gamma's (p, q, v) as floats, read once (None without a Gamma-Gamma model)."""
        if self.gamma_gamma is None:
            return None
        params = self.gamma_gamma.params_  # type: ignore[attr-defined]
        return float(params["p"]), float(params["q"]), float(params["v"])

    @property
    def params(self) -> dict[str, float]:
        params = {f"bgnbd_{k}": float(v) for k, v in self.bgnbd.params_.items()}  # type: ignore[attr-defined]
        if self.gamma_gamma is not None:
            params |= {f"gg_{k}": float(v) for k, v in self.gamma_gamma.params_.items()}  # type: ignore[attr-defined]
        return params


def compress(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Distinct rows of ``columns`` and how often each occurs."""
    counts = frame.groupby(list(columns), sort=True).size()
    return counts.index.to_frame(index=False), counts.to_numpy()


def _try_penalizers(
    fit_one: Callable[[float], object],
    penalizers: Sequence[float],
    what: str,
    check: Callable[[object], str | None] | None = None,
) -> tuple[object, float, list[str]]:
    from lifetimes.utils import ConvergenceError

    attempts = []
    for penalizer in penalizers:
        try:
            # lifetimes and autograd warn on every overflow of a trial step, and lifetimes prints scipy's
            # result before raising ConvergenceError; the outcome is checked and reported below
            # sys.stdout is the process's too: held with the filters (two fits on two threads left
            # one fit's captured output as the process's stdout before)
            with held_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                model = fit_one(penalizer)
        except (ConvergenceError, ValueError, FloatingPointError, ZeroDivisionError, OverflowError) as exc:
            attempts.append(f"{what} with penalizer {penalizer}: {str(exc).strip().splitlines()[0]}")
            continue
        params = np.array(model.params_.to_numpy(dtype=np.float64))  # type: ignore[attr-defined]
        if not np.all(np.isfinite(params)) or np.any(params <= 0):
            attempts.append(f"{what} with penalizer {penalizer}: parameters not finite and positive ({params})")
            continue
        problem = check(model) if check is not None else None
        if problem is not None:
            attempts.append(f"{what} with penalizer {penalizer}: {problem}")
            continue
        attempts.append(f"{what} with penalizer {penalizer}: converged")
        return model, penalizer, attempts
    raise FitError(f"{what} did not converge; tried: " + "; ".join(attempts))


def fit_btyd(
    summary: pd.DataFrame,
    *,
    period_days: float = 7.0,
    penalizers: Sequence[float] = DEFAULT_PENALIZERS,
    with_spend: bool = True,
) -> BTYDModel:
    """Fit BG/NBD on (frequency, recency, T) and Gamma-Gamma on repeat customers' spend.

    ``summary`` has the daily BTYD columns of the feature table (``frequency_days``,
    ``recency_days``, ``T_days``, ``monetary_value_days``); time is rescaled to periods of
    ``period_days`` (weeks by default, as in Fader, Hardie & Lee 2005). Gamma-Gamma uses customers
    with at least one repeat purchase and a positive mean spend (refund-heavy customers with a
    non-positive mean are left out of the fit, and get the population mean spend when scored).
    """
    bgnbd, bg_penalizer, attempts = _fit_bgnbd(summary, period_days, penalizers)
    gamma_gamma, gg_penalizer = None, None
    if with_spend:
        gamma_gamma, gg_penalizer, more = _fit_gamma_gamma(summary, penalizers)
        attempts += more
    return BTYDModel(bgnbd, gamma_gamma, bg_penalizer, gg_penalizer, attempts)


def _fit_bgnbd(
    summary: pd.DataFrame, period_days: float, penalizers: Sequence[float]
) -> tuple[object, float, list[str]]:
    """BG/NBD on the distinct (frequency, recency, T) rows, time in periods of ``period_days``: the
    model, its penalizer and the attempts."""
    from lifetimes import BetaGeoFitter

    data = pd.DataFrame(
        {
            "frequency": summary["frequency_days"].to_numpy(dtype=float),
            "recency": summary["recency_days"].to_numpy(dtype=float) / period_days,
            "T": summary["T_days"].to_numpy(dtype=float) / period_days,
        }
    )
    if len(data) == 0:
        raise FitError("BG/NBD: no customers to fit on")
    rows, weights = compress(data, ["frequency", "recency", "T"])

    def fit_bgnbd(penalizer: float) -> object:
        fitted = BetaGeoFitter(penalizer_coef=penalizer).fit(
            rows["frequency"], rows["recency"], rows["T"], weights=weights
        )
        # lifetimes keeps a simulator as a lambda, which no plain pickle can hold (models are logged
        # from code with a joblib state, training/logged_model.py); its own save_model drops it too
        vars(fitted).pop("generate_new_data", None)
        return fitted

    def finite_outputs(model: object) -> str | None:
        """A fit whose parameters look fine can still give infinite or undefined expectations for
        the customers it was fitted on (e.g. a tiny shop where nobody repeats): not usable."""
        with np.errstate(all="ignore"), held_warnings():
            warnings.simplefilter("ignore")
            args = (rows["frequency"].to_numpy(), rows["recency"].to_numpy(), rows["T"].to_numpy())
            expected = model.conditional_expected_number_of_purchases_up_to_time(1.0, *args)  # type: ignore[attr-defined]
            alive = model.conditional_probability_alive(*args)  # type: ignore[attr-defined]
        bad = int((~np.isfinite(np.asarray(expected, dtype=float))).sum() + (~np.isfinite(np.asarray(alive))).sum())
        return f"{bad} non-finite expectations or P(alive) on the fitted customers" if bad else None

    return _try_penalizers(fit_bgnbd, penalizers, "BG/NBD", finite_outputs)


def _fit_gamma_gamma(summary: pd.DataFrame, penalizers: Sequence[float]) -> tuple[object, float, list[str]]:
    """Gamma-Gamma on the distinct (frequency, monetary value) rows of customers with a repeat purchase
    and a positive mean spend: the model, its penalizer and the attempts."""
    from lifetimes import GammaGammaFitter

    spend = pd.DataFrame(
        {
            "frequency": summary["frequency_days"].to_numpy(dtype=float),
            "monetary_value": summary["monetary_value_days"].to_numpy(dtype=float),
        }
    )
    repeat = spend.loc[(spend["frequency"] > 0) & (spend["monetary_value"] > 0)]
    if len(repeat) < 10:
        raise FitError(f"Gamma-Gamma: only {len(repeat)} customers with a repeat purchase and positive spend")
    spend_rows, spend_weights = compress(repeat, ["frequency", "monetary_value"])

    def fit_gamma_gamma(penalizer: float) -> object:
        return GammaGammaFitter(penalizer_coef=penalizer).fit(
            spend_rows["frequency"], spend_rows["monetary_value"], weights=spend_weights
        )

    def finite_mean(model: object) -> str | None:
        """Gamma-Gamma's population mean order value is p v / (q - 1): with q <= 1 (very heavy-tailed
        order values, e.g. a few huge orders in a small shop) it is infinite, and every expected
        value built on it is meaningless."""
        q = float(model.params_["q"])  # type: ignore[attr-defined]
        return None if q > 1.0 else f"q = {q:.3g} <= 1 (the mean order value is infinite)"

    return _try_penalizers(fit_gamma_gamma, penalizers, "Gamma-Gamma", finite_mean)


def bgnbd_log_likelihood(params: dict[str, float], x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> float:
    """Total BG/NBD log-likelihood, Fader, Hardie & Lee (2005), equation 6.

    L = B(a, b+x)/B(a, b) * Γ(r+x) α^r / (Γ(r) (α+T)^(r+x))
        + δ(x>0) B(a+1, b+x-1)/B(a, b) * Γ(r+x) α^r / (Γ(r) (α+t_x)^(r+x))
    """
    r, alpha, a, b = params["r"], params["alpha"], params["a"], params["b"]
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    alive = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + T)
    with np.errstate(invalid="ignore", divide="ignore"):
        dropped = np.where(
            x > 0,
            betaln(a + 1, np.maximum(b + x - 1, 1e-300)) - betaln(a, b) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return float(np.sum(common + np.logaddexp(alive, dropped)))


def expected_orders_up_to(model: BTYDModel, t: Any, frequency: Any, recency: Any, T: Any) -> np.ndarray:
    """``BetaGeoFitter.conditional_expected_number_of_purchases_up_to_time`` (Fader, Hardie and Lee
    2005, equation 10): lifetimes' formula, operation for operation, on plain numpy.

    lifetimes reads its parameters from a pandas Series and computes through autograd's numpy
    wrappers on every call: ~140 us of fixed cost, which for one customer's API request is most of
    the formula's time (three calls per request). A test holds the two equal to the last bit.
    """
    if (params := model.bgnbd_formula_params) is None:
        return np.asarray(model.bgnbd.conditional_expected_number_of_purchases_up_to_time(t, frequency, recency, T))  # type: ignore[attr-defined]
    r, alpha, a, b = params
    x = frequency
    _a, _b, _c = r + x, b + x, a + b + x - 1
    _z = t / (alpha + T + t)
    ln_hyp_term = np.log(hyp2f1(_a, _b, _c, _z))
    # where the value is infinite, an equivalent formula (as lifetimes does)
    ln_hyp_term_alt = np.log(hyp2f1(_c - _a, _c - _b, _c, _z)) + (_c - _a - _b) * np.log(1 - _z)
    ln_hyp_term = np.where(np.isinf(ln_hyp_term), ln_hyp_term_alt, ln_hyp_term)
    first_term = (a + b + x - 1) / (a - 1)
    second_term = 1 - np.exp(ln_hyp_term + (r + x) * np.log((alpha + T) / (alpha + t + T)))
    numerator = first_term * second_term
    denominator = 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + T) / (alpha + recency)) ** (r + x)
    return np.asarray(numerator / denominator)


def probability_alive(model: BTYDModel, frequency: Any, recency: Any, T: Any) -> np.ndarray:
    """``BetaGeoFitter.conditional_probability_alive``: lifetimes' formula on plain numpy (see
    :func:`expected_orders_up_to`)."""
    if (params := model.bgnbd_formula_params) is None:
        return np.asarray(model.bgnbd.conditional_probability_alive(frequency, recency, T))  # type: ignore[attr-defined]
    r, alpha, a, b = params
    log_div = (r + frequency) * np.log((alpha + T) / (alpha + recency)) + np.log(a / (b + np.maximum(frequency, 1) - 1))
    return np.atleast_1d(np.where(frequency == 0, 1.0, expit(-log_div)))


def predict_btyd(
    model: BTYDModel, summary: pd.DataFrame | Mapping[str, Any], horizon_days: int, *, period_days: float = 7.0
) -> dict[str, np.ndarray]:
    """Per customer (the rows of ``summary``, a DataFrame or a dict of arrays): expected orders in the
    horizon, P(alive) and, with Gamma-Gamma, the expected average order value."""
    frequency = values_of(summary, "frequency_days")
    recency = values_of(summary, "recency_days") / period_days
    T = values_of(summary, "T_days") / period_days
    expected_orders = expected_orders_up_to(model, horizon_days / period_days, frequency, recency, T)
    p_alive = probability_alive(model, frequency, recency, T)
    result = {
        "expected_orders": np.asarray(expected_orders, dtype=float),
        "p_alive": np.asarray(p_alive, dtype=float),
    }
    if (gamma_gamma := model.gamma_gamma_params) is not None:
        p, q, v = gamma_gamma
        monetary = values_of(summary, "monetary_value_days")
        usable = (frequency > 0) & (monetary > 0)
        population_mean = p * v / (q - 1)
        # Fader & Hardie (2013), equation 5: a weighted mean of the population and customer means.
        conditional = (p * (v + frequency * monetary)) / (p * frequency + q - 1)
        result["expected_order_value"] = np.where(usable, conditional, population_mean)
    return result


BTYD_FEATURES = ("btyd_expected_orders", "btyd_p_alive")


def expected_orders_curve(
    model: BTYDModel, summary: pd.DataFrame | Mapping[str, Any], days: Sequence[float], *, period_days: float = 7.0
) -> np.ndarray:
    """Expected orders up to each of ``days`` (columns) for each customer (rows), in one call."""
    frequency = values_of(summary, "frequency_days")
    recency = values_of(summary, "recency_days") / period_days
    T = values_of(summary, "T_days") / period_days
    k = len(days)
    t = np.tile(np.asarray(days, dtype=float) / period_days, len(frequency))
    values = expected_orders_up_to(model, t, np.repeat(frequency, k), np.repeat(recency, k), np.repeat(T, k))
    return np.asarray(values, dtype=float).reshape(len(frequency), k)
