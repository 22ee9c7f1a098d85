"""Classifiers of customers with a transaction history (churn, purchase propensity), split by time.

Protocol: the test cut-off is the latest month start whose label window ends within the data; the
training cut-offs are the month starts (up to ``cutoffs`` of them) whose label windows end on or
before the test cut-off, so no training label looks into the test window. Features, categories and
the attribute encoder are those of :func:`features.pipeline.build_training_set`.

Candidates (:mod:`training.candidates`) on the same rows: the baselines BG/NBD fitted on the history
before the cut-off (unsupervised, so it needs no training labels) and a logistic regression on recency,
frequency and monetary value; a regularised logistic regression on all features; calibrated xgboost;
their blend. The winner is chosen on the validation window (the month start one horizon before the
test cut-off, with training cut-offs whose labels end by it), refitted on the training cut-offs, and
reported on the test window with every other candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from features.config import TRANSACTION_REQUIRED
from features.io import Dataset
from features.pipeline import FeatureSet, build_customer_features, build_customer_labels, monthly_cutoffs
from features.validate import DataError
from training.btyd import BTYD_FEATURES, BTYDModel, FitError, fit_btyd, predict_btyd
from training.candidates import (
    BASELINE_NAMES,
    BGNBD_NAMES,
    BGNBD_SCORES,
    Choice,
    ColumnScore,
    Fitted,
    candidates_for,
    choose_and_report,
    for_ranking,
    logistic_regression,
)
from training.common import (
    PREDICT_PARAMS,
    RFM_COLUMNS,
    CustomerModel,
    Trained,
    contract_example,
    feature_columns,
    fit_classifier,
    importance,
    matrix,
    params_for_logging,
    select_features,
    stopped_trees,
)
from training.config import ModelConfig
from training.evaluation import Report, evaluate_classifier
from training.families import registered_name
from training.guards import ShortHistoryError, TrainingRefusedError, check_class_support, check_history


@dataclass
class TimeSplit:
    train: pd.DataFrame
    test: pd.DataFrame
    train_cutoffs: list[pd.Timestamp]
    test_cutoff: pd.Timestamp
    categories: list[str]
    encoder: Any
    events: list[str]  # the events table's top-K events as of the test cut-off (none without one)

    @property
    def window(self) -> str:
        first, last = self.train_cutoffs[0], self.train_cutoffs[-1]
        return f"train cut-offs {first:%Y-%m-%d}..{last:%Y-%m-%d}, test cut-off {self.test_cutoff:%Y-%m-%d}"


def _labelled(dataset: Dataset, reference: FeatureSet, cutoff: pd.Timestamp, horizon_days: int) -> pd.DataFrame:
    """Features as of ``cutoff`` (the reference's categories, events and encoder) joined with their labels."""
    features = build_customer_features(
        dataset, cutoff, categories=reference.categories, encoder=reference.encoder, events=reference.events
    )
    labels = build_customer_labels(
        dataset, features.frame["customer_id"], cutoff, horizon_days, reference.categories, reference.events
    )
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
            raise ShortHistoryError(str(exc)) from exc
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
        raise ShortHistoryError(
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
    return TimeSplit(
        train, test_frame, list(train_cutoffs), test, reference.categories, reference.encoder, reference.events
    )


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
    """One fitted candidate per output column (``churn_probability``, ``purchase_probability``...): the
    winner of that output's candidates on the validation window."""

    def __init__(
        self,
        split: TimeSplit,
        dataset: Dataset,
        classifiers: dict[str, Fitted],
        btyd: BTYDModel | None,
        horizon_days: int,
    ) -> None:
        columns = sorted({c for fitted in classifiers.values() for c in fitted.all_columns} - set(BTYD_FEATURES))
        super().__init__(dataset.config, split.categories, split.encoder, columns, btyd, horizon_days, split.events)
        self.classifiers = classifiers

    def score_columns(self, features: pd.DataFrame | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: fitted.score(features) for name, fitted in self.classifiers.items()}


def safe_btyd(summary: pd.DataFrame, config: ModelConfig, what: str, *, with_spend: bool = False) -> BTYDModel | str:
    """BG/NBD fitted on a cut-off's history, or why it could not be (a degenerate fit on a small
    shop's data: the BG/NBD inputs and baselines are then left out of the run, with that warning)."""
    try:
        return fit_btyd(summary, with_spend=with_spend, penalizers=config.penalizers)
    except FitError as exc:
        return f"BG/NBD inputs and baselines left out ({what}): {exc}"


def prepared_split(dataset: Dataset, config: ModelConfig, warnings: list[str]) -> tuple[TimeSplit, BTYDModel | None]:
    """The time split with the BG/NBD columns added to the test rows (fitted on the history before the
    test cut-off, for the BG/NBD baselines and, with ``feed_btyd``, as inputs of the other candidates;
    then each training cut-off gets a fit of its own)."""
    split = time_split(dataset, config)
    btyd = safe_btyd(split.test, config, f"cut-off {split.test_cutoff:%Y-%m-%d}")
    if isinstance(btyd, str):
        warnings.append(btyd)
        return split, None
    split.test = CustomerModel.add_btyd(_Holder(btyd, config.horizon_days), split.test)  # type: ignore[arg-type]
    if config.feed_btyd:
        parts = []
        for cutoff, group in split.train.groupby("cutoff", sort=True):
            fitted = safe_btyd(group, config, f"training cut-off {pd.Timestamp(cutoff):%Y-%m-%d}")
            if isinstance(fitted, str):
                warnings.append(fitted)
                split.test = split.test.drop(columns=list(BTYD_FEATURES))
                return split, None
            predicted = predict_btyd(fitted, group, config.horizon_days)
            parts.append(
                group.assign(btyd_expected_orders=predicted["expected_orders"], btyd_p_alive=predicted["p_alive"])
            )
        split.train = pd.concat(parts, ignore_index=True)
    return split, btyd


def fit_candidates(
    train: pd.DataFrame,
    label: str,
    columns: list[str],
    config: ModelConfig,
    names: tuple[str, ...],
    kind: str,
    stop_on: pd.DataFrame | None = None,
) -> dict[str, Fitted]:
    """Every candidate of ``names`` fitted on the labelled training rows (BG/NBD baselines need no
    fitting: they read the BG/NBD columns of the rows they score). ``stop_on``: the labelled rows
    xgboost's early stopping watches (the validation window), when the config sets a patience."""
    rows = train[label].notna().to_numpy()
    y = train.loc[rows, label].astype(int).to_numpy()
    watched = None
    if stop_on is not None and config.xgboost.early_stopping_rounds is not None:
        held = stop_on[label].notna().to_numpy()
        watched = (matrix(stop_on.loc[held], columns), stop_on.loc[held, label].astype(int).to_numpy())
    fitted: dict[str, Fitted] = {}
    for name in names:
        if name in BGNBD_SCORES[kind]:
            column, transform = BGNBD_SCORES[kind][name]
            fitted[name] = Fitted(name, [column], ColumnScore(transform).fit())
        elif name == "rfm_logistic_regression":
            estimator = logistic_regression(config.seed, transform=False)
            fitted[name] = Fitted(
                name, list(RFM_COLUMNS), estimator.fit(matrix(train.loc[rows], RFM_COLUMNS).to_numpy(), y)
            )
        elif name == "logistic_regression":
            estimator = logistic_regression(config.seed)
            fitted[name] = Fitted(name, columns, estimator.fit(matrix(train.loc[rows], columns).to_numpy(), y))
        elif name == "xgboost":
            fitted[name] = Fitted(name, columns, fit_classifier(matrix(train.loc[rows], columns), y, config, watched))
        elif name == "blend" and {"xgboost", "logistic_regression"} <= set(fitted):
            fitted[name] = Fitted(name, [], parts=[fitted["logistic_regression"], fitted["xgboost"]])
    return fitted


def score_candidates(fitted: dict[str, Fitted], test: pd.DataFrame, label: str) -> dict[str, Report]:
    rows = test[label].notna().to_numpy()
    y = test.loc[rows, label].astype(int).to_numpy()
    frame = test.loc[rows]
    reports = {}
    for name, candidate in fitted.items():
        importance_ = importance(candidate.estimator, candidate.columns) if name == "xgboost" else None
        reports[name] = evaluate_classifier(y, candidate.score(frame), feature_importance=importance_)
    return reports


def usable_candidates(config: ModelConfig, order: tuple[str, ...], has_btyd: bool) -> tuple[str, ...]:
    """The family's candidates the config asks for (default all), less BG/NBD when it could not be fitted."""
    if config.candidates is not None:
        unknown = sorted(set(config.candidates) - set(order))
        if unknown:
            raise TrainingRefusedError(f"unknown candidate(s) {unknown} in the model config: use some of {list(order)}")
        order = tuple(n for n in order if n in config.candidates)
    return tuple(n for n in order if has_btyd or n not in BGNBD_NAMES)


@dataclass
class _Output:
    """One output's candidates: the choice, and the fitted winner."""

    choice: Choice
    fitted: Fitted
    train_rows: int
    test_rows: int
    trees: int | None = None  # xgboost's number of trees, when validation chose it


def _check_support(split: TimeSplit, label: str, config: ModelConfig, what: str) -> None:
    for part, frame in (("training rows", split.train), ("test rows", split.test)):
        labels = frame.loc[frame[label].notna(), label].astype(int)
        check_class_support(labels, config.guards, f"{what}, {split.window}, {part}")


def train_output(
    split: TimeSplit,
    validation: TimeSplit | None,
    label: str,
    config: ModelConfig,
    order: tuple[str, ...],
    what: str,
    kind: str,
    fallback: str | None = None,
) -> _Output:
    """Fit the candidates on the validation split, choose there, refit them on the training cut-offs
    and score each on the test window (reported; the choice is already made). xgboost's number of
    trees is chosen on the validation window too (early stopping, when the config sets a patience),
    and the refit gets it. Without validation rows for this output (a category absent before the
    validation cut-off), ``fallback`` (the primary output's winner) is used."""
    _check_support(split, label, config, what)
    columns = select_features(feature_columns(split.train), config)
    val_reports: dict[str, Report] | None = None
    trees = None
    if validation is not None and len(order) > 1 and label in validation.test.columns:
        try:
            _check_support(validation, label, config, what + " (validation)")
        except TrainingRefusedError:
            pass  # too few examples to compare on: not a reason to refuse the model
        else:
            val_columns = select_features(feature_columns(validation.train), config)
            val_fitted = fit_candidates(
                validation.train, label, val_columns, for_ranking(config), order, kind, stop_on=validation.test
            )
            val_reports = score_candidates(val_fitted, validation.test, label)
            if "xgboost" in val_fitted and (trees := stopped_trees(val_fitted["xgboost"].estimator)) is not None:
                chosen = config.xgboost.model_copy(update={"n_estimators": trees})
                config = config.model_copy(update={"xgboost": chosen})
    fitted = fit_candidates(split.train, label, columns, config, order, kind)
    test_reports = score_candidates(fitted, split.test, label)
    if val_reports is None or len(fitted) == 1:
        winner = fallback if fallback in fitted else next(iter(fitted))
        where = "the only candidate" if len(fitted) == 1 else "no validation rows: the primary output's winner"
        choice = Choice(winner, f"{winner}: {where}", {}, test_reports, tuple(n for n in order if n in BASELINE_NAMES))
    else:
        assert validation is not None
        where = f"the validation window {validation.test_cutoff:%Y-%m-%d} + {config.horizon_days} days"
        choice = choose_and_report(val_reports, test_reports, order, [n for n in order if n in BASELINE_NAMES], where)
    rows = split.train[label].notna()
    return _Output(choice, fitted[choice.winner], int(rows.sum()), int(split.test[label].notna().sum()), trees)


def validation_split(dataset: Dataset, config: ModelConfig, split: TimeSplit, warnings: list[str]) -> TimeSplit | None:
    """The split whose test window is the validation window (just before the real test window). When
    the history is too short for one, the latest training cut-off is the validation window and the
    earlier ones fit (their labels overlap it: said so); None when there is a single cut-off."""
    try:
        validation, _ = prepared_split(dataset, validation_config(dataset, config), warnings)
    except TrainingRefusedError as exc:
        cutoffs = sorted(split.train["cutoff"].unique())
        if len(cutoffs) < 2:
            warnings.append(f"no validation window ({exc}) and one training cut-off: candidates not compared")
            return None
        last = pd.Timestamp(cutoffs[-1])
        warnings.append(
            f"no full validation window ({exc}): candidates compared on the latest training cut-off "
            f"{last:%Y-%m-%d}, fitted on the earlier ones (their label windows overlap it)"
        )
        fit = split.train.loc[split.train["cutoff"] < last].reset_index(drop=True)
        held = split.train.loc[split.train["cutoff"] == last].reset_index(drop=True)
        btyd = safe_btyd(held, config, f"cut-off {last:%Y-%m-%d}")
        if not isinstance(btyd, str) and not set(BTYD_FEATURES) <= set(held.columns):
            held = CustomerModel.add_btyd(_Holder(btyd, config.horizon_days), held)  # type: ignore[arg-type]
        earlier = [pd.Timestamp(c) for c in cutoffs[:-1]]
        return TimeSplit(fit, held, earlier, last, split.categories, split.encoder, split.events)
    return validation


def train_transaction_classifier(
    dataset: Dataset, config: ModelConfig, *, kind: str, targets: dict[str, str], family: str
) -> Trained:
    """``targets``: output column -> label column; the first is the primary one. Each output gets the
    candidate that wins on the validation window."""
    warnings: list[str] = []
    split, btyd = prepared_split(dataset, config, warnings)
    order = usable_candidates(config, candidates_for(kind), btyd is not None)
    validation = validation_split(dataset, config, split, warnings) if len(order) > 1 else None
    if validation is not None and not set(BTYD_FEATURES) <= set(validation.test.columns):
        order = usable_candidates(config, order, False)
    outputs: dict[str, _Output] = {}
    skipped: dict[str, str] = {}
    primary_output = next(iter(targets))
    for output, label in targets.items():
        fallback = outputs[primary_output].choice.winner if primary_output in outputs else None
        try:
            outputs[output] = train_output(
                split,
                validation,
                label,
                config,
                order,
                f"{family} ({label}) on '{dataset.config.name}'",
                kind,
                fallback,
            )
        except TrainingRefusedError as exc:
            if output == primary_output:
                raise
            skipped[output] = str(exc)  # a category too rare for a model of its own: reported, left out
    chosen = {output: result.fitted for output, result in outputs.items()}
    needs_btyd = config.feed_btyd or any(set(f.all_columns) & set(BTYD_FEATURES) for f in chosen.values())
    model = TransactionClassifier(split, dataset, chosen, btyd if needs_btyd else None, config.horizon_days)
    return _trained(dataset, config, family, split, model, outputs, targets, skipped, warnings)


def _trained(
    dataset: Dataset,
    config: ModelConfig,
    family: str,
    split: TimeSplit,
    model: TransactionClassifier,
    outputs: dict[str, _Output],
    targets: dict[str, str],
    skipped: dict[str, str],
    warnings: list[str],
) -> Trained:
    primary_output, primary_label = next(iter(targets.items()))
    primary = outputs[primary_output]
    choice = primary.choice
    per_target = pd.DataFrame(
        [
            {
                "output": o,
                "label": targets[o],
                "candidate": r.choice.winner,
                "xgboost_trees": r.trees,
                **_metrics(r.choice.test[r.choice.winner]),
            }
            for o, r in outputs.items()
        ]
        + [{"output": o, "label": targets[o], "skipped": why} for o, why in skipped.items()]
    )
    candidates = pd.concat([r.choice.table().assign(output=o) for o, r in outputs.items()], ignore_index=True)
    example = contract_example(dataset, with_events=bool(split.events))
    extra = {f"{o}_roc_auc": r.choice.test[r.choice.winner].metrics["roc_auc"] for o, r in outputs.items()}
    extra.pop(f"{primary_output}_roc_auc")
    return Trained(
        family=family,
        registered_name=registered_name(family, dataset.config.name),
        model=model,
        report=choice.test[choice.winner],
        baselines={n: choice.test[n] for n in choice.baselines if n in choice.test},
        test_window=f"{split.test_cutoff:%Y-%m-%d} + {config.horizon_days} days",
        params={
            **params_for_logging(config),
            "train_cutoffs": split.window,
            "features": len(model.columns),
            **({"xgb_trees_chosen": primary.trees} if primary.trees is not None else {}),
        },
        input_example=example,
        output_example=model.predict(None, example, PREDICT_PARAMS),
        predict_params=dict(PREDICT_PARAMS),
        extra_metrics=extra,
        tables={"targets": per_target, "candidates": candidates},
        train_rows=primary.train_rows,
        test_rows=primary.test_rows,
        required_inputs=list(TRANSACTION_REQUIRED),
        candidate=choice.winner,
        choice=choice,
        warnings=warnings,
        rescore=partial(_rescore, dataset, split.test_cutoff, split.test, primary_output, primary_label),
    )


def _metrics(report: Report) -> dict[str, float]:
    return {k: report.metrics[k] for k in ("roc_auc", "pr_auc", "positive_rate") if k in report.metrics}


def _rescore(
    dataset: Dataset, cutoff: pd.Timestamp, test: pd.DataFrame, output: str, label: str, champion: Any
) -> float:
    """Another version of this model (the current champion) scored on this run's test rows."""
    from sklearn.metrics import roc_auc_score

    scores = champion.score_features(champion.features(dataset, cutoff))
    rows = test.loc[test[label].notna(), ["customer_id", label]]
    joined = rows.assign(customer_id=rows["customer_id"].astype(str)).merge(scores, on="customer_id", how="left")
    if joined[output].isna().any():
        raise ValueError(f"it gave no {output} for {int(joined[output].isna().sum())} test customers")
    return float(roc_auc_score(joined[label].astype(int), joined[output]))
