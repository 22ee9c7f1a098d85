"""Macro segments (training/macro_segment.py, serving/segments/macro.py): the space, the names, the
choice on validation data, stability and the spend test on real Online Retail data, and the same
segment for a customer in the registry's model, batch scoring and the API."""

from __future__ import annotations

import html
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import ConfigError
from training import macro_segment
from training.common import Trained
from training.config import load_model_config
from training.macro_segment import NO_PURCHASES, Space, segment_names
from valuecast.cli import app

from .conftest import SERVING_AS_OF, free_port, load_real, running_server

runner = CliRunner()


# --- unit ------------------------------------------------------------------------------------------


def features(**columns: list[float]) -> pd.DataFrame:
    base = {
        "order_count": [3.0, 1.0, 0.0],
        "total_spend": [90.0, 20.0, 0.0],
        "avg_order_value": [30.0, 20.0, 0.0],
        "mean_days_between_orders": [20.0, np.nan, np.nan],
        "days_since_last_order": [5.0, 40.0, np.nan],
        "days_since_first_order": [45.0, 40.0, np.nan],
    }
    return pd.DataFrame({**base, **columns})


def test_the_category_mix_is_a_centred_log_ratio_and_gaps_of_one_off_buyers_are_their_days_since() -> None:
    frame = features(category_share_a=[0.5, 1.0, 0.0], category_share_b=[0.5, 0.0, 0.0])
    space = Space(["category_share_a", "category_share_b"], [], seasonal=False)
    raw = space.raw(frame, None)
    assert space.names[:3] == ["clr_a", "clr_b", "clr_rest"]
    np.testing.assert_allclose(raw[:, :3].sum(axis=1), 0.0, atol=1e-12)  # log-ratios centred per customer
    assert raw[0, 0] == pytest.approx(raw[0, 1]) and raw[1, 0] > raw[1, 1]
    gaps = raw[:, space.names.index("log_days_between_orders")]
    assert gaps[0] == pytest.approx(np.log1p(20.0)) and gaps[1] == pytest.approx(np.log1p(40.0))
    assert np.isfinite(raw).all()


def test_names_come_from_what_sets_a_segment_apart_and_are_unique() -> None:
    columns = ["clr_christmas", "log_order_value", "log_orders"]
    x = np.array(
        [[2.0, 1.0, 0.0], [2.1, 1.1, 0.1], [-1.0, -1.0, 0.0], [-1.1, -1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.1]]
    )
    names = segment_names(x, np.array([0, 0, 1, 1, 2, 2]), columns, 3)
    assert names[0].startswith("christmas buyers") and "large baskets" in names[0]
    assert "small baskets" in names[1]
    assert names[2].startswith("frequent buyers")
    assert len(set(names)) == 3
    same = segment_names(np.array([[1.0], [1.0], [-1.0], [-1.0]]), np.array([0, 1, 2, 2]), ["log_orders"], 3)
    assert len(set(same)) == 3  # two segments reading the same get numbered, never merged


def test_a_customer_without_purchases_is_in_no_segment_of_the_model() -> None:
    class Nearest:  # two fixed centres: assigns like k-means' predict
        def predict(self, x: np.ndarray) -> np.ndarray:
            return (x[:, 0] > 0).astype(int)

    space = Space([], [], seasonal=False)
    raw = space.raw(features(), None)
    space.fit(raw[:2])
    fit = macro_segment.Fit("kmeans", 2, Nearest(), np.array([0, 1]), {})
    model = object.__new__(macro_segment.MacroSegmentModel)
    model.space, model.clusterer, model.names = space, fit.model, ["a", "b"]
    out = model.score_columns(features())
    assert out["macro_segment"][2] == NO_PURCHASES and out["macro_segment_id"][2] == -1
    assert set(out["macro_segment"][:2]) <= {"a", "b"}


def test_a_config_with_fewer_segments_at_most_than_at_least_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "macro.yaml"
    path.write_text("family: macro_segment\nmacro:\n  k_min: 6\n  k_max: 4\n")
    with pytest.raises(ConfigError, match="k_max 4 is below k_min 6"):
        load_model_config("macro_segment", path=path)


# --- real data -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def online_retail_segments() -> Trained:
    dataset = load_real("online_retail")
    return macro_segment.train(dataset, load_model_config("macro_segment", "online_retail"))


def test_online_retail_segments_are_stable_differ_in_spend_and_beat_the_baseline(
    online_retail_segments: Trained,
) -> None:
    trained = online_retail_segments
    metrics = trained.report.metrics
    print(
        f"\nOnline Retail macro segments: {trained.candidate}, k={int(metrics['segments'])}, silhouette "
        f"{metrics['silhouette']:.4f} (baseline rfm_grid {trained.baselines['rfm_grid'].primary:.4f}), stability ARI "
        f"{metrics['stability_ari']:.3f} over 10 bootstrap fits, Kruskal-Wallis H {metrics['kruskal_h']:.1f} "
        f"(p {metrics['kruskal_p']:.2e}); {trained.choice.reason}"
    )
    assert trained.candidate in macro_segment.CANDIDATES
    assert 3 <= metrics["segments"] <= 8 or trained.candidate == "rfm_grid"
    assert metrics["stability_ari"] >= 0.8
    assert metrics["kruskal_p"] < 0.001  # the segments go on to spend differently in the test window
    assert trained.report.primary >= trained.baselines["rfm_grid"].primary
    # chosen on the validation cut-off, before the test cut-off
    assert "validation cut-off 2011-06-01" in trained.choice.reason and "test cut-off 2011-09-01" in trained.test_window


