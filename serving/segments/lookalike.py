"""Look-alike audiences: the customers outside a seed, ranked by how much they resemble it.

``make lookalike DATA=... SEED=<ids.csv | segment> [SIZE=N] OUT=<dir>`` runs :func:`run`: build every
customer's features as of the cut-off (the same point-in-time features the models read), rank the
customers outside the seed, leave out the suppressed ones and the seed itself, and write the top
SIZE with their reasons to ``OUT/lookalikes.csv`` through :func:`serving.batch.atomic_folder` (OUT is
replaced only when every file is written).

Method: a positive-unlabelled classifier (Elkan & Noto, 2008). The seed is the labelled positives
and everyone else is unlabelled, a mixture of customers like the seed and customers unlike it. A
logistic regression on the transformed features (signed log1p, standardised) learns P(in seed | x),
calibrated (Platt's sigmoid on out-of-fold scores); under "the seed is a random sample of the
customers of its kind", P(of the seed's kind | x) = P(in seed | x) / c, with c the mean calibrated
probability of held-out seed members (Elkan & Noto, eq. 2 and estimator e1). Every customer is
scored by models that did not see them (5-fold cross-fitting), so that an unlabelled customer is not
pushed towards 0 by having been a negative of its own model. Reasons are the features adding most
to the log-odds of the logistic regression fitted on everyone, against the average customer.
Baseline: nearest neighbours on the same transformed features (the share of seed members among a
customer's 50 nearest customers), whose reasons are the closest seed members.

Quality, measured on every run: a random 20% of the seed is hidden, the rest is the seed, and the
recall of the hidden members among the top N of the ranking is compared with random (N / customers
ranked), for both methods.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.config import ConfigError
from features.io import Dataset
from features.pipeline import build_customer_features, default_as_of
from serving.segments.rules import SegmentRules, assign, freeze, load_rules

Method = Literal["pu_classifier", "nearest_neighbours"]
METHODS: tuple[Method, ...] = ("pu_classifier", "nearest_neighbours")
ID_COLUMN = "customer_id"
MIN_SEED = 10  # fewer members: a 20% hold-out of at least 2 and a classifier are meaningless
HIDDEN_SHARE = 0.2
TOP_REASONS = 3
NEIGHBOURS = 50
FOLDS = 5
MAX_SEED_FILE_BYTES = 200 * 2**20
TIER_SEED = re.compile(r"^tier:([ABCD])$")
SEGMENT_SEED = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # as serving.segments.rules.SEGMENT_NAME
OUTPUT_FILE = "lookalikes.csv"


class LookalikeError(ConfigError):
    """A seed, size or scores folder that cannot be used; the message names it and the fix."""


@dataclass
class Population:
    """Every customer as of the cut-off: model inputs, and the facts used to exclude and to seed."""

    as_of: pd.Timestamp
    ids: pd.Index  # customer_id, the row order of ``x``
    x: pd.DataFrame  # numeric features, one row per customer
    sources: list[str]  # per column of ``x``, the column a reason names (one-hot columns: the attribute)
    facts: pd.DataFrame  # indexed like ``ids``: total_spend, past_value_tier, suppressed, suppression_reason


@dataclass
class Quality:
    """Recall of the hidden seed members among the top N, against random."""

    method: str
    top_n: int
    hidden: int
    ranked: int
    found: int

    @property
    def recall(self) -> float:
        return self.found / self.hidden if self.hidden else float("nan")

    @property
    def random_recall(self) -> float:
        return min(self.top_n, self.ranked) / self.ranked if self.ranked else float("nan")

    @property
    def lift(self) -> float:
        return self.recall / self.random_recall if self.random_recall else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "top_n": self.top_n,
            "hidden": self.hidden,
            "ranked": self.ranked,
            "found": self.found,
            "recall_at_n": self.recall,
            "random_recall_at_n": self.random_recall,
            "lift": self.lift,
        }


@dataclass
class LookalikeResult:
    out: Path
    audience: pd.DataFrame
    summary: dict[str, Any]
    quality: list[Quality] = field(default_factory=list)


# --- pure steps ---------------------------------------------------------------------------------


def customer_population(
    dataset: Dataset, as_of: pd.Timestamp | None = None, rules: SegmentRules | None = None
) -> Population:
    """Features of every customer with history before ``as_of``, with their suppression under the
    segment rules and their past-value tier (tier of spend so far, the rules' cut-offs frozen on this
    population): what a seed and the exclusions are read from, without any trained model."""
    from serving.batch import customer_table
    from serving.scoring import SUPPRESSION_COLUMNS, days_since_last, suppression_facts
    from training.common import feature_columns

    if dataset.transactions is None:
        raise LookalikeError(f"dataset '{dataset.config.name}' has no transaction log to describe customers with")
    as_of = pd.Timestamp(as_of).normalize() if as_of is not None else default_as_of(dataset)
    built = build_customer_features(dataset, as_of)
    frame = built.frame
    ids = pd.Index(frame[ID_COLUMN].astype(str), name=ID_COLUMN)
    columns = feature_columns(frame)
    x = frame[columns].astype("float64").reset_index(drop=True)
    encoded = dict(zip(built.encoder.feature_names, built.encoder.source_columns, strict=True)) if built.encoder else {}
    sources = [encoded.get(c, c) for c in columns]

    tx = dataset.transactions.frame
    facts = pd.DataFrame(index=ids)
    facts["total_spend"] = x["total_spend"].to_numpy()
    facts["days_since_last_order"] = x["days_since_last_order"].to_numpy()
    refunds = tx.loc[(tx["timestamp"] < as_of).to_numpy() & (tx["amount"] < 0).to_numpy()]
    facts["days_since_last_refund"] = days_since_last(
        ids.get_indexer(refunds[ID_COLUMN].astype(str)),
        refunds["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64),
        len(ids),
        as_of,
    )
    attributes = customer_table(dataset)
    if attributes is None:
        flags = [c for c in SUPPRESSION_COLUMNS if c in tx.columns]
        attributes = tx.groupby(tx[ID_COLUMN].astype(str))[flags].last() if flags else None
    if attributes is not None:
        aligned = {c: attributes[c].reindex(ids) for c in SUPPRESSION_COLUMNS if c in attributes.columns}
        for name, values in suppression_facts(aligned, as_of).items():
            facts[name] = values
    # The segment rules decide suppression; with spend so far in place of CLV their value tier is the
    # past-value tier, so no champion model is needed (serving.segments.rules.assign reads only these facts).
    rules = rules or load_rules()
    by_spend = facts.assign(clv=facts["total_spend"]).reset_index(drop=True)
    frozen = freeze(by_spend, rules, f"{dataset.config.name} spend so far as of {as_of:%Y-%m-%d}")
    segments = assign(by_spend, frozen)
    facts["past_value_tier"] = segments["value_tier"].to_numpy()
    facts["suppressed"] = segments["suppressed"].to_numpy(dtype=bool)
    facts["suppression_reason"] = segments["suppression_reason"].to_numpy()
    return Population(as_of, ids, x, sources, facts)


def seed_from_ids(ids: pd.Series, known: pd.Index, source: str) -> list[str]:
    """The seed's ids, checked: every one must be a customer with history before the cut-off."""
    wanted = pd.unique(ids.dropna().astype(str).str.strip())
    wanted = [i for i in wanted if i]
    if not wanted:
        raise LookalikeError(f"{source}: no customer ids in it; put one id per row in the column '{ID_COLUMN}'")
    unknown = _unknown(wanted, known)
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5])
        raise LookalikeError(
            f"{source}: {len(unknown):,} of {len(wanted):,} ids are not customers of the data before the cut-off "
            f"({shown}{', ...' if len(unknown) > 5 else ''}); remove them, or check DATA and AS_OF"
        )
    return sorted(wanted)


