"""valuecast in Python: the public surface for notebooks and scripts.

Everything else in the repository (``features``, ``training``, ``serving``) is internal and may
change; these functions are the supported way in, with the same numbers as ``make`` and the API::

    import valuecast

    data = valuecast.load_dataset("cdnow")                    # read and check (or your own YAML)
    outcome = valuecast.train("churn", "cdnow")               # candidates, gate, MLflow registry
    scores = valuecast.score(transactions, dataset="cdnow", as_of="1998-07-01")
    valuecast.models()                                        # the registry, one dict per model
    valuecast.segments("cdnow")                               # segments, their rules and actions
    valuecast.lookalike("cdnow", seed_ids, size=500)          # customers most like a seed, with reasons

Imports are deferred: ``import valuecast`` is cheap, the libraries load on the first call.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import features  # noqa: F401  (first: it chooses Arrow's allocator before anything loads pyarrow)

if TYPE_CHECKING:
    import pandas as pd

    from features.io import Dataset
    from training.run import Outcome

__all__ = ["load_dataset", "lookalike", "models", "score", "segments", "train"]


def load_dataset(name_or_path: str | Path, *, as_of: str | None = None) -> Dataset:
    """Read and check a dataset: a bundled name (``"cdnow"``, ``"x_education"``) or the path of your
    own dataset YAML (see docs/data-contract.md). Bad rows are quarantined with their reasons
    (``dataset.transactions.quarantine``); a file that cannot be used raises with the fix.

    ``as_of``: rows dated after this day are reported and left out (default: none are)."""
    from features.config import load_dataset_config
    from features.io import load_dataset as _load
    from features.validate import parse_day

    return _load(load_dataset_config(name_or_path), as_of=parse_day(as_of, "as_of"))


def train(family: str, data: str | Path, *, config: str | Path | None = None, quiet: bool = True) -> Outcome:
    """Train a family (``"churn"``, ``"propensity"``, ``"clv"``, ``"lead_score"``, ``"uplift"``) on a
    dataset exactly as ``make train`` does: every candidate and baseline, the winner chosen on
    validation data, logged to MLflow and registered as ``valuecast-<family>-<dataset>``; promoted to
    champion only if it beats the baselines and the current champion on the same test rows.

    Returns the outcome: ``run_id``, ``trained.candidate`` (what won), ``trained.report`` (test
    metrics), ``promotion`` (``registered_name``, ``version``, ``promoted``, ``reason``)."""
    from training.run import train_and_log

    return train_and_log(
        family,
        str(data),
        config_path=Path(config) if config is not None else None,
        echo=(lambda _: None) if quiet else print,
    )


def score(
    transactions: pd.DataFrame,
    *,
    dataset: str,
    as_of: str | None = None,
    attributes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Score customers from their transactions with ``dataset``'s champions: one row per customer
    with the columns ``POST /score`` answers (churn and purchase probability, CLV, value at risk,
    value tier, segment, action, suppression), the same numbers.

    ``transactions``: the contract's columns ``customer_id``, ``timestamp``, ``amount`` (optional
    ``category``, ``order_id``, ...). ``attributes``: one row per customer indexed by ``customer_id``
    (suppression flags such as ``opted_out``, contact dates). ``as_of``: YYYY-MM-DD, default today, as
    the API. Nothing to score (no rows, no attributes) or a day written otherwise raises ValueError."""
    import pandas as pd

    from features.validate import parse_day
    from serving.scoring import load_champions, score_customers, utc_today
    from training.common import request_dataset

    day = parse_day(as_of, "as_of")
    if day is None:
        day = utc_today()
    if transactions.empty and (attributes is None or attributes.empty):
        raise ValueError("nothing to score: transactions has no rows and attributes names no customer")
    champions = load_champions(dataset)
    champions.require(("churn", "propensity", "clv"))
    config = champions.models["clv"].model.dataset_config
    checked = request_dataset(config, transactions)
    ids = list(pd.unique(transactions["customer_id"].astype(str)))
    if attributes is not None:
        known = set(ids)
        ids += [str(i) for i in attributes.index if str(i) not in known]
    return score_customers(champions, checked, day, ids, attributes=attributes)


def models() -> list[dict[str, Any]]:
    """Every registered model, as ``valuecast models --json`` prints it: dataset, family, champion
    version, the winning candidate, its test metric and the best baseline's, when it was trained."""
    from training import tracking

    return tracking.registered_models()


def segments(dataset: str) -> pd.DataFrame:
    """The segments customers of ``dataset`` fall into, in the order they are assigned: name, the
    rule (tier, risk and potential bands, lapsed), the recommended action; with the value-tier
    cut-offs of the dataset's current frozen segment file in ``DataFrame.attrs``."""
    import pandas as pd

    from serving.segments.rules import latest_frozen, load_frozen, load_rules

    path = latest_frozen(dataset)
    frozen = load_frozen(path) if path is not None else None
    rules = frozen.rules if frozen is not None else load_rules()
    table = pd.DataFrame(
        [
            {"segment": rule.name, "when": rule.when.model_dump(exclude_defaults=True), "action": rule.action}
            for rule in rules.segments
        ]
    )
    table.attrs = {
        "segment_version": frozen.version if frozen else None,
        "value_floors": frozen.value_floors if frozen else None,
        "customers_frozen": frozen.customers if frozen else None,
    }
    return table


def lookalike(
    data: str | Path | Dataset,
    seed: Iterable[str],
    *,
    size: int | None = None,
    as_of: str | None = None,
    method: Literal["pu_classifier", "nearest_neighbours"] = "pu_classifier",
    random_state: int = 0,
) -> pd.DataFrame:
    """The customers of ``data`` (a bundled name, your dataset YAML, or a loaded dataset) outside
    ``seed`` (customer ids) who resemble it most, as ``make lookalike`` ranks them: the top ``size``
    (default: the seed's size), seed and suppressed customers left out, one row each with ``rank``,
    ``customer_id``, ``lookalike_score`` and ``reasons``. No trained model is needed.

    ``DataFrame.attrs`` holds ``as_of`` and ``quality``: the ranking's recall of a hidden 20% of the
    seed among the top ``size``, against random (``recall_at_n``, ``random_recall_at_n``, ``lift``).
    A seed with unknown ids, fewer than the minimum or every customer raises with the fix."""
    import pandas as pd

    from features.validate import parse_day
    from serving.segments import lookalike as lookalikes

    day = parse_day(as_of, "as_of")
    dataset = load_dataset(data) if isinstance(data, str | Path) else data
    population = lookalikes.customer_population(dataset, day)
    ids = lookalikes.seed_from_ids(pd.Series(list(seed), dtype=object), population.ids, "seed")
    lookalikes.check_seed(ids, population, "seed")
    audience = lookalikes.choose_audience(population, ids, size, method, random_state=random_state)
    quality = lookalikes.measure_quality(population, ids, method, len(audience), random_state=random_state)
    audience = audience.reset_index(drop=True)
    audience.attrs = {"as_of": f"{population.as_of:%Y-%m-%d}", "quality": quality.as_dict()}
    return audience
