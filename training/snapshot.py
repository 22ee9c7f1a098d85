"""Classifiers on one table without time: leads (did the lead convert?) and customer snapshots
(Telco: did the subscriber churn?).

Protocol: stratified split (``test_size``, ``seed``), or, when the rows have a creation date
(``created_at``), a time split: the latest ``test_size`` share by date is the test part. The encoder
and the candidates see the training part only. The candidates (:mod:`training.candidates`: a plain
logistic regression on the one-hot attributes as the baseline, a regularised one on transformed
features, calibrated xgboost, their blend) are compared by cross-validation on the training part
(forward in time with a creation date: the latest share of the training part), the winner is refitted
on the whole training part and every candidate is reported on the test part. The leakage guard runs
on the columns as the file has them, before encoding. The logged model scores rows as the file has
them (file column names), with the dataset's cleaning rules and the fitted encoder inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from features.attributes import AttributeEncoder
from features.config import DatasetConfig
from features.io import Dataset, read_raw_table, table_path
from features.pipeline import attribute_columns
from features.validate import ROW, NoUsableRowsError, check_table
from training.candidates import (
    SNAPSHOT_BASELINES,
    SNAPSHOT_CANDIDATES,
    Choice,
    Fitted,
    choose_and_report,
    for_ranking,
)
from training.candidates import logistic_regression as make_logistic_regression
from training.common import (
    InputRowsError,
    Trained,
    fit_classifier,
    importance,
    params_for_logging,
    reasons,
    select_features,
)
from training.config import ModelConfig
from training.evaluation import Report, evaluate_classifier
from training.families import registered_name
from training.guards import TrainingRefusedError, check_class_support, check_leakage

Kind = Literal["leads", "customers"]


def tiers(score: np.ndarray, thresholds: dict[str, float], below: str = "cold") -> np.ndarray:
    """The name of the highest threshold each score reaches; ``below`` under all of them."""
    result = np.full(len(score), below, dtype=object)
    for name in sorted(thresholds, key=thresholds.__getitem__):  # ascending: the highest wins
        result[score >= thresholds[name]] = name
    return result


class SnapshotClassifier(PythonModel):
    """Scores raw rows of a leads or customers table with the rules, encoder and winning candidate it
    was trained with."""

    def __init__(
        self,
        dataset_config: DatasetConfig,
        kind: Kind,
        encoder: AttributeEncoder,
        classifier: Fitted,
        config: ModelConfig,
    ) -> None:
        self.dataset_config = dataset_config
        self.kind = kind
        self.encoder = encoder
        self.classifier = classifier
        self.score_tiers = dict(config.score_tiers)
        self.top_reasons = config.top_reasons

    @property
    def id_column(self) -> str:
        return "lead_id" if self.kind == "leads" else "customer_id"

    def clean(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Rows as the file has them -> contract columns and cleaned attributes; bad rows fail, named."""
        table = getattr(self.dataset_config, self.kind)
        frame = raw.reset_index(drop=True).copy()
        id_name = table.columns.get(self.id_column)
        if id_name is not None and id_name not in frame.columns:
            raise ValueError(f"rows need the id column '{id_name}'; got {list(raw.columns)}")
        for name in [*table.columns.values(), *table.exclude]:
            if name not in frame.columns:  # the label and excluded columns are not sent when scoring
                frame[name] = pd.NA
        frame[ROW] = np.arange(1, len(frame) + 1)
        try:
            checked = check_table(frame, table, self.dataset_config, self.kind, "request")
        except NoUsableRowsError as exc:
            raise InputRowsError([p for p in exc.problems if p.quarantined]) from exc
        if not checked.quarantine.empty:
            raise InputRowsError([p for p in checked.problems if p.quarantined])
        return checked.frame.reset_index(drop=True)

    def probability(self, encoded: pd.DataFrame) -> np.ndarray:
        return self.classifier.score(encoded)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        cleaned = self.clean(model_input)
        encoded = self.encoder.transform(cleaned).reset_index(drop=True)
        probability = self.probability(encoded)
        up, down = candidate_reasons(self.classifier, encoded, self.encoder.source_columns, self.top_reasons)
        out = pd.DataFrame({self.id_column: cleaned[self.id_column].astype(str).to_numpy()})
        if self.kind == "leads":
            score = np.round(100 * probability, 1)
            out["probability"] = probability
            out["score"] = score
            out["tier"] = tiers(score, self.score_tiers)
        else:
            out["churn_probability"] = probability
        out["reasons_up"] = up
        out["reasons_down"] = down
        return out