def test_every_online_retail_segment_is_named_and_profiled(online_retail_segments: Trained) -> None:
    trained = online_retail_segments
    names = trained.model.names
    profile = trained.tables["macro_segment_profiles"]
    assert len(set(names)) == len(names) and all(names)
    assert sorted(profile["macro_segment"]) == sorted(names)
    assert profile["customers"].sum() == trained.test_rows
    assert profile["share_of_spend"].sum() == pytest.approx(1.0)
    assert list(profile["share_of_spend"]) == sorted(profile["share_of_spend"], reverse=True)
    assert {"mean_next_horizon_spend", "leading_category", "mean_order_value"} <= set(profile.columns)
    assert any("seasonality" in w for w in trained.warnings)  # 9 months of history: said, not hidden


# --- registered, and the same segment everywhere ---------------------------------------------------


@pytest.fixture()
def macro_store(champion_store_copy: Path) -> Iterator[Path]:
    from training import tracking
    from training.run import train_and_log

    outcome = train_and_log("macro_segment", "cdnow_sample", echo=lambda _: None)
    if not outcome.promotion.promoted:
        tracking.promote(outcome.promotion.registered_name, outcome.promotion.version)
    yield champion_store_copy


def test_one_customer_has_the_same_macro_segment_in_the_model_batch_and_api(macro_store: Path, tmp_path: Path) -> None:
    from serving.scoring import histories_problem, load_champions, score_customers, score_histories

    dataset = load_real("cdnow_sample")
    champions = load_champions("cdnow_sample")
    assert "macro_segment" in champions.models
    out = tmp_path / "scores"
    result = runner.invoke(app, ["score", "--data", "cdnow_sample", "--out", str(out), "--as-of", SERVING_AS_OF])
    assert result.exit_code == 0, result.output
    batch = pd.read_parquet(out / "scores.parquet").set_index("customer_id")
    assert batch["macro_segment"].notna().all() and batch["macro_segment_model_version"].nunique() == 1
    summary = json.loads((out / "summary.json").read_text())
    profiles = pd.DataFrame(summary["macro_segments"])
    assert profiles["customers"].sum() == len(batch) and profiles["share_of_value"].sum() == pytest.approx(1.0)
    report = (out / "report.html").read_text()  # every segment named and profiled in the report
    assert "Macro segment profiles" in report
    assert all(html.escape(name) in report for name in profiles["macro_segment"])

    assert dataset.transactions is not None
    tx = dataset.transactions.frame
    ids = sorted(tx["customer_id"].astype(str).unique())[:40]
    rows = tx.loc[tx["customer_id"].astype(str).isin(ids)]
    code = pd.Index(ids).get_indexer(rows["customer_id"].astype(str))
    ts = rows["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    if champions.models["macro_segment"].model.own_features:  # the Q4 share: the API takes the pandas path
        assert "columns of their own" in str(histories_problem(champions))
    else:
        amount = rows["amount"].to_numpy(dtype=float)
        fast = score_histories(champions, ids, code, ts, amount, pd.Timestamp(SERVING_AS_OF))
        assert list(fast["macro_segment"]) == list(batch.loc[ids, "macro_segment"])
    sub = score_customers(champions, dataset, SERVING_AS_OF, ids)
    assert list(sub["macro_segment"]) == list(batch.loc[ids, "macro_segment"])

    port, key = free_port(), "macro-test-key"
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VALUECAST_API_KEY": key, "VALUECAST_WORKERS": "1", "VALUECAST_DATASETS": "cdnow_sample"}
    customers = [
        {
            "customer_id": i,
            "transactions": [
                {"timestamp": t.isoformat(), "amount": float(a)}
                for t, a in zip(r["timestamp"], r["amount"], strict=True)
            ],
        }
        for i, r in rows.groupby(rows["customer_id"].astype(str))
    ]
    with running_server(
        [bentoml, "serve", "serving.service:ValueService", "--host", "127.0.0.1", "--port", str(port)],
        env,
        f"{url}/readyz",
    ):
        answer = httpx.post(
            f"{url}/score",
            json={"dataset": "cdnow_sample", "as_of": SERVING_AS_OF, "customers": customers},
            headers={"X-API-Key": key},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["models"]["macro_segment"] == batch["macro_segment_model_version"].iloc[0]
    api = {c["customer_id"]: c["macro_segment"] for c in body["customers"]}
    assert [api[i] for i in ids] == list(batch.loc[ids, "macro_segment"])

    refreshed = tmp_path / "refresh"
    result = runner.invoke(
        app, ["refresh", "--data", "cdnow_sample", "--out", str(refreshed), "--as-of", SERVING_AS_OF]
    )
    assert result.exit_code == 0, result.output
    history = pd.read_parquet(refreshed / "history").set_index("customer_id")
    assert list(history.loc[ids, "macro_segment"]) == list(batch.loc[ids, "macro_segment"])
    summary = json.loads((refreshed / "refreshes" / SERVING_AS_OF / "summary.json").read_text())
    drift = summary["drift"]["families"]["macro_segment"]
    assert drift["reference_cutoff"] and "score:macro_segment_id" in drift["psi"]
    assert "input:avg_order_value" in drift["psi"]
