"""Lead score: will a lead become a customer? A calibrated probability, a 0-100 score, a hot/warm/cold
tier, and per lead the attributes raising and lowering its score most (see :mod:`training.snapshot`)."""

from __future__ import annotations

from features.io import Dataset
from training.common import Trained
from training.config import ModelConfig
from training.snapshot import train_snapshot

FAMILY = "lead_score"
REGISTERED_NAME = "valuecast-lead-score"


def train(dataset: Dataset, config: ModelConfig) -> Trained:
    return train_snapshot(
        dataset, config, kind="leads", label="converted", family=FAMILY, registered_name=REGISTERED_NAME
    )
