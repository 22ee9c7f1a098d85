"""Serving the uplift champion (issue 15): POST /score and `make score` on Hillstrom's attribute rows,
the same next best action both ways, the action mix, do-not-disturb in the suppression rules, and
a dataset with both customer-value and uplift champions answering with both sets of columns.

One MLflow store for the module: Hillstrom's uplift model trained on a third of the file (visit
only), and a small shop (``shop``: CDNOW-sample customers' orders, a customers table with
do-not-contact flags, and a campaign log of Hillstrom attributes) served by copies of the CDNOW
sample's customer champions and of that uplift model.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from .conftest import SERVING_AS_OF, free_port, load_real, register_copy, running_server, store_environment

KEY = "uplift-key"
AUTH = {"X-API-Key": KEY}
ARMS = ["Mens E-Mail", "Womens E-Mail"]
OUTCOME_COLUMNS = ["segment", "visit", "conversion", "spend"]


def hillstrom_rows(rows: int | None = None) -> pd.DataFrame:
    from features.config import data_root

    return pd.read_csv(data_root() / "hillstrom" / "hillstrom.csv", nrows=rows)


def _shop_files(folder: Path) -> Path:
    """200 CDNOW-sample customers' orders; a customers table flagging every 10th do-not-contact; a
    campaign log of Hillstrom rows for 150 of them and for 20 customers without orders."""
    dataset = load_real("cdnow_sample")
    assert dataset.transactions is not None
    tx = dataset.transactions.frame
    ids = sorted(tx["customer_id"].astype(str).unique())[:200]
    orders = tx.loc[tx["customer_id"].astype(str).isin(ids), ["customer_id", "timestamp", "amount"]].copy()
    orders["customer_id"] = orders["customer_id"].astype(str)
    orders.to_csv(folder / "orders.csv", index=False)
    flags = ["yes" if i % 10 == 0 else "no" for i in range(len(ids))]
    pd.DataFrame({"cid": ids, "dnc": flags}).to_csv(folder / "customers.csv", index=False)
    sent = [*ids[50:], *[f"new-{i}" for i in range(20)]]
    campaign = hillstrom_rows(len(sent)).assign(cid=sent)
    campaign[["cid", *campaign.columns[:-1]]].to_csv(folder / "campaign.csv", index=False)
    (folder / "shop.yaml").write_text(
        "name: shop\n"
        "transactions:\n  path: orders.csv\n"
        "  columns: {customer_id: customer_id, timestamp: timestamp, amount: amount}\n"
        "  duplicates: keep\n"
        "customers:\n  path: customers.csv\n  columns: {customer_id: cid, do_not_contact: dnc}\n"
        "campaigns:\n  path: campaign.csv\n"
        "  columns: {customer_id: cid, arm: segment, visit: visit, conversion: conversion, spend: spend}\n"
        "  control_arm: No E-Mail\n  arms: [Mens E-Mail, Womens E-Mail]\n  min_per_arm: 10\n"
        "value_maps:\n  dnc: {'yes': 1, 'no': 0}\n"
    )
    return folder / "shop.yaml"


@pytest.fixture(scope="module")
def uplift_store(champion_store: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The module's store (see the module docstring); the variables are set for this process too."""
    from serving.scoring import CUSTOMER_FAMILIES, load_champions
    from serving.segments.rules import write_frozen
    from training import tracking
    from training.run import train_and_log

    sample = load_champions("cdnow_sample")  # from the session's store, before switching
    assert sample.frozen is not None
    folder = tmp_path_factory.mktemp("uplift")
    with store_environment(folder) as values:
        tracking.connect()
        hillstrom = load_real("hillstrom")
        assert hillstrom.campaigns is not None
        third = replace(hillstrom.campaigns, frame=hillstrom.campaigns.frame.iloc[::3].reset_index(drop=True))
        config = folder / "uplift.yaml"
        config.write_text("uplift:\n  uplift:\n    outcomes: [visit]\n    bootstrap: 20\n")
        trained = train_and_log(
            "uplift", "hillstrom", config_path=config, dataset=replace(hillstrom, campaigns=third), echo=lambda _: None
        )
        if not trained.promotion.promoted:
            tracking.promote(trained.promotion.registered_name, trained.promotion.version)
        model = load_champions("hillstrom").models["uplift"].model
        for family in CUSTOMER_FAMILIES:
            register_copy(sample.models[family].model, f"valuecast-{family}-shop", "shop", family)
        register_copy(model, "valuecast-uplift-shop", "shop", "uplift")
        write_frozen(sample.frozen, "shop")
        shop = folder / "shop"
        shop.mkdir()
        yield {**values, "shop": _shop_files(shop), "folder": folder}
    tracking.connect()  # back to the session's store for the tests after this module


