"""Seeded synthetic customers drawn from BG/NBD and Gamma-Gamma with known parameters.

Used by tests (parameter recovery, known effects) and benchmarks (millions of rows). The process is
the one of Fader, Hardie & Lee (2005), section 3:

- purchase rate lambda ~ Gamma(r, alpha) per week; while alive, purchases follow a Poisson process;
- dropout probability p ~ Beta(a, b); after each repeat purchase the customer dies with probability
  p (so the number of repeat purchases before death is geometric on 1, 2, ...);

and of Fader & Hardie (2013, note 025) for spend: each purchase is worth z ~ Gamma(p_spend, nu) with
nu ~ Gamma(q, gamma) per customer.

On top, attributes with known effects (for model behaviour tests): ``region`` multiplies the
purchase rate, ``plan`` multiplies spend, ``newsletter`` has no effect at all. Categories come from
a per-customer Dirichlet preference. Set ``effects=False`` for the pure BG/NBD + Gamma-Gamma process.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

REGION_RATE = {"north": 1.0, "south": 1.6, "west": 0.6}
PLAN_SPEND = {"basic": 1.0, "premium": 1.8}
CATEGORIES = ("books", "music", "games", "electronics", "garden", "toys", "kitchen", "fashion")


@dataclass(frozen=True)
class SyntheticSpec:
    customers: int = 10_000
    seed: int = 0
    start: str = "2022-01-01"
    days: int = 730
    acquisition_days: int | None = None  # customers arrive uniformly over this many first days (default: half)
    # BG/NBD, rates per week (the CDNOW estimates of Fader, Hardie & Lee 2005, table 1).
    r: float = 0.243
    alpha: float = 4.414
    a: float = 0.793
    b: float = 2.426
    # Gamma-Gamma (CDNOW estimates of Fader & Hardie 2013).
    p_spend: float = 6.25
    q: float = 3.74
    gamma: float = 15.44
    effects: bool = True
    refund_rate: float = 0.02
    categories: tuple[str, ...] = CATEGORIES
    category_concentration: float = 0.5
    region_rate: dict[str, float] = field(default_factory=lambda: dict(REGION_RATE))
    plan_spend: dict[str, float] = field(default_factory=lambda: dict(PLAN_SPEND))

    @classmethod
    def dense(cls, customers: int, seed: int = 0) -> SyntheticSpec:
        """About ten transactions per customer over two years: the benchmark's shape."""
        return cls(customers=customers, seed=seed, r=2.0, alpha=12.0, a=1.0, b=14.0)

    def with_(self, **changes: object) -> SyntheticSpec:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class Synthetic:
    transactions: pd.DataFrame
    customers: pd.DataFrame
    truth: pd.DataFrame  # per customer: lambda_per_week, p_dropout, nu, alive_at_end


def _customer_ids(n: int) -> np.ndarray:
    width = max(7, len(str(n)))
    return np.char.add("C", np.char.zfill(np.arange(1, n + 1).astype(str), width)).astype(object)


