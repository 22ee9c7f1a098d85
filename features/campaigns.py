"""Campaign logs: the checks an uplift model needs before it may learn anything, and outcomes from
the transactions that followed a send.

A campaign log says which arm each customer was randomised to (the control arm included), when,
and optionally what followed (visit, conversion, spend). Uplift estimates are only as good as the
randomisation behind them, so before training:

- every configured arm and the control arm must be present, each with at least ``min_per_arm`` rows;
- each pre-treatment attribute must be balanced between each arm and the control: a standardized
  mean difference (Austin 2009, "Balance diagnostics...", Stat. Med. 28:3083; 0.1 is his rule of
  thumb) above ``max_imbalance_smd`` that is also significant (Welch's t-test for numbers, a
  chi-square test of the arm-by-level table for categories, p < 0.01) is reported, naming the
  attribute: the arms are not comparable, and uplift estimates may be biased.

Pure functions: frames in, frames and problems out.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from features.attributes import _as_number
from features.config import CAMPAIGN_COLUMNS, CampaignTableConfig
from features.validate import FIRST_ROWS_SHOWN, ROW, Checked, DataError, Problem

# A difference this unlikely under random assignment is not noise (with the SMD above its bound).
IMBALANCE_P_VALUE = 0.01


def attribute_columns(frame: pd.DataFrame) -> list[str]:
    """The pre-treatment attributes of a checked campaign log: every column but the contract's
    (id, arm, send date, outcomes) and the row number. Outcomes are never attributes."""
    return [c for c in frame.columns if c not in CAMPAIGN_COLUMNS and c != ROW]


def treatment_arms(frame: pd.DataFrame, table: CampaignTableConfig) -> list[str]:
    """The treatment arms to model: the configured ones, or every arm in the log but the control
    (in order of appearance)."""
    if table.arms is not None:
        return list(table.arms)
    present = frame["arm"].dropna().astype(str).unique().tolist()
    return [a for a in present if a != table.control_arm]


def check_arms(frame: pd.DataFrame, table: CampaignTableConfig, source: str, config_file: str) -> list[Problem]:
    """Stop when the control or a configured arm is absent or has fewer than ``min_per_arm`` rows;
    report rows of arms that are not used."""
    counts = frame["arm"].astype(str).value_counts()
    present = counts.index.tolist()
    fix_where = f"in {config_file}" if config_file else "in the dataset config"
    if table.control_arm not in counts.index:
        raise DataError(
            f"{source}: column arm ('{table.columns['arm']}'): the control arm '{table.control_arm}' has no rows; "
            f"arms in the file: {present}. Fix campaigns.control_arm {fix_where}"
        )
    arms = treatment_arms(frame, table)
    absent = [a for a in arms if a not in counts.index]
    if absent or not arms:
        raise DataError(
            f"{source}: column arm ('{table.columns['arm']}'): treatment arm(s) {absent or '(none)'} have no rows; "
            f"arms in the file: {present}. Fix campaigns.arms {fix_where}"
        )
    small = {a: int(counts[a]) for a in [table.control_arm, *arms] if counts[a] < table.min_per_arm}
    if small:
        raise DataError(
            f"{source}: column arm ('{table.columns['arm']}'): arm(s) {small} have fewer than min_per_arm "
            f"({table.min_per_arm}) rows: too few to estimate an effect. Add rows, leave the arm out "
            f"(campaigns.arms) or lower campaigns.min_per_arm {fix_where}"
        )
    unused = ~frame["arm"].astype(str).isin([table.control_arm, *arms]).to_numpy()
    if not unused.any():
        return []
    rows = tuple(int(r) for r in frame[ROW].to_numpy()[np.flatnonzero(unused)[:FIRST_ROWS_SHOWN]])
    return [
        Problem(
            source,
            table.columns["arm"],
            f"belong to arms not in campaigns.arms ({sorted(set(frame['arm'][unused].astype(str)))})",
            int(unused.sum()),
            rows,
            "list them under campaigns.arms to model them",
            outcome="not used",
        )
    ]


def _standardized_difference(treated: np.ndarray, control: np.ndarray) -> float:
    """(mean_t - mean_c) / sqrt((var_t + var_c) / 2): Austin (2009), eq. 1."""
    pooled = np.sqrt((np.var(treated, ddof=1) + np.var(control, ddof=1)) / 2.0)
    if not np.isfinite(pooled) or pooled == 0:
        return 0.0
    return float((np.mean(treated) - np.mean(control)) / pooled)


def _numeric_balance(values: np.ndarray, treated: np.ndarray, control: np.ndarray) -> tuple[float, float]:
    """(SMD, Welch's t-test p-value) of a numeric attribute between two groups."""
    from scipy.stats import ttest_ind

    a, b = values[treated], values[control]
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return 0.0, 1.0
    p_value = float(ttest_ind(a, b, equal_var=False).pvalue)
    return _standardized_difference(a, b), p_value if np.isfinite(p_value) else 1.0


def _categorical_balance(levels: np.ndarray, treated: np.ndarray, control: np.ndarray) -> tuple[float, float]:
    """(the largest SMD of a level's indicator, chi-square p-value of the group-by-level table)."""
    from scipy.stats import chi2_contingency

    codes, _ = pd.factorize(levels)
    counts = np.stack([np.bincount(codes[group], minlength=codes.max() + 1) for group in (treated, control)])
    counts = counts[:, counts.sum(axis=0) > 0]
    if counts.shape[1] < 2:
        return 0.0, 1.0
    share = counts / counts.sum(axis=1, keepdims=True)
    spread = np.sqrt((share[0] * (1 - share[0]) + share[1] * (1 - share[1])) / 2.0)
    smd = np.divide(share[0] - share[1], spread, out=np.zeros_like(spread), where=spread > 0)
    return float(smd[np.argmax(np.abs(smd))]), float(chi2_contingency(counts).pvalue)


def randomisation_check(
    frame: pd.DataFrame, control_arm: str, arms: list[str], attributes: list[str], max_smd: float = 0.1
) -> pd.DataFrame:
    """Balance of each pre-treatment attribute between each arm and the control: one row per (arm,
    attribute) with the standardized mean difference (for a category, of the level that differs
    most), the test (Welch's t for numbers, chi-square for categories) and its p-value, and whether
    it is imbalanced (|SMD| > ``max_smd`` and p < 0.01)."""
    arm = frame["arm"].astype(str).to_numpy()
    control = arm == control_arm
    rows = []
    for column in attributes:
        numbers = _as_number(frame[column])
        values = (
            numbers.to_numpy(dtype=float, na_value=np.nan)
            if numbers is not None
            else frame[column].astype("string").fillna("(missing)").to_numpy(dtype=object)
        )
        for name in arms:
            treated = arm == name
            if numbers is not None:
                (smd, p_value), kind, test = _numeric_balance(values, treated, control), "numeric", "welch_t"
            else:
                (smd, p_value), kind, test = _categorical_balance(values, treated, control), "categorical", "chi_square"
            imbalanced = abs(smd) > max_smd and p_value < IMBALANCE_P_VALUE
            rows.append([name, column, kind, smd, test, p_value, imbalanced])
    columns = ["arm", "attribute", "kind", "smd", "test", "p_value", "imbalanced"]
    return pd.DataFrame(rows, columns=columns).astype({"imbalanced": bool})


def imbalance_problems(balance: pd.DataFrame, frame: pd.DataFrame, control_arm: str, source: str) -> list[Problem]:
    """One warning per imbalanced (arm, attribute), naming both and the size of the difference."""
    problems = []
    for row in balance.loc[balance["imbalanced"]].itertuples():
        in_arm = np.flatnonzero(frame["arm"].astype(str).to_numpy() == row.arm)
        problems.append(
            Problem(
                source,
                str(row.attribute),
                f"of arm '{row.arm}' differ from the control '{control_arm}' in '{row.attribute}' "
                f"(standardized mean difference {row.smd:+.2f}, {row.test} p={row.p_value:.1e}): the arms are "
                "not comparable, as they would be under random assignment",
                len(in_arm),
                tuple(int(r) for r in frame[ROW].to_numpy()[in_arm[:FIRST_ROWS_SHOWN]]),
                "check how customers were assigned to the arms: uplift estimates assume a randomised send",
                outcome="kept",
            )
        )
    return problems


def check_campaigns(checked: Checked, table: CampaignTableConfig, source: str, config_file: str = "") -> Checked:
    """The checks of a campaign log (arms, control, rows per arm, randomisation) added to its problems;
    stops (:class:`DataError`) when the log cannot support an uplift model at all."""
    frame = checked.frame
    problems = check_arms(frame, table, source, config_file)
    arms = treatment_arms(frame, table)
    balance = randomisation_check(frame, table.control_arm, arms, attribute_columns(frame), table.max_imbalance_smd)
    problems += imbalance_problems(balance, frame, table.control_arm, source)
    return replace(checked, problems=[*checked.problems, *problems])


def outcomes_from_transactions(campaigns: pd.DataFrame, transactions: pd.DataFrame, window_days: int) -> pd.DataFrame:
    """The campaign log with ``conversion`` (any purchase) and ``spend`` (net amount) in the
    ``window_days`` from each row's ``sent_at`` (from the send on, the day of the send included:
    [sent_at, sent_at + window)). For a shop's own send log without outcome columns; ``visit``
    cannot be known from transactions."""
    if "sent_at" not in campaigns.columns:
        raise DataError("campaign outcomes from transactions need sent_at: map it under campaigns.columns")
    sends = campaigns[["customer_id", "sent_at"]].reset_index(drop=True)
    sends = sends.assign(customer_id=sends["customer_id"].astype(str), _send=np.arange(len(sends)))
    tx = pd.DataFrame(
        {
            "customer_id": transactions["customer_id"].astype(str).to_numpy(),
            "timestamp": transactions["timestamp"].to_numpy(),
            "amount": transactions["amount"].to_numpy(dtype=float),
        }
    )
    joined = sends.merge(tx, on="customer_id", how="inner")
    start = joined["sent_at"]
    inside = (joined["timestamp"] >= start) & (joined["timestamp"] < start + pd.Timedelta(days=window_days))
    spent = joined.loc[inside].groupby("_send")["amount"].agg(["sum", "size"])
    spend = spent["sum"].reindex(sends["_send"], fill_value=0.0).to_numpy(dtype=float)
    bought = spent["size"].reindex(sends["_send"], fill_value=0).to_numpy() > 0
    return campaigns.reset_index(drop=True).assign(conversion=bought.astype(float), spend=spend)
