"""Issue [1/5], "your own data, first time": a small European shop's export and a B2B lead funnel train
end to end with the right dataset options, and fail with one clear line without them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import load_dataset_config
from features.io import load_dataset
from training import families
from training.config import load_model_config
from valuecast.cli import app

from .test_file_options import ALL_OPTIONS, write_shop

runner = CliRunner()


@pytest.fixture(scope="module")
def cdnow_2000(cdnow_transactions: pd.DataFrame) -> pd.DataFrame:
    ids = cdnow_transactions["customer_id"].astype(str).drop_duplicates().head(2000)
    rows = cdnow_transactions.loc[cdnow_transactions["customer_id"].astype(str).isin(set(ids))]
    return rows[["customer_id", "timestamp", "amount", "quantity"]].reset_index(drop=True)


@pytest.mark.real_data
@pytest.mark.slow
def test_a_semicolon_latin1_day_first_export_trains_end_to_end(
    tmp_path: Path, store: str, cdnow_2000: pd.DataFrame
) -> None:
    shop = write_shop(tmp_path, cdnow_2000, **ALL_OPTIONS)
    (tmp_path / "fast.yaml").write_text("churn:\n  candidates: [rfm_logistic_regression, logistic_regression]\n")
    result = runner.invoke(
        app, ["train", "--data", str(shop), "--model", "churn", "--config", str(tmp_path / "fast.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert "valuecast-churn-kasse v1" in result.output and "champion" in result.output

    for missing, says in (
        ("separator", "the file looks separated by ';': set separator: ';'"),
        ("encoding", "set encoding: latin-1"),
        ("date_format", "set date_format: day_first"),
    ):
        folder = tmp_path / missing
        folder.mkdir()
        options = {k: v for k, v in ALL_OPTIONS.items() if k != missing}
        result = runner.invoke(
            app, ["train", "--data", str(write_shop(folder, cdnow_2000, **options)), "--model", "churn"]
        )
        assert result.exit_code == 2, (missing, result.output)
        assert says in result.output, (missing, result.output)
        assert "Traceback" not in result.output


FUNNEL_YAML = """\
name: funnel
leads:
  path: leads.csv
  separator: ";"
  date_format: day_first
  columns: {lead_id: Lead, created_at: Created}
  label_from:
    path: won.csv
    separator: ";"
    id_column: Deal Lead
"""


def _funnel(tmp_path: Path, n: int = 1600) -> Path:
    """Leads over a year whose conversion depends on the source and on the weekday they came in;
    the won deals are a separate file keyed by lead id."""
    rng = np.random.default_rng(0)
    created = pd.Timestamp("2024-01-01 08:00") + pd.to_timedelta(np.sort(rng.uniform(0, 365, n)), unit="D")
    source = rng.choice(["web", "fair", "referral", "cold call"], n)
    employees = rng.integers(1, 500, n)
    logit = -1.0 + (source == "referral") * 1.5 + (source == "fair") * 0.8 - (created.dayofweek >= 5) * 1.0
    won = rng.random(n) < 1 / (1 + np.exp(-logit))
    ids = [f"L{i:05d}" for i in range(n)]
    lines = ["Lead;Created;Source;Employees"] + [
        f"{i};{c:%d-%m-%Y %H:%M};{s};{e}" for i, c, s, e in zip(ids, created, source, employees, strict=True)
    ]
    (tmp_path / "leads.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "won.csv").write_text(
        "Deal Lead;Amount\n" + "".join(f"{i};100\n" for i, w in zip(ids, won, strict=True) if w)
    )
    (tmp_path / "funnel.yaml").write_text(FUNNEL_YAML)
    return tmp_path / "funnel.yaml"


def test_a_lead_funnel_with_creation_dates_and_a_won_deals_file_trains_with_a_time_split(tmp_path: Path) -> None:
    dataset = load_dataset(load_dataset_config(_funnel(tmp_path)))
    config = load_model_config("lead_score", "funnel").model_copy(
        update={"candidates": ["plain_logistic_regression", "logistic_regression"]}
    )
    trained = families.get("lead_score").train(dataset, config)
    assert "time split" in trained.test_window and "by created_at" in trained.test_window
    assert trained.test_rows == 480 and trained.train_rows == 1120
    assert "forward validation on the latest part of the training rows" in trained.choice.reason  # type: ignore[union-attr]
    # the test part is the latest 30% by creation date
    leads = dataset.leads.frame  # type: ignore[union-attr]
    first_test_day = trained.test_window.rsplit("from ", 1)[1].rstrip(")")
    assert (leads["created_at"] >= first_test_day).sum() >= 480
    # the weekday the lead came in is a model input and carries the planted signal
    assert "attr_created_dow" in trained.model.encoder.transform(leads.head(2)).columns  # type: ignore[attr-defined]
    assert trained.report.primary > 0.6