def _unknown(wanted: list[str], known: pd.Index) -> list[str]:
    found = known.get_indexer(pd.Index(wanted, dtype=object)) >= 0
    return [i for i, ok in zip(wanted, found, strict=True) if not ok]


def seed_from_scores(scores: pd.DataFrame, name: str, source: str) -> list[str]:
    """The customers of a segment (``win_back``) or a value tier (``tier:A``) of a scored output."""
    tier = TIER_SEED.fullmatch(name)
    column, value = ("value_tier", tier.group(1)) if tier else ("segment", name)
    if column not in scores.columns or ID_COLUMN not in scores.columns:
        raise LookalikeError(f"{source}: no '{column}' column; it is not make score's output: run make score again")
    members = scores.loc[scores[column].astype(str) == value, ID_COLUMN].astype(str)
    if members.empty:
        choices = sorted(scores[column].dropna().astype(str).unique())
        shown = ", ".join(choices) if not tier else ", ".join(f"tier:{c}" for c in choices)
        raise LookalikeError(
            f"SEED={name}: no customer of {source} is in {'tier' if tier else 'segment'} {value!r}; "
            f"there are: {shown} (or give a CSV of ids with a '{ID_COLUMN}' column)"
        )
    return sorted(members.unique())


def check_seed(seed: list[str], population: Population, source: str) -> None:
    if len(seed) < MIN_SEED:
        raise LookalikeError(
            f"{source}: the seed has {len(seed)} customers; give at least {MIN_SEED} to learn what they share"
        )
    if len(seed) >= len(population.ids):
        raise LookalikeError(f"{source}: the seed holds every customer of the data; nobody is left to rank")