@pytest.fixture(scope="module")
def server(uplift_store: dict[str, Any]) -> Iterator[str]:
    port = free_port()
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in uplift_store.items() if k.isupper()}
    with running_server(
        [bentoml, "serve", "serving.service:ValueService", "--host", "127.0.0.1", "--port", str(port)],
        {**os.environ, **env, "VALUECAST_API_KEY": KEY, "VALUECAST_WORKERS": "1"},
        f"{url}/readyz",
    ):
        yield url


def _score(out: Path, data: str, *extra: str) -> Any:
    from valuecast.cli import app

    result = CliRunner().invoke(app, ["score", "--data", data, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def hillstrom_batch(uplift_store: dict[str, Any]) -> tuple[Path, str]:
    """`make score DATA=hillstrom` into the module's folder, and what it printed."""
    out = uplift_store["folder"] / "hillstrom-scores"
    result = _score(out, "hillstrom", "--as-of", "2024-01-01")
    return out, result.output


def _json(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def test_api_and_batch_give_the_same_next_best_action(server: str, hillstrom_batch: tuple[Path, str]) -> None:
    """The same Hillstrom customers through the running API (attributes as JSON numbers and text)
    and through `make score` (the file's rows): the same action, value, micro segment and uplift."""
    out, _ = hillstrom_batch
    rows = hillstrom_rows().iloc[7::311].head(200)  # 200 customers across the file
    customers = [
        {"customer_id": f"row-{index + 1}", "attributes": {k: _json(v) for k, v in row.items()}}
        for index, row in rows.drop(columns=OUTCOME_COLUMNS).iterrows()
    ]
    body = {"dataset": "hillstrom", "as_of": "2024-01-01", "customers": customers}
    answer = httpx.post(f"{server}/score", json=body, headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["models"] == {"uplift": "1"} and answer.json()["segment_version"] is None
    api = pd.DataFrame(answer.json()["customers"]).set_index("customer_id")
    batch = pd.read_parquet(out / "scores.parquet").set_index("customer_id").loc[api.index]
    for column in ("next_best_action", "micro_segment", "suppressed"):
        assert api[column].tolist() == batch[column].tolist(), column
    for column in ("expected_incremental_value", "uplift_mens_e_mail", "uplift_womens_e_mail", "response_probability"):
        np.testing.assert_allclose(api[column].to_numpy(float), batch[column].to_numpy(float), rtol=0, atol=1e-12)
    assert set(api["next_best_action"]) <= {*ARMS, "no_action"} and api["next_best_action"].nunique() >= 2
    # the next best action is the arm of highest value (10 per visit less the 0.25 an e-mail costs)
    values = np.column_stack([10 * api[f"uplift_{s}"].to_numpy(float) - 0.25 for s in ("mens_e_mail", "womens_e_mail")])
    best = np.where(values.max(axis=1) > 0, np.asarray(ARMS, dtype=object)[values.argmax(axis=1)], "no_action")
    assert api["next_best_action"].tolist() == best.tolist()


def test_batch_writes_the_action_mix_and_one_list_per_action(hillstrom_batch: tuple[Path, str]) -> None:
    out, printed = hillstrom_batch
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 64_000 and scores["customer_id"].is_unique
    for column in ("next_best_action", "expected_incremental_value", "micro_segment", "uplift_mens_e_mail"):
        assert column in scores.columns, column
    summary = json.loads((out / "summary.json").read_text())
    counts = scores["next_best_action"].value_counts().to_dict()
    assert summary["uplift"]["actions"] == counts and sum(counts.values()) == 64_000
    assert summary["models"] == {"uplift": "1"} and summary["summary"]["customers"] == 64_000
    for arm, slug in zip(ARMS, ("mens_e_mail", "womens_e_mail"), strict=True):
        listed = pd.read_csv(out / "actions" / f"{slug}.csv")
        assert set(listed["next_best_action"]) == {arm} and len(listed) == counts[arm]
        assert listed["expected_incremental_value"].is_monotonic_decreasing
    assert not (out / "actions" / "no_action.csv").exists()
    assert "next best action" in printed and f"{counts['Mens E-Mail']:,}" in printed
    report = (out / "report.html").read_text()
    assert "Next best action" in report
    # the champion's Qini curve, from its run, as a figure of its own
    assert re.search(r'<img alt="Qini curve, primary arm and outcome" src="data:image/png;base64,', report)


@pytest.mark.parametrize(
    ("customer", "path", "reason"),
    [
        (
            {"transactions": [{"timestamp": "2024-01-01", "amount": 5}]},
            "customers[0].transactions",
            "leave out transactions",
        ),
        ({"attributes": {"colour": "red"}}, "customers[0].attributes.colour", "not an attribute of the uplift model"),
        ({"attributes": {"segment": "Mens E-Mail"}}, "customers[0].attributes.segment", "campaign's arm column"),
        ({"attributes": {"visit": 1}}, "customers[0].attributes.visit", "campaign's visit column"),
        ({"attributes": {"history": "a lot"}}, "customers[0].attributes.history", "is a number"),
    ],
)
def test_unusable_attributes_are_422_naming_the_field(
    server: str, customer: dict[str, Any], path: str, reason: str
) -> None:
    body = {"dataset": "hillstrom", "customers": [{"customer_id": "c1", **customer}]}
    answer = httpx.post(f"{server}/score", json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 422, answer.text
    assert set(answer.json()) == {"error", "problems"}
    [problem] = answer.json()["problems"]
    assert problem["path"] == path and reason in problem["reason"]


def test_flags_and_contact_dates_suppress_uplift_customers(server: str) -> None:
    attributes = hillstrom_rows(1).drop(columns=OUTCOME_COLUMNS).iloc[0].map(_json).to_dict()
    body = {
        "dataset": "hillstrom",
        "as_of": "2024-01-31",
        "customers": [
            {"customer_id": "plain", "attributes": attributes},
            {"customer_id": "opted", "attributes": {**attributes, "opted_out": "yes"}},
            {"customer_id": "mailed", "attributes": {**attributes, "last_contacted": "2024-01-25"}},
            {"customer_id": "nothing known", "attributes": {}},
        ],
    }
    answer = httpx.post(f"{server}/score", json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    rows = {c["customer_id"]: c for c in answer.json()["customers"]}
    assert rows["plain"]["next_best_action"] in ARMS and not rows["plain"]["suppressed"]
    assert rows["opted"]["suppression_reason"] == "opted out"
    assert rows["mailed"]["suppression_reason"] == "contacted in the last 14 days"
    for name in ("opted", "mailed"):  # the uplift stays; no action and no value
        assert rows[name]["next_best_action"] == "no_action" and rows[name]["expected_incremental_value"] == 0
        assert rows[name]["uplift_mens_e_mail"] == rows["plain"]["uplift_mens_e_mail"]
    assert rows["nothing known"]["next_best_action"] in [*ARMS, "no_action"]


def test_models_and_the_cli_list_the_uplift_champion_with_its_qini_figures(
    server: str, uplift_store: dict[str, Any]
) -> None:
    from valuecast.cli import app

    ready = httpx.get(f"{server}/readyz").json()
    assert ready["datasets"]["hillstrom"]["uplift"] and not ready["datasets"]["hillstrom"]["customers"]
    assert ready["datasets"]["shop"]["uplift"] and ready["datasets"]["shop"]["customers"]
    models = httpx.get(f"{server}/models", headers=AUTH).json()
    served = {m["name"]: m for m in models["models"]}
    hillstrom = served["valuecast-uplift-hillstrom"]
    assert (hillstrom["dataset"], hillstrom["family"], hillstrom["version"]) == ("hillstrom", "uplift", "1")
    metrics = hillstrom["metrics"]
    assert metrics["qini_auc_lo"] <= metrics["qini_auc"] <= metrics["qini_auc_hi"]
    assert {"uplift_at_30", "womens_e_mail_visit_winner_qini_auc", "mens_e_mail_visit_winner_qini_auc"} <= set(metrics)
    assert models["problems"] == []

    listed = CliRunner().invoke(app, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "valuecast-uplift-hillstrom")
    assert row["metric"] == "qini_auc" and row["test_value"] == pytest.approx(metrics["qini_auc"])
    assert row["best_baseline"] in ("random", "response_model") and row["best_baseline_value"] is not None


# ------------------------------------------------------------------------------------------------
# A dataset with customer-value and uplift champions


def _shop_request(shop: Path, ids: list[str]) -> dict[str, Any]:
    orders = pd.read_csv(shop.parent / "orders.csv", dtype={"customer_id": str})
    campaign = pd.read_csv(shop.parent / "campaign.csv", dtype={"cid": str}).set_index("cid")
    flags = pd.read_csv(shop.parent / "customers.csv", dtype={"cid": str}).set_index("cid")["dnc"]
    customers = []
    for customer_id in ids:
        rows = orders.loc[orders["customer_id"] == customer_id]
        attributes: dict[str, Any] = {}
        if customer_id in campaign.index:
            attributes = campaign.drop(columns=OUTCOME_COLUMNS).loc[customer_id].map(_json).to_dict()
        if customer_id in flags.index:
            attributes["do_not_contact"] = int(flags[customer_id] == "yes")
        customers.append(
            {
                "customer_id": customer_id,
                "transactions": [
                    {"timestamp": t, "amount": float(a)} for t, a in zip(rows["timestamp"], rows["amount"], strict=True)
                ],
                "attributes": attributes,
            }
        )
    return {"dataset": "shop", "as_of": SERVING_AS_OF, "customers": customers}


def test_a_dataset_with_both_answers_both_sets_of_columns_in_api_and_batch(
    server: str, uplift_store: dict[str, Any]
) -> None:
    shop = uplift_store["shop"]
    out = uplift_store["folder"] / "shop-scores"
    _score(out, str(shop), "--as-of", SERVING_AS_OF)
    batch = pd.read_parquet(out / "scores.parquet").set_index("customer_id")
    assert len(batch) == 220  # 200 with orders, 20 only in the campaign log (scored as new customers)
    ids = [*batch.index[50:90], *batch.index[:12:3], "new-3"]  # with and without a campaign row, flagged
    answer = httpx.post(f"{server}/score", json=_shop_request(shop, ids), headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    api = pd.DataFrame(answer.json()["customers"]).set_index("customer_id")
    assert answer.json()["models"] == {"churn": "1", "propensity": "1", "clv": "1", "uplift": "1"}
    expected = batch.loc[api.index]
    with_campaign = api.index.isin(pd.read_csv(shop.parent / "campaign.csv", dtype={"cid": str})["cid"])
    assert with_campaign.sum() == 41
    for column in ("clv", "churn_probability", "expected_incremental_value", "uplift_womens_e_mail"):
        np.testing.assert_allclose(
            api[column].to_numpy(float), expected[column].to_numpy(float), rtol=0, atol=1e-9, err_msg=column
        )
    for column in ("value_tier", "segment", "action", "suppressed", "suppression_reason", "next_best_action"):
        got = [None if v is None or v != v else v for v in api[column].tolist()]
        assert got == [None if v is None or v != v else v for v in expected[column].tolist()], column
    # the customers table's do-not-contact flag suppresses the uplift action too
    flagged = expected["suppression_reason"] == "do not contact"
    assert flagged.any() and set(expected.loc[flagged & with_campaign, "next_best_action"]) <= {"no_action"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["uplift"]["customers"] == 170 and "segments" in summary["summary"]
    listed = pd.concat(pd.read_csv(p, dtype={"customer_id": str}) for p in (out / "actions").glob("*.csv"))
    assert not set(listed["customer_id"]) & set(batch.index[batch["suppressed"]])
    assert {"value_tier", "segment"} <= set(listed.columns)


# ------------------------------------------------------------------------------------------------
# Do-not-disturb in the suppression rules (no store)


def _rules(mode: str | None) -> Any:
    from serving.segments.rules import load_rules

    rules = load_rules()
    return rules.model_copy(update={"suppression": rules.suppression.model_copy(update={"do_not_disturb": mode})})


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("chosen_arm", ["", "do not disturb", "", "opted out"]),
        ("any_arm", ["do not disturb", "do not disturb", "", "opted out"]),
        ("every_arm", ["", "do not disturb", "", "opted out"]),
        (None, ["", "", "", "opted out"]),
    ],
)
def test_do_not_disturb_joins_the_suppression_reasons(mode: str | None, expected: list[str]) -> None:
    """Four customers: harmed by the men's e-mail only (recommended the women's), harmed by both,
    harmed by neither, and opted out (a flag is the first reason, whatever the arms do)."""
    from serving.segments.micro import suppress

    scored = pd.DataFrame(
        {
            "next_best_action": ["Womens E-Mail", "no_action", "Mens E-Mail", "Mens E-Mail"],
            "expected_incremental_value": [0.4, 0.0, 0.3, 0.3],
            "micro_segment": ["persuadable", "do_not_disturb", "persuadable", "do_not_disturb"],
            "micro_segment_mens_e_mail": ["do_not_disturb", "do_not_disturb", "persuadable", "do_not_disturb"],
            "micro_segment_womens_e_mail": ["persuadable", "do_not_disturb", "lost_cause", "do_not_disturb"],
        }
    )
    reasons = np.array(["", "", "", "opted out"], dtype=object)
    out, found = suppress(scored, reasons, SimpleNamespace(arms=ARMS), _rules(mode))  # type: ignore[arg-type]
    assert found.tolist() == expected
    suppressed = np.array([r != "" for r in expected])
    assert (out.loc[suppressed, "next_best_action"] == "no_action").all()
    assert (out.loc[suppressed, "expected_incremental_value"] == 0).all()
    assert out.loc[~suppressed, "next_best_action"].tolist() == scored.loc[~suppressed, "next_best_action"].tolist()
    assert reasons.tolist() == ["", "", "", "opted out"]  # the caller's array is unchanged


def test_choosing_the_dataset_of_a_score_request_with_uplift_champions() -> None:
    """/score is answered by customer models or an uplift model; a dataset with both needs both
    working; naming a dataset with neither says so. Without a store: champions are stand-ins."""
    from serving.scoring import (
        CUSTOMER_FAMILIES,
        UPLIFT_FAMILIES,
        Catalog,
        Champions,
        DatasetChoiceError,
        NotReadyError,
        Served,
        choose_dataset,
    )
    from serving.segments.rules import freeze, load_rules

    def served(family: str, dataset: str) -> Served:
        return Served(family, f"valuecast-{family}-{dataset}", "1", "r", "t", {}, dataset, "s_learner", None)

    rules = load_rules()
    campaign = Champions("campaign", {"uplift": served("uplift", "campaign")}, rules=rules)
    leads = Champions("crm", {"lead_score": served("lead_score", "crm")})
    catalog = Catalog({c.dataset: c for c in (campaign, leads)})
    assert choose_dataset(catalog, None, CUSTOMER_FAMILIES, UPLIFT_FAMILIES).dataset == "campaign"
    with pytest.raises(DatasetChoiceError, match=r"'crm' has no churn, propensity, clv model .*, nor an uplift model"):
        choose_dataset(catalog, "crm", CUSTOMER_FAMILIES, UPLIFT_FAMILIES)
    with pytest.raises(DatasetChoiceError, match="'campaign' has no churn, propensity, clv model"):
        choose_dataset(catalog, "campaign", CUSTOMER_FAMILIES)  # an endpoint that takes customer models only

    frozen = freeze(pd.DataFrame({"clv": [1.0, 2.0], "total_spend": [1.0, 2.0]}), rules, "test")
    broken = Champions("shop", {f: served(f, "shop") for f in CUSTOMER_FAMILIES}, frozen=frozen)
    broken.problems["uplift"] = "valuecast-uplift-shop v2 failed to load: OSError: gone"
    broken.broken.add("uplift")
    with pytest.raises(NotReadyError, match="uplift: valuecast-uplift-shop v2 failed to load"):
        choose_dataset(Catalog({"shop": broken}), "shop", CUSTOMER_FAMILIES, UPLIFT_FAMILIES)
    unruled = Champions("campaign", {"uplift": served("uplift", "campaign")}, problems={"segments": "bad rules"})
    with pytest.raises(NotReadyError, match="bad rules"):
        choose_dataset(Catalog({"campaign": unruled}), None, CUSTOMER_FAMILIES, UPLIFT_FAMILIES)


def test_action_lists_put_valuable_customers_at_risk_first(tmp_path: Path) -> None:
    """Where the dataset has value tiers, a tier-A customer at high risk whom the arm persuades is
    first on the arm's list, before customers with a higher expected value in lower tiers; the
    suppressed and no_action are on no list. A tiny inline frame; the order is set by hand."""
    from serving.batch import action_lists

    scores = pd.DataFrame(
        {
            "customer_id": ["d-hi", "a-low", "a-high", "b-high", "quiet", "opted"],
            "next_best_action": ["Mail", "Mail", "Mail", "Mail", "no_action", "no_action"],
            "expected_incremental_value": [2.0, 0.9, 0.5, 1.5, 0.0, 0.0],
            "micro_segment": ["persuadable"] * 6,
            "uplift_mail": [0.3, 0.1, 0.08, 0.2, 0.0, 0.3],
            "value_tier": ["D", "A", "A", "B", "A", "A"],
            "risk_band": ["high", "low", "high", "high", "high", "high"],
            "segment": ["deprioritize", "maintain", "protect", "grow", "protect", "protect"],
            "suppressed": [False, False, False, False, False, True],
        }
    )
    counts = action_lists(scores, None, tmp_path / "actions")
    assert counts == {"Mail": 4}
    listed = pd.read_csv(tmp_path / "actions" / "mail.csv")
    assert listed["customer_id"].tolist() == ["a-high", "a-low", "b-high", "d-hi"]
    assert list(listed.columns[:5]) == [
        "customer_id",
        "next_best_action",
        "expected_incremental_value",
        "micro_segment",
        "uplift_mail",
    ]
    without_tiers = action_lists(scores.drop(columns=["value_tier", "risk_band", "segment"]), None, tmp_path / "plain")
    assert without_tiers == {"Mail": 4}
    assert pd.read_csv(tmp_path / "plain" / "mail.csv")["customer_id"].tolist() == ["d-hi", "b-high", "a-low", "a-high"]
