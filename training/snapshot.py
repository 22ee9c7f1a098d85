"""Classifiers on one table without time: leads (did the lead convert?) and customer snapshots
(Telco: did the subscriber churn?).

Protocol: stratified split (``test_size``, ``seed``); the encoder and the model see the training part
only. The leakage guard runs on the columns as the file has them, before encoding. Baseline: logistic
regression on the same encoded attributes. The logged model scores rows as the file has them (file
column names), with the dataset's cleaning rules and the fitted encoder inside.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from features.attributes import AttributeEncoder
from features.config import DatasetConfig
from features.io import Dataset, read_raw_table, table_path
from features.pipeline import attribute_columns
from features.validate import ROW, NoUsableRowsError, check_table
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
from training.evaluation import evaluate_classifier
from training.guards import TrainingRefusedError, check_class_support, check_leakage

Kind = Literal["leads", "customers"]


def tiers(score: np.ndarray, thresholds: dict[str, float], below: str = "cold") -> np.ndarray:
    """The name of the highest threshold each score reaches; ``below`` under all of them."""
    result = np.full(len(score), below, dtype=object)
    for name in sorted(thresholds, key=thresholds.__getitem__):  # ascending: the highest wins
        result[score >= thresholds[name]] = name
    return result


class SnapshotClassifier(PythonModel):
    """Scores raw rows of a leads or customers table with the rules and encoder it was trained with."""

    def __init__(
        self,
        dataset_config: DatasetConfig,
        kind: Kind,
        encoder: AttributeEncoder,
        classifier: Any,
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
        id_name = table.columns[self.id_column]
        if id_name not in frame.columns:
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
        return np.asarray(self.classifier.predict_proba(encoded.to_numpy())[:, 1], dtype=float)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        cleaned = self.clean(model_input)
        encoded = self.encoder.transform(cleaned).reset_index(drop=True)
        probability = self.probability(encoded)
        up, down = reasons(self.classifier, encoded, self.encoder.source_columns, self.top_reasons)
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


def train_snapshot(
    dataset: Dataset, config: ModelConfig, *, kind: Kind, label: str, family: str, registered_name: str
) -> Trained:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    checked = getattr(dataset, kind)
    if checked is None or label not in checked.frame.columns:
        raise TrainingRefusedError(
            f"dataset '{dataset.config.name}' has no {kind} table with a '{label}' column: "
            f"map it under {kind}.columns in {dataset.config.source_file}"
        )
    rows = checked.frame.loc[checked.frame[label].notna()].reset_index(drop=True)
    labels = rows[label].astype(int)
    check_class_support(labels, config.guards, f"{family} on '{dataset.config.name}'")
    columns = select_features(attribute_columns(rows), config)
    leakage = check_leakage(rows[columns], labels, config.guards, seed=config.seed)

    train_rows, test_rows = train_test_split(
        np.arange(len(rows)), test_size=config.test_size, stratify=labels, random_state=config.seed
    )
    window = f"stratified {config.test_size:g} test split, seed {config.seed}"
    if config.evaluate_on == "validation":  # the test part stays unseen: split the training part again
        train_rows, test_rows = train_test_split(
            train_rows, test_size=config.test_size, stratify=labels.iloc[train_rows], random_state=config.seed
        )
        window = f"validation: stratified {config.test_size:g} split of the training part of the {window}"
    encoder = AttributeEncoder(max_levels=dataset.config.features.max_attribute_levels).fit(
        rows.iloc[train_rows], columns
    )
    x_train = encoder.transform(rows.iloc[train_rows]).reset_index(drop=True)
    x_test = encoder.transform(rows.iloc[test_rows]).reset_index(drop=True)
    y_train, y_test = labels.iloc[train_rows].to_numpy(), labels.iloc[test_rows].to_numpy()

    classifier = fit_classifier(x_train, y_train, config)
    model = SnapshotClassifier(dataset.config, kind, encoder, classifier, config)
    report = evaluate_classifier(
        y_test,
        model.probability(x_test),
        feature_importance=importance(classifier, x_train.columns, encoder.source_columns),
    )
    baseline = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(max_iter=5000, random_state=config.seed),
    ).fit(x_train, y_train)
    baseline_report = evaluate_classifier(y_test, baseline.predict_proba(x_test)[:, 1])

    example = _raw_rows(dataset, kind, rows[ROW].to_numpy()[test_rows[:5]])
    return Trained(
        family=family,
        registered_name=registered_name,
        model=model,
        report=report,
        baselines={"logistic_regression": baseline_report},
        test_window=window,
        params=params_for_logging(config),
        input_example=example,
        output_example=model.predict(None, example),
        tables={"single_column_auc": leakage.rename("roc_auc").rename_axis("column").reset_index()},
        train_rows=len(train_rows),
        test_rows=len(test_rows),
        required_inputs=[getattr(dataset.config, kind).columns["lead_id" if kind == "leads" else "customer_id"]],
    )


def _raw_rows(dataset: Dataset, kind: Kind, row_numbers: np.ndarray) -> pd.DataFrame:
    """Rows as the file has them (text values), for the logged model's input example and signature."""
    table = getattr(dataset.config, kind)
    raw = read_raw_table(table_path(dataset.config, table), table)
    return raw.set_index(ROW).loc[row_numbers].reset_index(drop=True)