def audience_size(size: int | None, seed: list[str], candidates: int) -> int:
    """SIZE, or the seed's size by default, checked against the customers that can be chosen."""
    if candidates == 0:
        raise LookalikeError("every customer outside the seed is suppressed: there is nobody to choose from")
    if size is None:
        return min(len(seed), candidates)
    if not 1 <= size <= candidates:
        raise LookalikeError(
            f"SIZE={size} is out of range: choose 1 to {candidates:,} (the customers outside the seed "
            "who are not suppressed)"
        )
    return size


def _transformer() -> Any:
    """Signed log1p (money and counts are heavy-tailed), median imputation of the gaps (a customer with
    one order has no gap between orders), standardisation: one scale for distances and coefficients."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return make_pipeline(
        FunctionTransformer(lambda v: np.sign(v) * np.log1p(np.abs(v)), feature_names_out="one-to-one"),
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
    )


def _classifier(random_state: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(_transformer(), LogisticRegression(C=1.0, max_iter=2000, random_state=random_state))


def _pu_scores(x: pd.DataFrame, in_seed: np.ndarray, random_state: int) -> tuple[np.ndarray, float]:
    """Calibrated P(in seed | x) of every row from models that did not see the row (cross-fitting),
    and c = the mean of it over the seed (Elkan & Noto's e1).

    Calibration is Platt's sigmoid fitted on the out-of-fold log-odds: the scores it maps were made
    on rows their model did not see, as ``CalibratedClassifierCV`` does inside, without fitting the
    classifier 4 times per fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=random_state)
    labels = in_seed.astype(int)
    log_odds = cross_val_predict(
        _classifier(random_state), x.to_numpy(), labels, cv=folds, method="decision_function"
    ).reshape(-1, 1)
    sigmoid = LogisticRegression(C=1e6).fit(log_odds, labels)
    g = sigmoid.predict_proba(log_odds)[:, 1]
    return g, float(g[in_seed].mean())


def _pu_reasons(
    x: pd.DataFrame, in_seed: np.ndarray, rows: np.ndarray, sources: list[str], random_state: int
) -> list[str]:
    """Per row of ``rows``: the inputs that raise its log-odds of being like the seed most, against
    the average customer (coefficient x standardised value), from the model fitted on everyone."""
    from training.common import reasons

    model = _classifier(random_state).fit(x.to_numpy(), in_seed.astype(int))
    z = model[:-1].transform(x.to_numpy()[rows])
    contributions = z * model[-1].coef_[0]
    up, _ = reasons(contributions, sources, TOP_REASONS)
    return up


