"""Purchase propensity: P(at least one purchase within the horizon), overall and for each of the
top-K categories (the dataset's categories; Online Retail's come from its keyword map). Candidates
per output, split by time (:mod:`training.customers`). A category with too few buyers for the guards
is reported and left out rather than stopping the overall model."""

from __future__ import annotations

from features.io import Dataset
from features.transactions import category_column
from training.candidates import PROPENSITY_BASELINES, candidates_for
from training.common import Trained
from training.config import ModelConfig
from training.customers import train_transaction_classifier
from training.families import Family
from training.guards import TrainingRefusedError

NAME = "propensity"


def train(dataset: Dataset, config: ModelConfig) -> Trained:
    if dataset.transactions is None:
        raise TrainingRefusedError(f"propensity needs a transaction log; dataset '{dataset.config.name}' has none")
    targets = {"purchase_probability": "purchased"}
    if config.top_categories:
        categories = time_split_categories(dataset, config)
        for name in categories[: config.top_categories]:
            slug = category_column(name).removeprefix("category_share_")
            targets[f"purchase_probability_{slug}"] = f"purchased_{slug}"
    return train_transaction_classifier(dataset, config, kind="propensity", targets=targets, family=NAME)


def time_split_categories(dataset: Dataset, config: ModelConfig) -> list[str]:
    from features.pipeline import monthly_cutoffs
    from features.transactions import top_categories

    assert dataset.transactions is not None
    if "category" not in dataset.transactions.frame.columns:
        return []
    test = monthly_cutoffs(dataset, config.horizon_days)[-1]
    return top_categories(dataset.transactions.frame, test, dataset.config.features.top_categories)


FAMILY = Family(
    name=NAME,
    help="Purchase propensity: P(any purchase in the next horizon), and per top category.",
    label="purchased",
    primary_metric="roc_auc",
    candidates=candidates_for("propensity"),
    baselines=PROPENSITY_BASELINES,
    outputs=("purchase_probability", "purchase_probability_<category>"),
    tables=("transactions",),
    entity="customer",
    train=train,
    needs=("transactions",),
)
