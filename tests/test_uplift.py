"""Uplift: the campaigns contract, the learners on a planted effect, the IPW policy estimator, the
decisions, and the Hillstrom protocol of issue [3/5] end to end.

Figures asserted here come from outside the code: a planted effect, potential outcomes known by
construction, hand computations, scikit-uplift's own curve, and the issue's reference figures for
Hillstrom (measured with untuned learners on a 70/30 split stratified by arm and outcome).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from features.campaigns import outcomes_from_transactions, randomisation_check
from features.config import ConfigError, load_dataset_config
from features.io import load_dataset
from features.validate import DataError
from training.config import MicroSegmentRules, load_model_config
from training.evaluation import evaluate_uplift, qini_auc, qini_points, uplift_metrics
from training.uplift import (
    NO_ACTION,
    evaluate_policies,
    fit_candidate,
    micro_segments,
    next_best_action,
    output_columns,
    policy_value,
)

from .conftest import load_real

# ------------------------------------------------------------------------------------------------
# The campaigns table


def campaign_files(tmp_path: Path, rows: pd.DataFrame, **options: object) -> Path:
    rows.to_csv(tmp_path / "sends.csv", index=False)
    lines = [
        "campaigns:",
        "  path: sends.csv",
        "  columns: {customer_id: id, arm: group, visit: visit}",
        *(f"  {k}: {v}" for k, v in {"control_arm": "none", "min_per_arm": 10, **options}.items()),
    ]
    (tmp_path / "shop.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path / "shop.yaml"


def randomised(n: int, arms: tuple[str, ...] = ("none", "mail"), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(n)],
            "group": rng.choice(arms, n),
            "history": rng.gamma(2.0, 100.0, n).round(2),
            "region": rng.choice(["north", "south", "west"], n),
            "visit": rng.integers(0, 2, n),
        }
    )


def test_a_missing_control_arm_stops_naming_it(tmp_path: Path) -> None:
    rows = randomised(200).assign(group="mail")
    with pytest.raises(DataError, match=r"control arm 'none' has no rows; arms in the file: \['mail'\].*control_arm"):
        load_dataset(load_dataset_config(campaign_files(tmp_path, rows)))


def test_too_few_rows_in_an_arm_stops_naming_the_arm_and_count(tmp_path: Path) -> None:
    rows = randomised(300)
    rows.loc[rows.index[rows["group"] == "mail"][5:], "group"] = "none"  # five customers got the e-mail
    with pytest.raises(DataError, match=r"\{'mail': 5\} have fewer than min_per_arm \(50\)"):
        load_dataset(load_dataset_config(campaign_files(tmp_path, rows, min_per_arm=50)))


def test_a_campaigns_table_without_an_arm_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("campaigns:\n  path: x.csv\n  columns: {visit: v}\n  control_arm: none\n")
    with pytest.raises(ConfigError, match="needs the arm column"):
        load_dataset_config(tmp_path / "bad.yaml")


def test_randomisation_check_fires_on_a_planted_biased_assignment(tmp_path: Path) -> None:
    """Customers with a high history were moved into the e-mail arm (as a manager picking 'good'
    customers would): the check names history (and only the attributes that were biased)."""
    rows = randomised(4000, seed=1)
    rich = (rows["history"] > 300) & (rows["group"] == "none")
    biased = rows.assign(group=np.where(rich, "mail", rows["group"]))
    dataset = load_dataset(load_dataset_config(campaign_files(tmp_path, biased)))
    assert dataset.campaigns is not None
    warned = [p for p in dataset.campaigns.problems if "not comparable" in p.reason]
    assert [p.column for p in warned] == ["history"]
    assert "arm 'mail' differ from the control 'none' in 'history'" in warned[0].message()

    fair = load_dataset(load_dataset_config(campaign_files(tmp_path, rows))).campaigns
    assert fair is not None and not [p for p in fair.problems if "not comparable" in p.reason]


def test_randomisation_check_on_hillstrom_finds_the_arms_comparable() -> None:
    """Hillstrom was randomised in thirds (README of the data): no attribute may be flagged."""
    dataset = load_real("hillstrom")
    assert dataset.campaigns is not None
    frame = dataset.campaigns.frame
    balance = randomisation_check(frame, "No E-Mail", ["Mens E-Mail", "Womens E-Mail"], ["history", "channel"])
    assert not balance["imbalanced"].any()
    assert (balance["smd"].abs() < 0.03).all()


def test_outcomes_from_transactions_count_the_window_after_each_send() -> None:
    """A small shop: each purchase is inside [sent_at, sent_at + 14 days) or not, by hand."""
    sends = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "arm": ["mail", "none", "mail", "none"]}).assign(
        sent_at=pd.Timestamp("2024-03-01")
    )
    tx = pd.DataFrame(
        {
            "customer_id": pd.Categorical(["a", "a", "a", "b", "c", "c"]),
            "timestamp": pd.to_datetime(
                ["2024-02-28", "2024-03-01 10:00", "2024-03-10", "2024-03-15", "2024-03-14 23:59", "2024-03-02"],
                format="ISO8601",
            ),
            "amount": [99.0, 20.0, 5.0, 50.0, 7.0, -2.0],
        }
    )
    out = outcomes_from_transactions(sends, tx, window_days=14)
    assert out["conversion"].tolist() == [1.0, 0.0, 1.0, 0.0]  # b bought on day 14: outside
    assert out["spend"].tolist() == [25.0, 0.0, 5.0, 0.0]  # before the send never counts; refunds net
    assert sends.columns.tolist() == ["customer_id", "arm", "sent_at"]  # the input is unchanged


# ------------------------------------------------------------------------------------------------
# Metrics and decisions


@pytest.mark.filterwarnings("ignore:.*stable_cumsum:FutureWarning")  # scikit-uplift on scikit-learn 1.9 (README)
def test_qini_curve_for_any_outcome_equals_scikit_uplift_on_binary_outcomes() -> None:
    from sklift.metrics import qini_curve

    rng = np.random.default_rng(3)
    t = rng.integers(0, 2, 3000).astype(float)
    score = np.round(rng.normal(size=3000), 1)  # ties, as real scores have
    y = (rng.random(3000) < 0.1 + 0.05 * t * (score > 0)).astype(float)
    ours, theirs = qini_points(y, score, t), qini_curve(y, score, t)
    np.testing.assert_allclose(ours[0], theirs[0])
    np.testing.assert_allclose(ours[1], theirs[1])
    # the bootstrap's numpy formulas give the library's figures
    fast, library = uplift_metrics(y, score, t, library=False), uplift_metrics(y, score, t)
    assert fast == pytest.approx(library, abs=1e-12)


def test_next_best_action_by_hand() -> None:
    uplift = {"men": np.array([0.10, 0.01, -0.05, 0.04]), "women": np.array([0.02, 0.03, -0.01, 0.04])}
    action, value = next_best_action(uplift, 10.0, {"men": 0.25, "women": 0.25})
    # values men 0.75, -0.15, -0.75, 0.15; women -0.05, 0.05, -0.35, 0.15 (a tie goes to the first arm)
    assert action.tolist() == ["men", "women", NO_ACTION, "men"]
    np.testing.assert_allclose(value, [0.75, 0.05, 0.0, 0.15])


def test_micro_segments_by_hand() -> None:
    rules = MicroSegmentRules(persuadable_min_uplift=0.02, do_not_disturb_max_uplift=-0.01, sure_thing_min_response=0.2)
    uplift = np.array([0.05, -0.02, 0.0, 0.0, 0.02, -0.01])
    response = np.array([0.1, 0.9, 0.5, 0.05, 0.9, 0.1])
    expected = ["persuadable", "do_not_disturb", "sure_thing", "lost_cause", "persuadable", "do_not_disturb"]
    assert micro_segments(uplift, response, rules).tolist() == expected


def potential_outcomes(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Covariates and each customer's outcome under each action, known by construction."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    y0 = rng.random(n) < 0.10
    y_a = rng.random(n) < np.where(x > 0.5, 0.30, 0.08)  # helps the upper half, hurts the lower
    y_b = rng.random(n) < 0.15
    return pd.DataFrame({"none": y0, "a": y_a, "b": y_b}).astype(float), x


def observed(outcomes: pd.DataFrame, arm: np.ndarray) -> np.ndarray:
    """The outcome each customer shows: the potential outcome of the arm it was randomised to."""
    return outcomes.to_numpy()[np.arange(len(arm)), outcomes.columns.get_indexer(arm)]


def test_ipw_policy_value_is_unbiased_with_unequal_propensities() -> None:
    """Over many randomised draws (propensities 0.2/0.3/0.5), the IPW estimate of a policy's value
    averages to the true mean outcome under the policy, which is known from the potential outcomes;
    the naive mean among the customers whose arm matched the policy is biased here."""
    arms = np.array(["none", "a", "b"])
    propensity = {"none": 0.2, "a": 0.3, "b": 0.5}
    estimates, naive, truths = [], [], []
    for seed in range(300):
        outcomes, x = potential_outcomes(4000, seed)
        policy = np.where(x > 0.5, "a", "none")
        truths.append(outcomes.to_numpy()[np.arange(len(x)), np.where(policy == "a", 1, 0)].mean())
        arm = np.random.default_rng(10_000 + seed).choice(arms, len(x), p=list(propensity.values()))
        y = observed(outcomes, arm)
        estimates.append(policy_value(policy, arm, y, propensity))
        naive.append(y[policy == arm].mean())
    truth = float(np.mean(truths))  # E[V] = 0.5 * 0.30 + 0.5 * 0.10 = 0.20
    assert abs(truth - 0.20) < 0.002
    standard_error = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - truth) < 3 * standard_error
    assert abs(np.mean(naive) - truth) > 0.02  # what IPW corrects


def test_evaluate_policies_reports_incremental_outcomes_per_1000_with_intervals() -> None:
    outcomes, x = potential_outcomes(60_000, 7)
    arm = np.random.default_rng(8).choice(["none", "a", "b"], len(x))
    y = observed(outcomes, arm)
    policies = {"smart": np.where(x > 0.5, "a", "none"), "everyone_a": np.full(len(x), "a")}
    table = evaluate_policies(policies, arm, {"visit": y}, "none", bootstrap=50, seed=0).set_index("policy")
    # the true gains of these customers, from their potential outcomes (in expectation: smart
    # 0.5 * (0.30 - 0.10) = 100 per 1,000; everyone a: 0.5 * 0.20 + 0.5 * (0.08 - 0.10) = 90)
    truths = {name: 1000 * (observed(outcomes, p) - outcomes["none"].to_numpy()).mean() for name, p in policies.items()}
    assert truths["smart"] == pytest.approx(100, abs=8) and truths["everyone_a"] == pytest.approx(90, abs=8)
    for name, truth in truths.items():
        row = table.loc[name]
        assert row["incremental_visit_per_1000_lo"] <= truth <= row["incremental_visit_per_1000_hi"], name
    assert table.loc["smart", "sent_per_1000"] == pytest.approx(500, abs=10)
    assert table.loc["smart", "incremental_visit_per_send"] == pytest.approx(0.2, abs=0.02)


# ------------------------------------------------------------------------------------------------
# The learners on a planted effect


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Attributes, a 50/50 randomised arm, a visit, and the true per-customer uplift: +0.20 where
    x0 > 0.6 (persuadables), -0.12 where x1 < -1 (do-not-disturb, about 16%), +0.02 elsewhere."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.random(n), rng.normal(size=n), rng.normal(size=n)])
    tau = np.where(x[:, 0] > 0.6, 0.20, np.where(x[:, 1] < -1, -0.12, 0.02))
    base = 0.15 + 0.10 * (x[:, 2] > 0)
    t = rng.integers(0, 2, n).astype(float)
    y = (rng.random(n) < base + t * tau).astype(float)
    return x, t, y, tau


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["t_learner", "s_learner", "class_transformation"])
def test_learners_recover_a_planted_effect_and_the_do_not_disturb_group(learner: str) -> None:
    config = load_model_config("uplift")
    x, t, y, _ = planted(40_000, 0)
    scorer = fit_candidate(learner, x, y, t, config)
    x_new, t_new, y_new, tau_new = planted(10_000, 1)
    estimate = scorer.uplift(x_new)
    correlation = spearmanr(estimate, tau_new).statistic
    print(f"{learner}: Spearman rank correlation with the true uplift {correlation:.3f}")
    assert correlation > 0.5
    rules = config.uplift.segments if config.uplift else MicroSegmentRules()
    found = micro_segments(estimate, np.full(len(estimate), 0.5), rules) == "do_not_disturb"
    truly = tau_new < 0
    recall, precision = found[truly].mean(), truly[found].mean()
    print(f"{learner}: do-not-disturb recall {recall:.2f}, precision {precision:.2f} (base rate {truly.mean():.2f})")
    # most of the harmed customers are found, and a flagged customer is harmed four times as often
    # as one at random (the +0.02 majority is close to the -0.01 threshold, so some noise crosses it)
    assert recall > 0.7 and precision > 4 * truly.mean()
    # ranking: at least 3/4 of the Qini AUC of ranking by the true uplift, on the same rows
    assert evaluate_uplift(y_new, estimate, t_new).primary > 0.75 * qini_auc(y_new, tau_new, t_new)


# ------------------------------------------------------------------------------------------------
# Hillstrom: the protocol, and `valuecast train` end to end


@pytest.fixture(scope="module")
def hillstrom_visit():  # type: ignore[no-untyped-def]
    """The family trained on Hillstrom, visit only (seed 0, the bundled config otherwise)."""
    from training import uplift

    dataset = load_real("hillstrom")
    config = load_model_config("uplift", "hillstrom")
    assert config.uplift is not None
    # 100 resamples instead of 200 for the intervals: this fixture is most of the file's run time
    settings = config.uplift.model_copy(update={"outcomes": ["visit"], "bootstrap": 100})
    config = config.model_copy(update={"uplift": settings})
    return dataset, uplift.train(dataset, config)


@pytest.mark.real_data
@pytest.mark.slow
def test_hillstrom_womens_email_on_visit_seed_0(hillstrom_visit) -> None:  # type: ignore[no-untyped-def]
    """Women's e-mail vs none, visit, seed 0 of the issue's protocol. The issue asks for a mean over
    seeds 0-4 of Qini AUC >= 0.05 and uplift@30% >= 0.065 (benchmarks/bench_uplift.py measures it);
    one seed is allowed one standard deviation of that mean's spread across seeds (about 0.015 and
    0.010, the issue's learners and ours alike), and must beat the response model with an interval
    that excludes random."""
    _, trained = hillstrom_visit
    report, response = trained.report, trained.baselines["response_model"]
    assert trained.choice.winner not in ("random", "response_model")
    assert report.metrics["qini_auc"] >= 0.05 - 0.015
    assert report.metrics["uplift_at_30"] >= 0.065 - 0.010
    assert report.metrics["qini_auc"] > response.metrics["qini_auc"]
    assert report.metrics["qini_auc_lo"] > 0
    assert report.metrics["qini_auc"] < 0.10  # far above 0.08 would call for a leakage check


@pytest.mark.real_data
@pytest.mark.slow
def test_hillstrom_baselines_in_the_reference_range(hillstrom_visit) -> None:  # type: ignore[no-untyped-def]
    """The issue's reference for women's vs none on visit: random Qini AUC about -0.01 and
    uplift@30% 0.042 (the average effect, 15.1% - 10.6% by the data's README); response model
    0.015 / 0.056. Ranges: three standard deviations of one seed's figure (about 0.015 / 0.012)."""
    _, trained = hillstrom_visit
    random, response = trained.baselines["random"].metrics, trained.baselines["response_model"].metrics
    assert abs(random["qini_auc"] - (-0.01)) < 0.045
    assert abs(random["uplift_at_30"] - 0.042) < 0.036
    assert abs(response["qini_auc"] - 0.015) < 0.045
    assert abs(response["uplift_at_30"] - 0.056) < 0.036
    assert abs(random["ate"] - (0.151 - 0.106)) < 0.015


@pytest.mark.real_data
@pytest.mark.slow
def test_hillstrom_policy_and_plain_words(hillstrom_visit) -> None:  # type: ignore[no-untyped-def]
    """The next best action against everyone-gets-X, no one and random; and on men's e-mail, where
    ranking by response does as well as uplift (the issue), the run says so when a baseline wins."""
    _, trained = hillstrom_visit
    policy = trained.tables["policy"].set_index("policy")
    assert set(policy.index) == {
        "next_best_action",
        "everyone_mens_e_mail",
        "everyone_womens_e_mail",
        "no_one",
        "random",
    }
    # README of the data: visit rates 18.3% men's, 15.1% women's, 10.6% none -> 77 and 45 per 1,000
    assert policy.loc["everyone_mens_e_mail", "incremental_visit_per_1000"] == pytest.approx(77, abs=15)
    assert policy.loc["everyone_womens_e_mail", "incremental_visit_per_1000"] == pytest.approx(45, abs=15)
    assert policy.loc["no_one", "incremental_visit_per_1000"] == 0
    candidates = trained.tables["candidates"]
    mens = candidates.loc[(candidates["arm"] == "Mens E-Mail") & candidates["winner"], "candidate"].item()
    if mens in ("random", "response_model"):
        assert any("uplift no better than" in w and "Mens E-Mail" in w for w in trained.warnings)


@pytest.mark.real_data
@pytest.mark.slow
def test_valuecast_train_uplift_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`valuecast train --data hillstrom --model uplift` into a fresh store: registered, champion,
    and the champion scores raw rows of the file into the documented columns."""
    import mlflow
    from typer.testing import CliRunner

    from valuecast.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("VALUECAST_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    config = tmp_path / "uplift.yaml"
    config.write_text("uplift:\n  uplift:\n    outcomes: [visit]\n    bootstrap: 20\n")
    result = CliRunner().invoke(app, ["train", "--data", "hillstrom", "--model", "uplift", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "valuecast-uplift-hillstrom v1" in result.output and "champion" in result.output

    model = mlflow.pyfunc.load_model("models:/valuecast-uplift-hillstrom@champion")
    raw = pd.read_csv(_hillstrom_path(), nrows=50, dtype=str)  # rows as the file has them
    scored = model.predict(raw.drop(columns=["segment", "visit", "conversion", "spend"]))
    arms = ["Mens E-Mail", "Womens E-Mail"]
    assert list(scored.columns) == output_columns(arms, ["visit"], "visit")
    assert len(scored) == 50
    assert set(scored["next_best_action"]) <= {*arms, NO_ACTION}
    assert set(scored["micro_segment"]) <= {"persuadable", "sure_thing", "lost_cause", "do_not_disturb"}


def _hillstrom_path() -> Path:
    from features.config import data_root

    return data_root() / "hillstrom" / "hillstrom.csv"


def test_arms_and_outcomes_chosen_on_threads_as_one_after_the_other(tmp_path: Path) -> None:
    """choose_all runs the (arm, outcome) pairs on threads: the same winners, reasons, figures and
    scores as one pair after the other."""
    from training import uplift

    rows = randomised(3_000, arms=("none", "mail", "sms"), seed=3)
    rows["visit"] = (((rows["history"] > 250) & (rows["group"] != "none")) | (rows["visit"] == 1)).astype(int)
    dataset = load_dataset(load_dataset_config(campaign_files(tmp_path, rows)))
    config = load_model_config("uplift")
    assert config.uplift is not None
    config = config.model_copy(
        update={"uplift": config.uplift.model_copy(update={"outcomes": ["visit"], "bootstrap": 20})}
    )
    data = uplift.prepare(dataset, config)
    threaded = uplift.choose_all(data, config, workers=2)
    alone = uplift.choose_all(data, config, workers=1)
    assert list(threaded) == list(alone) and sorted(threaded) == [("mail", "visit"), ("sms", "visit")]
    for pair, result in threaded.items():
        other = alone[pair]
        assert (result.choice.winner, result.choice.reason, result.note) == (
            other.choice.winner,
            other.choice.reason,
            other.note,
        )
        for part in ("validation", "test"):
            mine, theirs = getattr(result.choice, part), getattr(other.choice, part)
            assert {n: r.metrics for n, r in mine.items()} == {n: r.metrics for n, r in theirs.items()}
        np.testing.assert_array_equal(result.winner.uplift(data.x), other.winner.uplift(data.x))
