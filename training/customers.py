"""Classifiers of customers with a transaction history (churn, purchase propensity), split by time.

Protocol: the test cut-off is the latest month start whose label window ends within the data; the
training cut-offs are the month starts (up to ``cutoffs`` of them) whose label windows end on or
before the test cut-off, so no training label looks into the test window. Features, categories and
the attribute encoder are those of :func:`features.pipeline.build_training_set`.

Baselines on the same test rows: BG/NBD fitted on the history before the test cut-off (unsupervised,
so it needs no training labels), and a logistic regression on recency, frequency and monetary value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.config import TRANSACTION_REQUIRED
from features.io import Dataset
from features.pipeline import FeatureSet, build_customer_features, build_customer_labels, monthly_cutoffs
from features.validate import DataError
from training.btyd import BTYDModel, btyd_features, fit_btyd, predict_btyd
from training.columns import feature_matrix
from training.common import (
    RFM_COLUMNS,
    CustomerModel,
    Trained,
    contract_example,
    feature_columns,
    fit_classifier,
    importance,
    matrix,
    params_for_logging,
    positive_probability,
    rfm_baseline,
    select_features,
)
from training.config import ModelConfig
from training.evaluation import Report, evaluate_classifier
from training.guards import TrainingRefusedError, check_class_support, check_history


@dataclass
class TimeSplit:
    train: pd.DataFrame
    test: pd.DataFrame
    train_cutoffs: list[pd.Timestamp]
    test_cutoff: pd.Timestamp
    categories: list[str]
    encoder: Any

    @property
    def window(self) -> str:
        first, last = self.train_cutoffs[0], self.train_cutoffs[-1]
        return f"train cut-offs {first:%Y-%m-%d}..{last:%Y-%m-%d}, test cut-off {self.test_cutoff:%Y-%m-%d}"


def _labelled(dataset: Dataset, reference: FeatureSet, cutoff: pd.Timestamp, horizon_days: int) -> pd.DataFrame:
    """Features as of ``cutoff`` (the reference's categories and encoder) joined with their labels."""
    features = build_customer_features(dataset, cutoff, categories=reference.categories, encoder=reference.encoder)
    labels = build_customer_labels(dataset, features.frame["customer_id"], cutoff, horizon_days, reference.categories)
    joined = features.frame.merge(labels.drop(columns=["as_of"]), on="customer_id")
    joined.insert(0, "cutoff", cutoff)
    return joined.drop(columns=["as_of"])


def time_split(
    dataset: Dataset,
    config: ModelConfig,
    *,
    horizon_days: int | None = None,
    test_cutoff: str | pd.Timestamp | None = None,
    test_horizon_days: int | None = None,
) -> TimeSplit:
    """Training cut-offs whose labels end by the test cut-off, and the test cut-off, as feature tables.

    ``horizon_days`` is the training labels' horizon (default the config's); the test labels use
    ``test_horizon_days`` (default the same). Categories and the attribute encoder are fixed by the
    history before the test cut-off, so every cut-off has the same columns.
    """
    if dataset.transactions is None:
        raise TrainingRefusedError(f"dataset '{dataset.config.name}' has no transaction log to split by time")
    horizon = horizon_days or config.horizon_days
    test_cutoff = test_cutoff if test_cutoff is not None else config.test_cutoff
    if test_cutoff is None:
        try:
            test = monthly_cutoffs(dataset, test_horizon_days or horizon)[-1]
        except DataError as exc:
            raise TrainingRefusedError(str(exc)) from exc
    else:
        test = pd.Timestamp(test_cutoff)
    first_day = dataset.transactions.frame["timestamp"].min().normalize()
    check_history(first_day, test, horizon, config.guards)
    latest_train = test - pd.Timedelta(days=horizon)
    starts = pd.date_range(
        (first_day + pd.Timedelta(days=horizon)).to_period("M").to_timestamp(), latest_train, freq="MS"
    )
    train_cutoffs = [c for c in starts if first_day < c <= latest_train][-config.cutoffs :]
    if not train_cutoffs:
        raise TrainingRefusedError(
            f"no training cut-off leaves a full {horizon}-day label window before the test cut-off "
            f"{test:%Y-%m-%d}; use a shorter horizon_days or more history"
        )
    try:
        reference = build_customer_features(dataset, test)
        frames = [_labelled(dataset, reference, cutoff, horizon) for cutoff in train_cutoffs]
        test_frame = _labelled(dataset, reference, test, test_horizon_days or horizon)
    except DataError as exc:
        raise TrainingRefusedError(str(exc)) from exc
    train = pd.concat(frames, ignore_index=True)
    return TimeSplit(train, test_frame, list(train_cutoffs), test, reference.categories, reference.encoder)


def validation_config(dataset: Dataset, config: ModelConfig) -> ModelConfig:
    """The config that scores on the window just before the test window, for searches that must never
    see the test window: the validation cut-off (default: the month start one horizon before the test
    cut-off) becomes the test cut-off, its label window ends by the real test cut-off, and the training
    cut-offs move back with it. Snapshots (no transaction log) split their training part instead."""
    if dataset.transactions is None:
        return config.model_copy(update={"evaluate_on": "validation"})
    horizon = config.validation_horizon_days or config.horizon_days
    if config.test_cutoff is not None:
        test = pd.Timestamp(config.test_cutoff)
    else:
        try:
            test = monthly_cutoffs(dataset, config.horizon_days)[-1]
        except DataError as exc:
            raise TrainingRefusedError(str(exc)) from exc
    if config.validation_cutoff is not None:
        cutoff = pd.Timestamp(config.validation_cutoff)
    else:
        cutoff = (test - pd.Timedelta(days=horizon)).to_period("M").to_timestamp()
    if cutoff + pd.Timedelta(days=horizon) > test:
        raise TrainingRefusedError(
            f"the validation window {cutoff:%Y-%m-%d} + {horizon} days runs into the test window starting "
            f"{test:%Y-%m-%d}: set an earlier validation_cutoff or a shorter validation_horizon_days"
        )
    first_day = dataset.transactions.frame["timestamp"].min().normalize()
    try:
        check_history(first_day, cutoff, config.train_horizon_days or horizon, config.guards)
    except TrainingRefusedError as exc:
        raise TrainingRefusedError(
            f"validation window {cutoff:%Y-%m-%d} + {horizon} days: {exc}; or set validation_cutoff and "
            "validation_horizon_days in the experiment's settings"
        ) from exc
    return config.model_copy(
        update={"evaluate_on": "validation", "test_cutoff": f"{cutoff:%Y-%m-%d}", "horizon_days": horizon}
    )


@dataclass
class _Holder:
    """Just what :meth:`CustomerModel.add_btyd` reads, to add the columns before the model exists."""

    btyd: BTYDModel
    horizon_days: int


class TransactionClassifier(CustomerModel):
    """One calibrated classifier per output column (``churn_probability``, ``purchase_probability``...)."""

    def __init__(
        self,
        split: TimeSplit,
        dataset: Dataset,
        columns: list[str],
        classifiers: dict[str, Any],
        btyd: BTYDModel | None,
        horizon_days: int,
    ) -> None:
        super().__init__(dataset.config, split.categories, split.encoder, columns, btyd, horizon_days)
        self.classifiers = classifiers

    def score_columns(self, features: pd.DataFrame | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = feature_matrix(features, self.columns)  # numpy, not a frame: 4x faster per call, same numbers
        return {name: positive_probability(classifier, values) for name, classifier in self.classifiers.items()}


def _bgnbd_baselines(
    split: TimeSplit, horizon_days: int, y: np.ndarray, rows: np.ndarray, config: ModelConfig, kind: str
) -> dict[str, Report]:
    """BG/NBD fitted on the history before the test cut-off: 1 - P(alive), and expected purchases in
    the horizon (scored as exp(-E[X]) for churn and 1 - exp(-E[X]) for propensity: same ranking,
    a number in [0, 1])."""
    model = fit_btyd(split.test, with_spend=False, penalizers=config.penalizers)
    predicted = predict_btyd(model, split.test.loc[rows], horizon_days)
    alive = predicted["p_alive"]
    none_expected = np.exp(-predicted["expected_orders"])
    if kind == "churn":
        return {
            "bgnbd_1_minus_p_alive": evaluate_classifier(y, 1.0 - alive),
            "bgnbd_expected_purchases": evaluate_classifier(y, none_expected),
        }
    return {
        "bgnbd_p_alive": evaluate_classifier(y, alive),
        "bgnbd_expected_purchases": evaluate_classifier(y, 1.0 - none_expected),
    }


def train_transaction_classifier(
    dataset: Dataset, config: ModelConfig, *, kind: str, targets: dict[str, str], family: str, registered_name: str
) -> Trained:
    """``targets``: output column -> label column; the first is the primary one."""
    split = time_split(dataset, config)
    btyd = None
    if config.feed_btyd:
        split.train = pd.concat(
            [
                pd.concat([group, btyd_features(group, config.horizon_days, config.penalizers)], axis=1)
                for _, group in split.train.groupby("cutoff", sort=True)
            ],
            ignore_index=True,
        )
        btyd = fit_btyd(split.test, with_spend=False, penalizers=config.penalizers)
        split.test = CustomerModel.add_btyd(_Holder(btyd, config.horizon_days), split.test)  # type: ignore[arg-type]
    columns = select_features(feature_columns(split.train), config)
    classifiers: dict[str, Any] = {}
    reports: dict[str, Report] = {}
    skipped: dict[str, str] = {}
    primary_output, primary_label = next(iter(targets.items()))
    for output, label in targets.items():
        train_rows = split.train[label].notna().to_numpy()
        test_rows = split.test[label].notna().to_numpy()
        y_train = split.train.loc[train_rows, label].astype(int).to_numpy()
        y_test = split.test.loc[test_rows, label].astype(int).to_numpy()
        what = f"{family} ({label}) on '{dataset.config.name}', {split.window}"
        try:
            check_class_support(pd.Series(y_train), config.guards, what + ", training rows")
            check_class_support(pd.Series(y_test), config.guards, what + ", test rows")
        except TrainingRefusedError as exc:
            if output == primary_output:
                raise
            skipped[output] = str(exc)  # a category too rare for a model of its own: reported, left out
            continue
        x_train = matrix(split.train.loc[train_rows], columns)
        classifier = fit_classifier(x_train, y_train, config)
        classifiers[output] = classifier
        reports[output] = evaluate_classifier(
            y_test,
            classifier.predict_proba(matrix(split.test.loc[test_rows], columns))[:, 1],
            feature_importance=importance(classifier, columns) if output == primary_output else None,
        )

    train_rows = split.train[primary_label].notna().to_numpy()
    test_rows = split.test[primary_label].notna().to_numpy()
    y_train = split.train.loc[train_rows, primary_label].astype(int).to_numpy()
    y_test = split.test.loc[test_rows, primary_label].astype(int).to_numpy()
    baselines = _bgnbd_baselines(split, config.horizon_days, y_test, test_rows, config, kind)
    rfm = rfm_baseline(split.train.loc[train_rows], y_train, config.seed)
    baselines["rfm_logistic_regression"] = evaluate_classifier(
        y_test, rfm.predict_proba(split.test.loc[test_rows, list(RFM_COLUMNS)].to_numpy(dtype=float))[:, 1]
    )

    model = TransactionClassifier(split, dataset, columns, classifiers, btyd, config.horizon_days)
    example = contract_example(dataset)
    extra = {f"{output}_roc_auc": r.metrics["roc_auc"] for output, r in reports.items() if output != primary_output}
    per_target = pd.DataFrame(
        [
            {"output": o, "label": targets[o], **{k: r.metrics[k] for k in ("roc_auc", "pr_auc", "positive_rate")}}
            for o, r in reports.items()
        ]
        + [{"output": o, "label": targets[o], "skipped": why} for o, why in skipped.items()]
    )
    return Trained(
        family=family,
        registered_name=registered_name,
        model=model,
        report=reports[primary_output],
        baselines=baselines,
        test_window=f"{split.test_cutoff:%Y-%m-%d} + {config.horizon_days} days",
        params={**params_for_logging(config), "train_cutoffs": split.window, "features": len(columns)},
        input_example=example,
        output_example=model.predict(None, example, {"as_of": str(split.test_cutoff.date())}),
        predict_params={"as_of": str(split.test_cutoff.date())},
        extra_metrics=extra,
        tables={"targets": per_target},
        train_rows=int(train_rows.sum()),
        test_rows=int(test_rows.sum()),
        required_inputs=list(TRANSACTION_REQUIRED),
    )
