"""Lead score: will a lead become a customer? A calibrated probability, a 0-100 score, a hot/warm/cold
tier, and per lead the attributes raising and lowering its score most (see :mod:`training.snapshot`)."""

from __future__ import annotations

from features.io import Dataset
from training.candidates import SNAPSHOT_BASELINES, SNAPSHOT_CANDIDATES
from training.common import Trained, one_blas_thread
from training.config import ModelConfig
from training.families import Family
from training.snapshot import train_snapshot

NAME = "lead_score"


@one_blas_thread
def train(dataset: Dataset, config: ModelConfig) -> Trained:
    return train_snapshot(dataset, config, kind="leads", label="converted", family=NAME)


FAMILY = Family(
    name=NAME,
    help="Lead score: P(a lead converts), a 0-100 score, hot/warm/cold, the top reasons up and down.",
    label="converted",
    primary_metric="roc_auc",
    candidates=SNAPSHOT_CANDIDATES,
    baselines=SNAPSHOT_BASELINES,
    outputs=("probability", "score", "tier", "reasons_up", "reasons_down"),
    tables=("leads",),
    entity="lead",
    train=train,
)
