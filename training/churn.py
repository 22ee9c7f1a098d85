"""Churn: will a customer active in the look-back window make no purchase in the next horizon (or
cancel within it)? Gradient boosting on the customer features, calibrated, split by time
(:mod:`training.customers`); on a customers snapshot with a churn flag and no transaction log (Telco),
a stratified split (:mod:`training.snapshot`)."""

from __future__ import annotations

from features.io import Dataset
from training.common import Trained
from training.config import ModelConfig
from training.customers import train_transaction_classifier
from training.snapshot import train_snapshot

FAMILY = "churn"
REGISTERED_NAME = "valuecast-churn"


def train(dataset: Dataset, config: ModelConfig) -> Trained:
    if dataset.transactions is None:
        return train_snapshot(
            dataset, config, kind="customers", label="churned", family=FAMILY, registered_name=REGISTERED_NAME
        )
    return train_transaction_classifier(
        dataset,
        config,
        kind="churn",
        targets={"churn_probability": "churned"},
        family=FAMILY,
        registered_name=REGISTERED_NAME,
    )
