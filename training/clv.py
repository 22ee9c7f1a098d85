"""Customer lifetime value: BG/NBD + Gamma-Gamma against gradient boosting, the better is champion.

- BG/NBD + Gamma-Gamma (``lifetimes``, :mod:`training.btyd`) fitted on the history before the test
  cut-off: expected orders in the horizon x expected average order value.
- Gradient boosting (xgboost) of spend within the training horizon, on the customer features, spend
  and order rates, and the BG/NBD outputs of each cut-off's own fit. When the training horizon is
  shorter than the CLV horizon (short histories: CDNOW), the prediction is scaled by the customer's
  BG/NBD curve, E[X(horizon)] / E[X(training horizon)].
- Baseline "last year's spend": spend in the 365 days before the cut-off, scaled to the horizon.

Both models are scored on the test window by :func:`training.evaluation.evaluate_regression`; the one
with the higher normalized Gini is logged as the model. Outputs per customer: expected orders,
P(alive), expected average order value, expected spend in the horizon and CLV, that spend discounted
monthly (``discount_rate_monthly``) along the customer's BG/NBD purchase curve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.config import TRANSACTION_REQUIRED
from features.io import Dataset
from training.btyd import BTYDModel, expected_orders_curve, fit_btyd, predict_btyd
from training.columns import Columns, feature_matrix, values_of, with_columns
from training.common import (
    CustomerModel,
    Trained,
    contract_example,
    feature_columns,
    matrix,
    params_for_logging,
    select_features,
)
from training.config import ModelConfig
from training.customers import TimeSplit, time_split
from training.evaluation import Report, evaluate_regression

FAMILY = "clv"
REGISTERED_NAME = "valuecast-clv"
DAYS_PER_MONTH = 365.25 / 12


def value_features(frame: Columns, btyd: BTYDModel | None, horizon_days: int) -> Columns:
    """Rates that do not grow with a customer's age, and the BG/NBD + Gamma-Gamma outputs."""
    age = values_of(frame, "T_days") + 1.0
    extra = {
        "spend_per_day": values_of(frame, "total_spend") / age,
        "orders_per_day": values_of(frame, "order_count") / age,
        "recency_share": values_of(frame, "recency_days") / age,
    }
    if btyd is not None:
        predicted = predict_btyd(btyd, frame, horizon_days)
        extra |= {
            "btyd_expected_orders": predicted["expected_orders"],
            "btyd_p_alive": predicted["p_alive"],
            "btyd_expected_order_value": predicted["expected_order_value"],
            "btyd_expected_spend": predicted["expected_orders"] * predicted["expected_order_value"],
        }
    return with_columns(frame, extra)


def month_ends(horizon_days: int) -> np.ndarray:
    months = int(np.ceil(horizon_days / DAYS_PER_MONTH))
    return np.minimum(np.arange(1, months + 1) * DAYS_PER_MONTH, horizon_days)


def discount_factor(curve: np.ndarray, rate_monthly: float) -> np.ndarray:
    """Per customer: discounted / undiscounted expected orders over the horizon, given the expected
    orders up to each month end (``curve``, customers x months): purchases spread over the months as
    the customer's BG/NBD curve expects them, month m discounted by (1 + rate)^m."""
    months = curve.shape[1]
    per_month = np.diff(np.column_stack([np.zeros(len(curve)), curve]), axis=1)
    discounted = per_month @ (1.0 + rate_monthly) ** -np.arange(1, months + 1)
    total = curve[:, -1]
    return np.where(total > 0, discounted / np.where(total > 0, total, 1.0), 1.0)