def linear_contributions(pipeline: Any, x: pd.DataFrame) -> np.ndarray:
    """Per row and input, its share of a linear model's log-odds: the standardised value times the
    coefficient (the exact additive explanation of a linear model around the mean row)."""
    z = pipeline[:-1].transform(x.to_numpy(dtype=float))
    return np.asarray(z * pipeline[-1].coef_[0], dtype=float)


def contributions(fitted: Fitted, x: pd.DataFrame) -> np.ndarray:
    """Log-odds contributions per row and encoded input: xgboost's own (``pred_contribs``), a linear
    model's, or the mean of a blend's parts."""
    import xgboost

    if fitted.parts:
        return np.mean([contributions(part, x) for part in fitted.parts], axis=0)
    values = x[fitted.columns]
    if hasattr(fitted.estimator, "steps"):
        return linear_contributions(fitted.estimator, values)
    from training.common import booster_of

    booster = booster_of(fitted.estimator).get_booster()
    return np.asarray(booster.predict(xgboost.DMatrix(values), pred_contribs=True)[:, :-1])


def candidate_reasons(fitted: Fitted, x: pd.DataFrame, sources: Sequence[str], top: int) -> tuple[list[str], list[str]]:
    """Per row, the ``top`` source columns raising and lowering the score most."""
    if top == 0 or len(x) == 0:
        return [""] * len(x), [""] * len(x)
    return reasons(contributions(fitted, x), sources, top)


def fit_snapshot_candidates(
    x: pd.DataFrame, y: np.ndarray, config: ModelConfig, names: Sequence[str]
) -> dict[str, Fitted]:
    columns = list(x.columns)
    values = x.to_numpy(dtype=float)
    fitted: dict[str, Fitted] = {}
    for name in names:
        if name == "plain_logistic_regression":
            fitted[name] = Fitted(name, columns, make_logistic_regression(config.seed, transform=False).fit(values, y))
        elif name == "logistic_regression":
            fitted[name] = Fitted(name, columns, make_logistic_regression(config.seed).fit(values, y))
        elif name == "xgboost":
            fitted[name] = Fitted(name, columns, fit_classifier(x, y, config))
        elif name == "blend" and {"xgboost", "logistic_regression"} <= set(fitted):
            fitted[name] = Fitted(name, [], parts=[fitted["logistic_regression"], fitted["xgboost"]])
    return fitted