def _repeat_purchases(
    rng: np.random.Generator, spec: SyntheticSpec, birth_day: np.ndarray, lam_week: np.ndarray, p_drop: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each repeat purchase's customer and day, with every customer's number of repeats and whether
    they are alive at the end of the log."""
    # Repeat purchases: a Poisson process over the remaining window, cut at death. The number of
    # repeats before death is geometric on {1, 2, ...} with success probability p.
    n = len(birth_day)
    window_weeks = (spec.days - birth_day) / 7.0
    possible = rng.poisson(lam_week * window_weeks)
    before_death = rng.geometric(np.clip(p_drop, 1e-12, 1.0))
    repeats = np.minimum(possible, before_death)
    alive_at_end = possible < before_death

    # Times of the first `repeats` of `possible` uniform arrival times = order statistics.
    owner = np.repeat(np.arange(n), possible)
    u = rng.random(owner.size)
    order = np.lexsort((u, owner))
    owner, u = owner[order], u[order]
    starts = np.r_[0, np.cumsum(possible)[:-1]]
    rank = np.arange(owner.size) - np.repeat(starts, possible)
    kept = rank < repeats[owner]
    owner, u = owner[kept], u[kept]
    repeat_day = birth_day[owner] + u * window_weeks[owner] * 7.0
    return owner, repeat_day, repeats, alive_at_end


def _draw_categories(rng: np.random.Generator, spec: SyntheticSpec, customer: np.ndarray, n: int) -> np.ndarray:
    """Each purchase's category index, from a per-customer Dirichlet preference."""
    preference = rng.dirichlet(np.full(len(spec.categories), spec.category_concentration), size=n)
    cumulative = np.cumsum(preference, axis=1)
    draw = rng.random(customer.size)
    return np.minimum((draw[:, None] > cumulative[customer]).sum(axis=1), len(spec.categories) - 1)


def _add_refunds(
    rng: np.random.Generator,
    spec: SyntheticSpec,
    customer: np.ndarray,
    day: np.ndarray,
    amount: np.ndarray,
    category_index: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The purchases followed by their refunds: a few are refunded 1-14 days later (when that is
    still inside the log)."""
    refunded = rng.random(customer.size) < spec.refund_rate
    refund_day = day[refunded] + rng.uniform(1, 14, size=int(refunded.sum()))
    inside = refund_day < spec.days
    return (
        np.r_[customer, customer[refunded][inside]],
        np.r_[day, refund_day[inside]],
        np.r_[amount, -amount[refunded][inside]],
        np.r_[category_index, category_index[refunded][inside]],
    )


def _transaction_frame(
    spec: SyntheticSpec,
    ids: np.ndarray,
    customer: np.ndarray,
    day: np.ndarray,
    amount: np.ndarray,
    category_index: np.ndarray,
) -> pd.DataFrame:
    """The transaction log in time order, days since ``spec.start`` turned into timestamps."""
    seconds = np.floor(day * 86_400).astype(np.int64)
    transactions = pd.DataFrame(
        {
            "customer_id": pd.array(ids[customer], dtype="string"),
            "timestamp": pd.Timestamp(spec.start) + pd.to_timedelta(seconds, unit="s"),
            "amount": np.round(amount, 2),
            "category": pd.Categorical.from_codes(category_index, categories=list(spec.categories)),
        }
    )
    transactions = transactions.sort_values(["timestamp", "customer_id"], kind="stable", ignore_index=True)
    transactions["category"] = transactions["category"].astype("string")
    return transactions


def generate_transactions(spec: SyntheticSpec) -> Synthetic:
    rng = np.random.default_rng(spec.seed)
    n = spec.customers
    acquisition = spec.acquisition_days if spec.acquisition_days is not None else spec.days // 2
    birth_day = rng.uniform(0, acquisition, size=n)

    regions = np.array(list(spec.region_rate))
    plans = np.array(list(spec.plan_spend))
    region = rng.choice(regions, size=n)
    plan = rng.choice(plans, size=n, p=[0.7, 0.3] if len(plans) == 2 else None)
    newsletter = rng.integers(0, 2, size=n)

    lam_week = rng.gamma(spec.r, 1.0 / spec.alpha, size=n)
    if spec.effects:
        lam_week = lam_week * np.vectorize(spec.region_rate.get)(region)
    p_drop = rng.beta(spec.a, spec.b, size=n)
    nu = rng.gamma(spec.q, 1.0 / spec.gamma, size=n)
    spend_scale = np.vectorize(spec.plan_spend.get)(plan) if spec.effects else np.ones(n)

    owner, repeat_day, repeats, alive_at_end = _repeat_purchases(rng, spec, birth_day, lam_week, p_drop)
    customer = np.r_[np.arange(n), owner]
    day = np.r_[birth_day, repeat_day]
    amount = rng.gamma(spec.p_spend, 1.0 / nu[customer]) * spend_scale[customer]
    category_index = _draw_categories(rng, spec, customer, n)
    customer, day, amount, category_index = _add_refunds(rng, spec, customer, day, amount, category_index)

    start = pd.Timestamp(spec.start)
    ids = _customer_ids(n)
    transactions = _transaction_frame(spec, ids, customer, day, amount, category_index)
    customers = pd.DataFrame(
        {
            "customer_id": pd.array(ids, dtype="string"),
            "region": region,
            "plan": plan,
            "newsletter": newsletter,
            "signup_date": start + pd.to_timedelta(np.floor(birth_day * 86_400).astype(np.int64), unit="s"),
        }
    )
    truth = pd.DataFrame(
        {
            "customer_id": pd.array(ids, dtype="string"),
            "lambda_per_week": lam_week,
            "p_dropout": p_drop,
            "nu": nu,
            "repeat_purchases": repeats,
            "alive_at_end": alive_at_end,
        }
    )
    return Synthetic(transactions, customers, truth)