class CLVModel(CustomerModel):
    """The champion of the two CLV methods, with the BG/NBD + Gamma-Gamma fit it needs in both cases."""

    def __init__(
        self,
        split: TimeSplit,
        dataset: Dataset,
        columns: list[str],
        btyd: BTYDModel,
        regressor: Any,
        method: str,
        config: ModelConfig,
        train_horizon_days: int,
    ) -> None:
        super().__init__(dataset.config, split.categories, split.encoder, columns, None, config.horizon_days)
        self.value_btyd = btyd
        self.regressor = regressor
        self.method = method
        self.train_horizon_days = train_horizon_days
        self.discount_rate_monthly = config.discount_rate_monthly

    def expected_spend(self, features: pd.DataFrame, method: str | None = None) -> np.ndarray:
        return self._predict(features, method)[0]

    def _predict(
        self, features: pd.DataFrame | dict[str, np.ndarray], method: str | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Expected spend over the horizon, the BG/NBD + GG outputs, and the expected-orders curve
        at each month end (the last column is the horizon)."""
        method = method or self.method
        predicted = predict_btyd(self.value_btyd, features, self.horizon_days)
        ends = month_ends(self.horizon_days)
        days = [*ends, float(self.train_horizon_days)]
        both = expected_orders_curve(self.value_btyd, features, days)
        curve, short = both[:, :-1], both[:, -1]
        long = predicted["expected_orders"]
        if method == "bgnbd_gamma_gamma":
            spend = long * predicted["expected_order_value"]
        else:
            inputs = value_features(features, self.value_btyd, self.train_horizon_days)
            spend = np.maximum(self.regressor.predict(feature_matrix(inputs, self.columns)), 0.0)
            if self.train_horizon_days != self.horizon_days:
                fallback = self.horizon_days / self.train_horizon_days
                spend = spend * np.where(short > 0, long / np.where(short > 0, short, 1.0), fallback)
        return np.asarray(spend, dtype=float), predicted, curve

    def score_columns(self, features: pd.DataFrame | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spend, predicted, curve = self._predict(features)
        factor = discount_factor(curve, self.discount_rate_monthly)
        return {
            "expected_orders": predicted["expected_orders"],
            "p_alive": predicted["p_alive"],
            "expected_order_value": predicted["expected_order_value"],
            "expected_spend": spend,
            "clv": spend * factor,
            "clv_method": np.full(len(spend), self.method, dtype=object),
        }


def train(dataset: Dataset, config: ModelConfig) -> Trained:
    from xgboost import XGBRegressor

    horizon = config.horizon_days
    train_horizon = config.train_horizon_days or horizon
    split = time_split(
        dataset, config, horizon_days=train_horizon, test_cutoff=config.test_cutoff, test_horizon_days=horizon
    )
    # Each training cut-off gets BG/NBD + Gamma-Gamma fitted on its own history (no labels involved).
    parts = []
    for _, group in split.train.groupby("cutoff", sort=True):
        group = group.reset_index(drop=True)
        fitted = fit_btyd(group, penalizers=config.penalizers) if config.feed_btyd else None
        parts.append(value_features(group, fitted, train_horizon))
    train_frame = pd.concat(parts, ignore_index=True)
    btyd = fit_btyd(split.test, penalizers=config.penalizers)
    columns = select_features(feature_columns(train_frame), config)

    objective = config.xgboost.objective or "reg:squarederror"
    extra = {"tweedie_variance_power": config.xgboost.tweedie_variance_power} if objective == "reg:tweedie" else {}
    params = config.xgboost.model_dump(exclude={"objective", "tweedie_variance_power"})
    regressor = XGBRegressor(**params, objective=objective, random_state=config.seed, n_jobs=2, **extra)
    regressor.fit(matrix(train_frame, columns), train_frame["future_spend"].to_numpy(dtype=float))

    candidate = CLVModel(split, dataset, columns, btyd, regressor, "xgboost", config, train_horizon)
    actual = split.test["future_spend"].to_numpy(dtype=float)
    importance = pd.Series(regressor.feature_importances_, index=columns).sort_values(ascending=False)
    reports: dict[str, Report] = {
        "xgboost": evaluate_regression(
            actual, candidate.expected_spend(split.test, "xgboost"), feature_importance=importance
        ),
        "bgnbd_gamma_gamma": evaluate_regression(actual, candidate.expected_spend(split.test, "bgnbd_gamma_gamma")),
    }
    champion = max(reports, key=lambda name: reports[name].primary)
    candidate.method = champion
    last_year = split.test["spend_last_365d"].to_numpy(dtype=float) * horizon / 365.0
    baselines = {name: report for name, report in reports.items() if name != champion}
    baselines["last_year_spend"] = evaluate_regression(actual, last_year)

    example = contract_example(dataset)
    as_of = str(split.test_cutoff.date())
    candidates = pd.DataFrame(
        [{"method": name, "champion": name == champion, **r.metrics} for name, r in reports.items()]
        + [{"method": "last_year_spend", "champion": False, **baselines["last_year_spend"].metrics}]
    )
    return Trained(
        family=FAMILY,
        registered_name=REGISTERED_NAME,
        model=candidate,
        report=reports[champion],
        baselines=baselines,
        test_window=f"{split.test_cutoff:%Y-%m-%d} + {horizon} days",
        params={
            **params_for_logging(config),
            "train_cutoffs": split.window,
            "features": len(columns),
            "champion_method": champion,
            **btyd.params,
            "bgnbd_penalizer": btyd.bgnbd_penalizer,
            "gg_penalizer": btyd.gamma_gamma_penalizer,
        },
        input_example=example,
        output_example=candidate.predict(None, example, {"as_of": as_of}),
        predict_params={"as_of": as_of},
        tables={"candidates": candidates, "deciles": reports[champion].tables.get("deciles", pd.DataFrame())},
        train_rows=len(train_frame),
        test_rows=len(split.test),
        required_inputs=list(TRANSACTION_REQUIRED),
    )