def snapshot_split(rows: pd.DataFrame, labels: pd.Series, config: ModelConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and test positions: by creation date when the rows have one (the latest ``test_size``
    share is the test part), otherwise stratified at random."""
    from sklearn.model_selection import train_test_split

    created = rows["created_at"] if "created_at" in rows.columns else None
    if created is not None and created.notna().all():
        order = np.argsort(created.to_numpy(dtype="datetime64[ns]"), kind="stable")
        cut = round(len(order) * (1 - config.test_size))
        first = pd.Timestamp(created.iloc[order[cut]])
        return (
            order[:cut],
            order[cut:],
            f"time split: test = the latest {config.test_size:g} by created_at (from {first:%Y-%m-%d})",
        )
    train_rows, test_rows = train_test_split(
        np.arange(len(rows)), test_size=config.test_size, stratify=labels, random_state=config.seed
    )
    return train_rows, test_rows, f"stratified {config.test_size:g} test split, seed {config.seed}"


def validation_folds(
    rows: pd.DataFrame, labels: pd.Series, train_rows: np.ndarray, config: ModelConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds of the training part for choosing the candidate: forward in time with a creation date,
    stratified cross-validation otherwise."""
    from sklearn.model_selection import StratifiedKFold

    created = rows["created_at"] if "created_at" in rows.columns else None
    if created is not None and created.notna().all():
        ordered = train_rows[np.argsort(created.to_numpy(dtype="datetime64[ns]")[train_rows], kind="stable")]
        cut = round(len(ordered) * (1 - config.test_size))
        return [(ordered[:cut], ordered[cut:])]
    folds = StratifiedKFold(config.cv_folds, shuffle=True, random_state=config.seed)
    return [(train_rows[a], train_rows[b]) for a, b in folds.split(train_rows, labels.iloc[train_rows])]


def cross_validated(
    rows: pd.DataFrame,
    labels: pd.Series,
    train_rows: np.ndarray,
    columns: list[str],
    config: ModelConfig,
    names: Sequence[str],
    max_levels: int,
) -> dict[str, Report]:
    """Each candidate's out-of-fold predictions on the training part, pooled into one report."""
    pooled: dict[str, list[np.ndarray]] = {n: [] for n in names}
    truth = []
    for fit_rows, held_rows in validation_folds(rows, labels, train_rows, config):
        encoder = AttributeEncoder(max_levels=max_levels).fit(rows.iloc[fit_rows], columns)
        x_fit = encoder.transform(rows.iloc[fit_rows]).reset_index(drop=True)
        x_held = encoder.transform(rows.iloc[held_rows]).reset_index(drop=True)
        fitted = fit_snapshot_candidates(x_fit, labels.iloc[fit_rows].to_numpy(), for_ranking(config), names)
        for name, candidate in fitted.items():
            pooled[name].append(candidate.score(x_held))
        truth.append(labels.iloc[held_rows].to_numpy())
    y = np.concatenate(truth)
    return {n: evaluate_classifier(y, np.concatenate(p)) for n, p in pooled.items() if p}


def train_snapshot(dataset: Dataset, config: ModelConfig, *, kind: Kind, label: str, family: str) -> Trained:
    rows = _labelled_rows(dataset, kind, label)
    labels = rows[label].astype(int)
    check_class_support(labels, config.guards, f"{family} on '{dataset.config.name}'")
    columns = select_features(attribute_columns(rows), config)
    leakage = check_leakage(rows[columns], labels, config.guards, seed=config.seed)

    train_rows, test_rows, window = _evaluation_split(rows, labels, config)
    max_levels = dataset.config.features.max_attribute_levels
    encoder = AttributeEncoder(max_levels=max_levels).fit(rows.iloc[train_rows], columns)
    x_train = encoder.transform(rows.iloc[train_rows]).reset_index(drop=True)
    x_test = encoder.transform(rows.iloc[test_rows]).reset_index(drop=True)
    y_train, y_test = labels.iloc[train_rows].to_numpy(), labels.iloc[test_rows].to_numpy()

    order = _candidate_order(config)
    fitted = fit_snapshot_candidates(x_train, y_train, config, order)
    test_reports = _test_reports(fitted, x_train, x_test, y_test, encoder)
    baselines = [n for n in order if n in SNAPSHOT_BASELINES]
    if len(fitted) > 1:
        validation = cross_validated(rows, labels, train_rows, columns, config, tuple(fitted), max_levels)
        choice = choose_and_report(validation, test_reports, order, baselines, _validation_protocol(window, config))
    else:
        only = next(iter(fitted))
        choice = Choice(only, f"{only}: the only candidate", {}, test_reports, tuple(baselines))
    model = SnapshotClassifier(dataset.config, kind, encoder, fitted[choice.winner], config)

    example = _raw_rows(dataset, kind, rows[ROW].to_numpy()[test_rows[:5]])
    output = "probability" if kind == "leads" else "churn_probability"
    return Trained(
        family=family,
        registered_name=registered_name(family, dataset.config.name),
        model=model,
        report=choice.test[choice.winner],
        baselines={n: choice.test[n] for n in baselines if n in choice.test},
        test_window=window,
        params=params_for_logging(config),
        input_example=example,
        output_example=model.predict(None, example),
        tables={
            "single_column_auc": leakage.rename("roc_auc").rename_axis("column").reset_index(),
            "candidates": choice.table(),
        },
        train_rows=len(train_rows),
        test_rows=len(test_rows),
        required_inputs=_required_inputs(dataset, kind),
        candidate=choice.winner,
        choice=choice,
        rescore=partial(_rescore, dataset, kind, rows[ROW].to_numpy()[test_rows], y_test, output),
    )


def _labelled_rows(dataset: Dataset, kind: Kind, label: str) -> pd.DataFrame:
    """The rows of the ``kind`` table whose ``label`` is known; refused when the table or column is absent."""
    checked = getattr(dataset, kind)
    if checked is None or label not in checked.frame.columns:
        raise TrainingRefusedError(
            f"dataset '{dataset.config.name}' has no {kind} table with a '{label}' column: "
            f"map it under {kind}.columns in {dataset.config.source_file}"
        )
    return checked.frame.loc[checked.frame[label].notna()].reset_index(drop=True)


def _evaluation_split(rows: pd.DataFrame, labels: pd.Series, config: ModelConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and evaluation positions and how they were split: the test part, or with
    ``evaluate_on: validation`` a split of the training part (the test part stays unseen)."""
    train_rows, test_rows, window = snapshot_split(rows, labels, config)
    if config.evaluate_on == "validation":
        inner_train, inner_test, inner = snapshot_split(
            rows.iloc[train_rows].reset_index(drop=True), labels.iloc[train_rows].reset_index(drop=True), config
        )
        train_rows, test_rows = train_rows[inner_train], train_rows[inner_test]
        window = f"validation: {inner} of the training part of the {window}"
    return train_rows, test_rows, window


def _candidate_order(config: ModelConfig) -> tuple[str, ...]:
    """The candidates the model config asks for, in the order of SNAPSHOT_CANDIDATES; refused when none is known."""
    order = tuple(n for n in SNAPSHOT_CANDIDATES if config.candidates is None or n in config.candidates)
    if not order:
        raise TrainingRefusedError(
            f"no known candidate in the model config's candidates {config.candidates}: "
            f"use some of {list(SNAPSHOT_CANDIDATES)}"
        )
    return order


def _test_reports(
    fitted: dict[str, Fitted],
    x_train: pd.DataFrame,
    x_test: pd.DataFrame,
    y_test: np.ndarray,
    encoder: AttributeEncoder,
) -> dict[str, Report]:
    """Every candidate's report on the test part; xgboost's with its feature importance."""
    return {
        name: evaluate_classifier(
            y_test,
            candidate.score(x_test),
            feature_importance=importance(candidate.estimator, x_train.columns, encoder.source_columns)
            if name == "xgboost"
            else None,
        )
        for name, candidate in fitted.items()
    }


def _validation_protocol(window: str, config: ModelConfig) -> str:
    """How the candidates were compared, in the words of the report."""
    if "by created_at" in window:
        return "forward validation on the latest part of the training rows"
    return f"{config.cv_folds}-fold cross-validation on the training part"


def _required_inputs(dataset: Dataset, kind: Kind) -> list[str]:
    id_name = getattr(dataset.config, kind).columns.get("lead_id" if kind == "leads" else "customer_id")
    return [id_name] if id_name else []


def _rescore(dataset: Dataset, kind: Kind, row_numbers: np.ndarray, y: np.ndarray, output: str, champion: Any) -> float:
    """Another version of this model (the current champion) scored on this run's test rows."""
    from sklearn.metrics import roc_auc_score

    scored = champion.predict(None, _raw_rows(dataset, kind, row_numbers))
    return float(roc_auc_score(y, scored[output].to_numpy(dtype=float)))


def _raw_rows(dataset: Dataset, kind: Kind, row_numbers: np.ndarray) -> pd.DataFrame:
    """Rows as the file has them (text values), for the logged model's input example and signature."""
    table = getattr(dataset.config, kind)
    raw = read_raw_table(table_path(dataset.config, table), table)
    return raw.set_index(ROW).loc[row_numbers].reset_index(drop=True)
