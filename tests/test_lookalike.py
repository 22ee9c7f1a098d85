"""Look-alike audiences (serving/segments/lookalike.py): bad seeds and sizes, the quality of the ranking on a
hidden part of a seed, what the audience leaves out, and OUT written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.io import Dataset
from serving.batch import MARKER, OutputInUseError
from serving.segments import lookalike
from serving.segments.lookalike import LookalikeError, Population, Quality
from tests.conftest import load_real
from valuecast.cli import app

# --- unit: inputs a user can get wrong ------------------------------------------------------------


def test_ids_not_in_the_data_are_named() -> None:
    known = pd.Index(["a", "b", "c"], name="customer_id")
    assert lookalike.seed_from_ids(pd.Series(["b", " a", "b", ""]), known, "SEED=s.csv") == ["a", "b"]
    with pytest.raises(LookalikeError, match=r"SEED=s\.csv: 2 of 3 ids .*'x', 'y'.*remove them"):
        lookalike.seed_from_ids(pd.Series(["a", "x", "y"]), known, "SEED=s.csv")
    with pytest.raises(LookalikeError, match="no customer ids"):
        lookalike.seed_from_ids(pd.Series([None, ""], dtype=object), known, "SEED=s.csv")


def test_size_must_fit_the_customers_that_can_be_chosen() -> None:
    seed = [str(i) for i in range(20)]
    assert lookalike.audience_size(None, seed, 100) == 20
    assert lookalike.audience_size(None, seed, 5) == 5
    assert lookalike.audience_size(100, seed, 100) == 100
    for size in (0, -1, 101):
        with pytest.raises(LookalikeError, match=rf"SIZE={size} is out of range: choose 1 to 100"):
            lookalike.audience_size(size, seed, 100)


def test_ids_file_without_the_id_column(tmp_path: Path) -> None:
    path = tmp_path / "best.csv"
    path.write_text("id,name\n1,x\n")
    with pytest.raises(LookalikeError, match=r"best\.csv: no 'customer_id' column \(columns: id, name\); name the"):
        lookalike.read_seed_file(path)
    path.write_text("customer_id,name\n0001,x\n0002,y\n")
    assert lookalike.read_seed_file(path).tolist() == ["0001", "0002"]  # ids stay text: leading zeros kept


def test_segment_seed_needs_scored_segments(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="run make score DATA=cdnow OUT=out/scores first, then add SCORES="):
        lookalike.read_seed("maintain", "cdnow", None)
    with pytest.raises(LookalikeError, match=r"no scored output of make score there.*run make score DATA=cdnow"):
        lookalike.read_seed("maintain", "cdnow", tmp_path)
    (tmp_path / MARKER).write_text(json.dumps({"dataset": "online_retail", "as_of": "2011-12-10"}))
    pd.DataFrame({"customer_id": ["a"], "segment": ["maintain"], "value_tier": ["A"]}).to_parquet(
        tmp_path / "scores.parquet"
    )
    with pytest.raises(LookalikeError, match="holds the scores of dataset 'online_retail', not 'cdnow'"):
        lookalike.read_seed("maintain", "cdnow", tmp_path)
    with pytest.raises(LookalikeError, match="neither a CSV file of ids nor a segment name"):
        lookalike.read_seed("Win Back!", "cdnow", tmp_path)


def test_unknown_segment_lists_the_segments_there() -> None:
    scores = pd.DataFrame(
        {"customer_id": ["a", "b", "c"], "segment": ["grow", "maintain", "grow"], "value_tier": ["B", "A", "B"]}
    )
    assert lookalike.seed_from_scores(scores, "grow", "SCORES=s") == ["a", "c"]
    assert lookalike.seed_from_scores(scores, "tier:A", "SCORES=s") == ["b"]
    with pytest.raises(LookalikeError, match=r"SEED=protect: .*segment 'protect'; there are: grow, maintain"):
        lookalike.seed_from_scores(scores, "protect", "SCORES=s")
    with pytest.raises(LookalikeError, match=r"there are: tier:A, tier:B"):
        lookalike.seed_from_scores(scores, "tier:D", "SCORES=s")


def test_quality_figures() -> None:
    quality = Quality("pu_classifier", top_n=50, hidden=20, ranked=1000, found=8)
    assert quality.recall == pytest.approx(0.4)
    assert quality.random_recall == pytest.approx(0.05)
    assert quality.lift == pytest.approx(8.0)


def test_a_planted_group_is_found_on_a_tiny_population() -> None:
    """Ten customers far from the crowd on two inputs: hiding two, both come first for both methods."""
    rng = np.random.default_rng(0)
    n = 300
    x = pd.DataFrame({"spend": rng.normal(0, 1, n), "orders": rng.normal(0, 1, n), "noise": rng.normal(0, 1, n)})
    x.loc[:9, ["spend", "orders"]] += 6.0
    ids = pd.Index([f"c{i:03d}" for i in range(n)], name="customer_id")
    facts = pd.DataFrame({"suppressed": np.zeros(n, dtype=bool)}, index=ids)
    population = Population(pd.Timestamp("2020-01-01"), ids, x, list(x.columns), facts)
    seed = [f"c{i:03d}" for i in range(10)]
    for method in lookalike.METHODS:
        quality = lookalike.measure_quality(population, seed, method, top_n=2)
        assert (quality.hidden, quality.found) == (2, 2), method
    ranked = lookalike.rank_customers(population, seed[:8])
    assert set(ranked["customer_id"].head(2)) == {"c008", "c009"}
    assert ranked["reasons"].iat[0].startswith(("spend (+", "orders (+"))
    assert not ranked["customer_id"].isin(seed[:8]).any()


# --- behaviour on the CDNOW sample ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample() -> Dataset:
    return load_real("cdnow_sample")


@pytest.fixture(scope="module")
def loyal(sample: Dataset) -> list[str]:
    """The seed: customers with at least 5 orders in the last 365 days of data, counted here with pandas
    (distinct purchase days) rather than by the feature code."""
    assert sample.transactions is not None
    tx = sample.transactions.frame
    recent = tx.loc[tx["timestamp"] >= pd.Timestamp("1997-07-01")]
    days = recent.groupby(recent["customer_id"].astype(str))["timestamp"].nunique()
    return sorted(days.index[days >= 5])


@pytest.fixture(scope="module")
def population(sample: Dataset) -> Population:
    return lookalike.customer_population(sample)


def test_hidden_seed_members_are_found_well_above_random(population: Population, loyal: list[str]) -> None:
    assert 50 <= len(loyal) <= 400  # a seed of a usable size on the sample (2,357 customers)
    found = {m: lookalike.measure_quality(population, loyal, m, top_n=len(loyal)) for m in lookalike.METHODS}
    classifier, neighbours = found["pu_classifier"], found["nearest_neighbours"]
    assert classifier.hidden == round(0.2 * len(loyal))
    assert classifier.ranked == len(population.ids) - (len(loyal) - classifier.hidden)
    assert classifier.lift >= 3.0, classifier.as_dict()
    assert neighbours.lift >= 1.5, neighbours.as_dict()


def _with_recent_refunds(dataset: Dataset, ids: list[str], day: str) -> Dataset:
    """The dataset with a refund on ``day`` for each of ``ids``: the segment rules suppress a customer
    with a refund in the last 30 days."""
    assert dataset.transactions is not None
    frame = dataset.transactions.frame
    refunds = frame.loc[frame["customer_id"].astype(str).isin(ids)].drop_duplicates("customer_id").copy()
    refunds["timestamp"] = pd.Timestamp(day)
    refunds["amount"] = -1.0
    combined = pd.concat([frame, refunds], ignore_index=True)
    checked = type(dataset.transactions)(combined, dataset.transactions.quarantine, dataset.transactions.problems)
    return Dataset(dataset.config, transactions=checked, customers=dataset.customers, leads=dataset.leads)


def test_audience_leaves_out_seed_and_suppressed_and_replaces_out_atomically(
    sample: Dataset, population: Population, loyal: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the customers the seed's look-alikes would most likely be: the biggest spenders outside the seed
    outside = population.facts.drop(index=loyal).sort_values("total_spend", ascending=False)
    refunded = [str(i) for i in outside.index[:100]]
    dataset = _with_recent_refunds(sample, refunded, "1998-06-25")  # the data ends 1998-06-30
    seed_file = tmp_path / "loyal.csv"
    pd.DataFrame({"customer_id": loyal, "note": "from CRM"}).to_csv(seed_file, index=False)
    out = tmp_path / "out"

    result = lookalike.run(dataset, str(seed_file), out, size=300)
    written = pd.read_csv(out / lookalike.OUTPUT_FILE, dtype={"customer_id": str})
    assert len(written) == 300
    assert written["rank"].tolist() == list(range(1, 301))
    assert not written["customer_id"].isin(loyal).any()
    assert not written["customer_id"].isin(refunded).any()
    assert written["lookalike_score"].is_monotonic_decreasing
    assert written["reasons"].str.len().gt(0).all()
    assert result.summary["suppressed_excluded"] == 100
    assert result.summary["candidates"] == len(population.ids) - len(loyal) - 100
    assert json.loads((out / MARKER).read_text())["dataset"] == "cdnow_sample"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(frame: pd.DataFrame, path: Path) -> None:
        path.write_text("half a file")
        raise OSError("disk full")

    monkeypatch.setattr("serving.batch.write_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        lookalike.run(dataset, str(seed_file), out, size=10)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the failed run left OUT as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loyal.csv", "out"]  # no temporaries left

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputInUseError, match="not a valuecast output folder"):
        lookalike.run(dataset, str(seed_file), mine, size=10)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_segment_seed_from_a_scored_output(
    sample: Dataset, population: Population, loyal: list[str], tmp_path: Path
) -> None:
    """A make score output (marker and scores.parquet, written here by hand: no champions needed)
    seeds by segment name, and the features are taken as of the date it was scored."""
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / MARKER).write_text(json.dumps({"dataset": "cdnow_sample", "as_of": "1998-04-01"}))
    segment = np.where(population.ids.isin(loyal), "maintain", "deprioritize")
    pd.DataFrame({"customer_id": population.ids, "segment": segment, "value_tier": "B"}).to_parquet(
        scores / "scores.parquet"
    )
    result = lookalike.run(sample, "maintain", tmp_path / "out", size=50, scores_dir=scores)
    assert result.summary["seed"] == "segment maintain"
    assert result.summary["seed_size"] == len(loyal)
    assert result.summary["as_of"] == "1998-04-01"
    assert not result.audience["customer_id"].isin(loyal).any()
    with pytest.raises(LookalikeError, match=r"no customer of SCORES=.* is in segment 'win_back'; there are: de"):
        lookalike.run(sample, "win_back", tmp_path / "out", scores_dir=scores)


def test_command_logs_the_run_and_bad_input_exits_2(store: str, loyal: list[str], tmp_path: Path) -> None:
    runner = CliRunner()
    seed_file = tmp_path / "loyal.csv"
    pd.DataFrame({"customer_id": loyal}).to_csv(seed_file, index=False)
    out = tmp_path / "audience"
    result = runner.invoke(
        app, ["lookalike", "--data", "cdnow_sample", "--seed", str(seed_file), "--out", str(out), "--size", "100"]
    )
    assert result.exit_code == 0, result.output
    assert "pu_classifier" in result.output and "lift" in result.output

    from training import tracking

    runs = tracking.search_runs("lookalike")
    assert len(runs) == 1
    summary = json.loads((out / "summary.json").read_text())
    pu = next(q for q in summary["quality"] if q["method"] == "pu_classifier")
    assert runs["metrics.pu_classifier_recall_at_n"].iat[0] == pytest.approx(pu["recall_at_n"])
    assert runs["metrics.nearest_neighbours_lift"].iat[0] > 0
    assert runs["params.seed"].iat[0] == "ids from loyal.csv"

    no_id = tmp_path / "no_id.csv"
    no_id.write_text("id\n0001\n")
    for arguments, message in (
        (["--seed", str(no_id)], "no 'customer_id' column"),
        (["--seed", "maintain"], "run make score DATA=cdnow_sample OUT=out/scores first"),
        (["--seed", str(seed_file), "--size", "0"], "SIZE=0 is out of range"),
    ):
        failed = runner.invoke(app, ["lookalike", "--data", "cdnow_sample", "--out", str(tmp_path / "x"), *arguments])
        assert failed.exit_code == 2, failed.output
        errors = [line for line in failed.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], failed.output
