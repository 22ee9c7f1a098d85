"""Churn: will a customer active in the look-back window make no purchase in the next horizon (or
cancel within it)? Candidates on the customer features, split by time (:mod:`training.customers`);
on a customers snapshot with a churn flag and no transaction log (Telco), a stratified split
(:mod:`training.snapshot`)."""

from __future__ import annotations

from features.io import Dataset
from training.candidates import CHURN_BASELINES, candidates_for
from training.common import Trained, one_blas_thread
from training.config import ModelConfig
from training.customers import train_transaction_classifier
from training.families import Family
from training.snapshot import train_snapshot

NAME = "churn"


@one_blas_thread
def train(dataset: Dataset, config: ModelConfig) -> Trained:
    if dataset.transactions is None:
        return train_snapshot(dataset, config, kind="customers", label="churned", family=NAME)
    return train_transaction_classifier(
        dataset, config, kind="churn", targets={"churn_probability": "churned"}, family=NAME
    )


FAMILY = Family(
    name=NAME,
    help="Churn: P(no purchase in the next horizon) for active customers, or a snapshot's churn flag.",
    label="churned",
    primary_metric="roc_auc",
    candidates=candidates_for("churn"),
    baselines=CHURN_BASELINES,
    outputs=("churn_probability",),
    tables=("transactions", "customers"),
    entity="customer",
    train=train,
)
