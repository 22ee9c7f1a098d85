"""Drift of the champions' inputs and scores at each refresh, and make retrain (issue 16, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.drift import psi
from valuecast.cli import app

from .conftest import load_real

runner = CliRunner()


def test_psi_is_zero_for_the_same_population_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.lognormal(3, 1, 20_000)
    assert psi(reference, rng.lognormal(3, 1, 20_000)) < 0.01
    assert 0.1 < psi(reference, rng.lognormal(3.4, 1, 20_000)) < psi(reference, rng.lognormal(4, 1, 20_000))
    assert psi(reference, rng.lognormal(4, 1, 20_000)) > 0.25
    # few distinct values are their own bins; missing values are a bin of their own
    flags = rng.integers(0, 2, 5_000).astype(float)
    assert psi(flags, flags[::-1]) < 0.01 and psi(flags, np.ones(5_000)) > 1
    with_missing = reference.copy()
    with_missing[: len(reference) // 2] = np.nan
    assert psi(reference, with_missing) > 1 and np.isfinite(psi(reference, with_missing))


def _shifted_copy(folder: Path, factor: float, after: str) -> Path:
    """The CDNOW sample as a CSV whose amounts after ``after`` are multiplied by ``factor``, and a dataset
    YAML of the same name reading it (so that the sample's champions score it)."""
    dataset = load_real("cdnow_sample")
    assert dataset.transactions is not None
    frame = dataset.transactions.frame[["customer_id", "timestamp", "amount", "quantity"]].copy()
    later = frame["timestamp"] >= pd.Timestamp(after)
    frame.loc[later, "amount"] = frame.loc[later, "amount"] * factor
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "transactions.csv", index=False)
    config = folder / "cdnow_sample.yaml"
    config.write_text(
        "description: the CDNOW sample with amounts shifted (drift test)\n"
        "transactions:\n"
        f"  path: {folder / 'transactions.csv'}\n"
        "  columns: {customer_id: customer_id, timestamp: timestamp, amount: amount, quantity: quantity}\n"
        '  date_format: "%Y-%m-%d"\n'
        "  duplicates: keep\n"
    )
    return config


@pytest.mark.real_data
@pytest.mark.slow
def test_a_shifted_input_recommends_a_retrain_naming_it_then_retrain_trains_through_the_gate(
    champion_store_copy: Path, tmp_path: Path
) -> None:
    from features.config import load_dataset_config
    from features.io import load_dataset
    from serving import drift
    from serving.scoring import load_champions

    # champion_store_copy: retraining must not move the champions the other tests serve
    as_of = pd.Timestamp("1998-07-01")
    champions = load_champions("cdnow_sample")
    control = drift.summary(drift.measure(champions, load_real("cdnow_sample"), as_of))
    shifted_config = _shifted_copy(tmp_path / "shifted", 10.0, "1998-02-01")
    shifted = load_dataset(load_dataset_config(shifted_config))
    moved = drift.summary(drift.measure(champions, shifted, as_of))

    assert control["families"]["churn"]["reference_cutoff"] < "1998-02-01"
    # CDNOW is one cohort growing older, so its recency inputs drift by themselves (the control flags
    # them too); what the shift adds is named: a spend input newly above the threshold
    newly = {
        family: [r for r in facts["reasons"] if r not in control["families"][family]["reasons"]]
        for family, facts in moved["families"].items()
    }
    named = [r for found in newly.values() for r in found if r.startswith("input ") and "spend" in r]
    assert named, newly
    assert not any(r.startswith("input ") and "spend_last_90d" in r for r in control["families"]["clv"]["reasons"])
    assert "clv" in moved["retrain_recommended"]

    out = tmp_path / "refresh"
    refreshed = runner.invoke(
        app, ["refresh", "--data", str(shifted_config), "--as-of", "1998-07-01", "--out", str(out)]
    )
    assert refreshed.exit_code == 0, refreshed.output
    assert "retrain recommended: churn" in refreshed.output and "make retrain DATA=" in refreshed.output
    summary = json.loads((out / "refreshes" / "1998-07-01" / "summary.json").read_text())
    assert summary["drift"]["retrain_recommended"] == moved["retrain_recommended"]

    retrained = runner.invoke(app, ["retrain", "--data", str(shifted_config), "--out", str(out)])
    assert retrained.exit_code == 0, retrained.output
    for family in moved["retrain_recommended"]:
        assert f"retraining {family} on cdnow_sample" in retrained.output
        assert f"valuecast-{family}-cdnow_sample v2" in retrained.output  # a new version, through the gate
    assert ": champion, " in retrained.output or ": challenger, " in retrained.output


def test_retrain_without_a_refresh_says_what_to_run_first(tmp_path: Path) -> None:
    result = runner.invoke(app, ["retrain", "--data", "cdnow_sample", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "no refresh of cdnow_sample yet: run make refresh DATA=cdnow_sample first" in result.output


def test_drift_thresholds_are_settings_and_age_counts_from_the_training_cut_off(tmp_path: Path) -> None:
    from serving import drift

    old = drift.FamilyDrift("churn", "1", "1998-01-01", 181, max_age_days=180)
    assert old.reasons == ["trained on data 181 days older than this refresh (> 180)"]
    assert drift.FamilyDrift("churn", "1", "1998-01-01", 181, max_age_days=365).reasons == []
    with pytest.raises(ValueError, match="input_psi must be in"):
        drift.Thresholds(input_psi=0.0)
    result = runner.invoke(
        app, ["refresh", "--data", "cdnow_sample", "--out", str(tmp_path / "r"), "--psi-threshold", "0"]
    )
    assert result.exit_code == 2 and "psi-threshold" in result.output
