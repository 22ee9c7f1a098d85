"""Purchase and event propensity: P(at least one purchase within the horizon), and P(each of the
top-K events within the horizon). A dataset's events are its events table's (an e-mail click, an app
feature used: ``event_probability_<event>``) or, without one, the category purchases of its
transactions (``purchase_probability_<category>``; Online Retail's categories come from its keyword
map): one code path, :func:`features.events.dataset_events`. Candidates per output, split by time
(:mod:`training.customers`). An event with too few customers for the guards is reported and left out
rather than stopping the overall model."""

from __future__ import annotations

from features.events import EventNames, dataset_events, event_slug
from features.io import Dataset
from training.candidates import PROPENSITY_BASELINES, candidates_for
from training.common import Trained, one_blas_thread
from training.config import ModelConfig
from training.customers import train_transaction_classifier
from training.families import Family
from training.guards import TrainingRefusedError

NAME = "propensity"


@one_blas_thread
def train(dataset: Dataset, config: ModelConfig) -> Trained:
    if dataset.transactions is None:
        raise TrainingRefusedError(f"propensity needs a transaction log; dataset '{dataset.config.name}' has none")
    targets, left_out = event_targets(dataset, config)
    trained = train_transaction_classifier(dataset, config, kind="propensity", targets=targets, family=NAME)
    trained.warnings.extend(left_out)
    return trained


def event_targets(dataset: Dataset, config: ModelConfig) -> tuple[dict[str, str], list[str]]:
    """Output column -> label column: ``purchase_probability`` first, then one per top-K event chosen on
    the history before the test cut-off (as the features choose them). Events whose names give no
    column name, or the one of an earlier event, are left out with the reason."""
    targets = {"purchase_probability": "purchased"}
    left_out: list[str] = []
    if not config.top_categories:
        return targets, left_out
    events, names = time_split_events(dataset, config)
    for event in events[: config.top_categories]:
        output = names.output(event)
        if not event_slug(event) or output in targets:
            left_out.append(f"event {event!r} left out: its name gives no column of its own ({output})")
            continue
        targets[output] = names.label(event)
    return targets, left_out


def time_split_events(dataset: Dataset, config: ModelConfig) -> tuple[list[str], EventNames]:
    from features.pipeline import monthly_cutoffs

    assert dataset.transactions is not None
    test = monthly_cutoffs(dataset, config.horizon_days)[-1]
    settings = dataset.config.features
    events = dataset.events.frame if dataset.events is not None else None
    k = settings.top_events if events is not None else settings.top_categories
    return dataset_events(dataset.transactions.frame, events, test, k)


FAMILY = Family(
    name=NAME,
    help="Purchase propensity: P(any purchase in the next horizon), and per top event (category purchase, "
    "e-mail click, feature used).",
    label="purchased",
    primary_metric="roc_auc",
    candidates=candidates_for("propensity"),
    baselines=PROPENSITY_BASELINES,
    outputs=("purchase_probability", "purchase_probability_<category>", "event_probability_<event>"),
    tables=("transactions", "events"),
    entity="customer",
    train=train,
    needs=("transactions",),
)