def _neighbour_scores(
    x: pd.DataFrame, in_seed: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``rows``: the share of seed members among its ``NEIGHBOURS`` nearest customers (itself
    left out), the mean distance to its nearest seed members (to break ties) and those members.

    The share, not the distance to the seed alone: a customer in a crowded part of the space (CDNOW's
    thousands of one-order customers) is close to some seed member without being like the seed, and
    ranking by distance alone found none of the hidden members on CDNOW (docs in README)."""
    from sklearn.neighbors import NearestNeighbors

    z = _transformer().fit_transform(x.to_numpy())
    everyone = NearestNeighbors(n_neighbors=min(NEIGHBOURS + 1, len(z))).fit(z)
    _, nearest = everyone.kneighbors(z[rows])
    not_self = nearest != rows[:, None]
    share = ((in_seed[nearest] & not_self).sum(axis=1) / np.maximum(not_self.sum(axis=1), 1)).astype(float)
    seed_finder = NearestNeighbors(n_neighbors=min(TOP_REASONS, int(in_seed.sum()))).fit(z[in_seed])
    distance, nearest_seed = seed_finder.kneighbors(z[rows])
    return share, distance.mean(axis=1), nearest_seed


def rank_customers(
    population: Population,
    seed: list[str],
    method: Method = "pu_classifier",
    *,
    random_state: int = 0,
    exclude: np.ndarray | None = None,
    with_reasons: bool = True,
) -> pd.DataFrame:
    """Every customer outside ``seed`` (and outside ``exclude``, a mask over the population), most
    like the seed first: ``customer_id``, ``lookalike_score`` and ``reasons``."""

    in_seed = population.ids.isin(seed)
    keep = ~in_seed if exclude is None else ~in_seed & ~exclude
    rows = np.flatnonzero(keep)
    if method == "pu_classifier":
        g, c = _pu_scores(population.x, in_seed, random_state)
        score = np.clip(g[rows] / c, 0.0, 1.0) if c > 0 else g[rows]
        order = np.lexsort((population.ids[rows].to_numpy(), -g[rows]))  # ties: by id, for the same file twice
        text = (
            _pu_reasons(population.x, in_seed, rows[order], population.sources, random_state) if with_reasons else None
        )
    elif method == "nearest_neighbours":
        share, distance, nearest_seed = _neighbour_scores(population.x, in_seed, rows)
        score = share
        order = np.lexsort((population.ids[rows].to_numpy(), distance, -share))  # ties: the closer to the seed
        seed_ids = population.ids[in_seed].to_numpy()
        text = (
            ["nearest seed members: " + ", ".join(seed_ids[n] for n in nearest_seed[i, :TOP_REASONS]) for i in order]
            if with_reasons
            else None
        )
    else:
        raise LookalikeError(f"METHOD={method!r}: choose one of {', '.join(METHODS)}")
    ranked = pd.DataFrame(
        {ID_COLUMN: population.ids[rows].to_numpy()[order], "lookalike_score": np.asarray(score)[order]}
    )
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    if text is not None:
        ranked["reasons"] = text
    return ranked


def measure_quality(
    population: Population,
    seed: list[str],
    method: Method,
    top_n: int,
    *,
    random_state: int = 0,
    hidden_share: float = HIDDEN_SHARE,
) -> Quality:
    """Hide a random ``hidden_share`` of the seed, rank everyone outside the rest, and count the hidden
    members among the top ``top_n``."""
    rng = np.random.default_rng(random_state)
    members = np.array(sorted(seed), dtype=object)
    hidden_count = max(1, round(hidden_share * len(members)))
    hidden = set(rng.choice(members, size=hidden_count, replace=False).tolist())
    kept = [m for m in members if m not in hidden]
    ranked = rank_customers(population, kept, method, random_state=random_state, with_reasons=False)
    found = int(ranked[ID_COLUMN].head(top_n).isin(hidden).sum())
    return Quality(method, top_n, hidden_count, len(ranked), found)


def choose_audience(
    population: Population, seed: list[str], size: int | None, method: Method, *, random_state: int = 0
) -> pd.DataFrame:
    """The top ``size`` (default: the seed's size) customers outside ``seed`` who are not suppressed,
    most like the seed first: ``rank``, ``customer_id``, ``lookalike_score`` and ``reasons``."""
    suppressed = population.facts["suppressed"].to_numpy(dtype=bool)
    in_seed = population.ids.isin(seed)
    size = audience_size(size, seed, int((~in_seed & ~suppressed).sum()))
    ranked = rank_customers(population, seed, method, random_state=random_state, exclude=suppressed)
    return ranked.head(size).copy()


# --- edges: reading the seed, writing OUT ---------------------------------------------------------


def read_seed_file(path: Path) -> pd.Series:
    """The ``customer_id`` column of a CSV of ids (other columns are ignored)."""
    if not path.is_file():
        raise LookalikeError(f"SEED={path}: no such file; give a CSV with a '{ID_COLUMN}' column, or a segment name")
    if path.stat().st_size > MAX_SEED_FILE_BYTES:
        raise LookalikeError(f"SEED={path}: larger than {MAX_SEED_FILE_BYTES // 2**20} MiB; keep only the id column")
    try:
        header = pd.read_csv(path, nrows=0, dtype=str)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LookalikeError(f"SEED={path}: not a readable CSV ({exc}); save it as UTF-8 CSV") from exc
    columns = [str(c) for c in header.columns]
    if ID_COLUMN not in columns:
        raise LookalikeError(
            f"SEED={path}: no '{ID_COLUMN}' column (columns: {', '.join(columns) or 'none'}); "
            f"name the column of ids '{ID_COLUMN}'"
        )
    try:
        return pd.read_csv(path, usecols=[ID_COLUMN], dtype=str, keep_default_na=False)[ID_COLUMN]
    except (ValueError, UnicodeDecodeError) as exc:
        raise LookalikeError(f"SEED={path}: not a readable CSV ({exc}); save it as UTF-8 CSV") from exc


def read_scores(scores_dir: Path | None, dataset: str, seed: str) -> pd.DataFrame:
    """``scores.parquet`` of a ``make score`` output of this dataset (for a segment-name seed)."""
    from serving.batch import MARKER

    first = f"run make score DATA={dataset} OUT=out/scores first, then add SCORES=out/scores"
    if scores_dir is None:
        raise LookalikeError(f"SEED={seed} is a segment name, which needs the scored segments of '{dataset}': {first}")
    path = scores_dir / "scores.parquet"
    if not path.is_file() or not (scores_dir / MARKER).is_file():
        raise LookalikeError(f"SCORES={scores_dir}: no scored output of make score there (no {path.name}): {first}")
    marker = json.loads((scores_dir / MARKER).read_text())
    if marker.get("dataset") != dataset:
        raise LookalikeError(
            f"SCORES={scores_dir} holds the scores of dataset '{marker.get('dataset')}', not '{dataset}': {first}"
        )
    scores = pd.read_parquet(path)
    scores.attrs["as_of"] = marker.get("as_of")
    return scores


def read_seed(seed: str, dataset: str, scores_dir: Path | None) -> tuple[pd.Series, str, str | None]:
    """The seed's ids as given, a description and, for a segment, the as-of date it was scored at;
    read before any feature is built (a wrong file fails at once): a CSV file of ids, or a segment /
    ``tier:X`` name of a scored output."""
    if seed.lower().endswith(".csv") or "/" in seed or Path(seed).is_file():
        return read_seed_file(Path(seed)), f"ids from {Path(seed).name}", None
    if TIER_SEED.fullmatch(seed) or SEGMENT_SEED.fullmatch(seed):
        scores = read_scores(scores_dir, dataset, seed)
        members = pd.Series(seed_from_scores(scores, seed, f"SCORES={scores_dir}"))
        return members, f"segment {seed}", scores.attrs.get("as_of")
    raise LookalikeError(
        f"SEED={seed!r} is neither a CSV file of ids nor a segment name (lower-case letters, digits, "
        "'_' or '-', e.g. maintain; or tier:A): give one of those"
    )


def run(
    dataset: Dataset,
    seed: str,
    out: Path,
    *,
    size: int | None = None,
    as_of: pd.Timestamp | None = None,
    scores_dir: Path | None = None,
    method: Method = "pu_classifier",
    random_state: int = 0,
    force: bool = False,
) -> LookalikeResult:
    """Rank the customers outside the seed, measure the ranking on a hidden 20% of the seed (both
    methods), and write the top ``size`` who are not suppressed into ``out``."""
    from serving.batch import CONTACT_PATTERN, atomic_folder, customer_table, write_csv

    if method not in METHODS:
        raise LookalikeError(f"METHOD={method!r}: choose one of {', '.join(METHODS)}")
    given, source, scored_as_of = read_seed(seed, dataset.config.name, scores_dir)
    if as_of is None and scored_as_of:  # the segment's customers are described as of when they were scored
        as_of = pd.Timestamp(scored_as_of)
    population = customer_population(dataset, as_of)
    ids = seed_from_ids(given, population.ids, f"SEED={seed}")
    check_seed(ids, population, f"SEED={seed}")
    suppressed = population.facts["suppressed"].to_numpy(dtype=bool)
    in_seed = population.ids.isin(ids)
    audience = choose_audience(population, ids, size, method, random_state=random_state)
    quality = [measure_quality(population, ids, m, len(audience), random_state=random_state) for m in METHODS]
    audience["method"] = method
    audience["as_of"] = f"{population.as_of:%Y-%m-%d}"
    customers = customer_table(dataset)
    contact = [c for c in (customers.columns if customers is not None else []) if CONTACT_PATTERN.search(str(c))]
    if contact and customers is not None:
        audience = audience.join(customers[contact], on=ID_COLUMN)
        audience = audience[[ID_COLUMN, *contact, *[c for c in audience.columns if c not in (ID_COLUMN, *contact)]]]
    summary: dict[str, Any] = {
        "dataset": dataset.config.name,
        "as_of": f"{population.as_of:%Y-%m-%d}",
        "seed": source,
        "seed_size": len(ids),
        "method": method,
        "random_state": random_state,
        "customers": len(population.ids),
        "suppressed_excluded": int((~in_seed & suppressed).sum()),
        "candidates": int((~in_seed & ~suppressed).sum()),
        "audience": len(audience),
        "quality": [q.as_dict() for q in quality],
    }
    marker = {"dataset": dataset.config.name, "as_of": summary["as_of"], "kind": "lookalike"}
    with atomic_folder(out, marker, force=force) as work:
        write_csv(audience, work / OUTPUT_FILE)
        (work / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return LookalikeResult(out, audience, summary, quality)
