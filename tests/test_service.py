"""The scoring API: the real BentoML service on a free port, real models in a real MLflow store."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from features.config import PROJECT_ROOT
from features.io import Dataset, read_raw_table, table_path

from .conftest import free_port, load_real, register_copy, running_server

KEY = "test-key-123"
AS_OF = "1998-07-01"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def server(champion_store: dict[str, str]) -> Iterator[str]:
    port = free_port()
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    url = f"http://127.0.0.1:{port}"
    with running_server(
        [bentoml, "serve", "serving.service:ValueService", "--host", "127.0.0.1", "--port", str(port)],
        {**os.environ, **champion_store, "VALUECAST_API_KEY": KEY, "VALUECAST_WORKERS": "2"},
        f"{url}/readyz",
    ):
        yield url


def request_for(dataset: Dataset, ids: list[str]) -> dict[str, object]:
    assert dataset.transactions is not None
    tx = dataset.transactions.frame
    tx = tx.loc[tx["customer_id"].astype(str).isin(ids)]
    customers = []
    for customer_id in ids:
        rows = tx.loc[tx["customer_id"].astype(str) == customer_id]
        customers.append(
            {
                "customer_id": customer_id,
                "transactions": [
                    {"timestamp": t.isoformat(), "amount": float(a)}
                    for t, a in zip(rows["timestamp"], rows["amount"], strict=True)
                ],
            }
        )
    return {"as_of": AS_OF, "customers": customers}


def test_health_ready_and_models(server: str) -> None:
    assert httpx.get(f"{server}/healthz").status_code == 200
    ready = httpx.get(f"{server}/readyz")
    assert ready.status_code == 200 and ready.json()["worker"] in (1, 2)  # two workers, numbered from 1
    states = ready.json()["datasets"]
    assert states["cdnow_sample"]["customers"] and not states["cdnow_sample"]["leads"]
    assert states["x_education"]["leads"] and not states["x_education"]["customers"]
    denied = httpx.get(f"{server}/models")
    assert denied.status_code == 401 and "API key" in denied.json()["error"]
    models = httpx.get(f"{server}/models", headers=AUTH).json()
    by_name = {m["name"]: m for m in models["models"]}
    assert set(by_name) == {
        "valuecast-churn-cdnow_sample",
        "valuecast-propensity-cdnow_sample",
        "valuecast-clv-cdnow_sample",
        "valuecast-lead-score-x_education",
    }
    clv, lead = by_name["valuecast-clv-cdnow_sample"], by_name["valuecast-lead-score-x_education"]
    assert (clv["dataset"], clv["family"]) == ("cdnow_sample", "clv") and "gini_normalized" in clv["metrics"]
    assert (lead["dataset"], lead["family"]) == ("x_education", "lead_score") and lead["metrics"]["roc_auc"] > 0.85
    churn = by_name["valuecast-churn-cdnow_sample"]
    assert len(churn["run_id"]) == 32 and churn["trained_at"].startswith("20") and churn["candidate"]
    assert models["datasets"]["cdnow_sample"]["segment_version"]
    assert models["datasets"]["x_education"]["segment_version"] is None and models["problems"] == []


def test_one_server_scores_each_dataset_with_its_own_champions(server: str) -> None:
    """Started once: /score answers with the CDNOW (sample) champions, /score_leads with X Education's,
    whether the request names its dataset or leaves it to the only dataset that can answer."""
    models = httpx.get(f"{server}/models", headers=AUTH).json()["models"]
    versions = {(m["dataset"], m["family"]): m["version"] for m in models}
    history = [{"timestamp": "1998-01-05", "amount": 9}]
    body = {"as_of": AS_OF, "customers": [{"customer_id": "a", "transactions": history}]}
    leads = {"leads": [{"lead_id": "L1", "Lead Origin": "API", "TotalVisits": 3}]}
    for named in ({}, {"dataset": "cdnow_sample"}):
        answer = httpx.post(f"{server}/score", json={**body, **named}, headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["dataset"] == "cdnow_sample"
        assert answer.json()["models"] == {f: versions[("cdnow_sample", f)] for f in ("churn", "propensity", "clv")}
    for named in ({}, {"dataset": "x_education"}):
        answer = httpx.post(f"{server}/score_leads", json={**leads, **named}, headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["dataset"] == "x_education"
        assert answer.json()["model_version"] == versions[("x_education", "lead_score")]


@pytest.mark.parametrize(
    ("endpoint", "body", "reason"),
    [
        ("/score", {"dataset": "online_retail", "customers": [{"customer_id": "a"}]}, "not served here"),
        ("/score", {"dataset": "x_education", "customers": [{"customer_id": "a"}]}, "no churn, propensity, clv"),
        ("/score_leads", {"dataset": "cdnow_sample", "leads": [{"lead_id": "a"}]}, "no lead_score model"),
        ("/score", {"dataset": "../segments", "customers": [{"customer_id": "a"}]}, "should match pattern"),
    ],
)
def test_a_dataset_that_cannot_answer_is_422_naming_the_field(
    server: str, endpoint: str, body: dict[str, object], reason: str
) -> None:
    answer = httpx.post(f"{server}{endpoint}", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert set(answer.json()) == {"error", "problems"}
    [problem] = answer.json()["problems"]
    assert problem["path"] == "dataset" and problem["value"] == body["dataset"] and reason in problem["reason"]
    if "pattern" not in reason:  # the choices this endpoint has
        choices = "x_education" if endpoint == "/score_leads" else "cdnow_sample"
        assert problem["reason"].endswith(f"choose one of: {choices}")


def test_api_and_batch_scoring_agree(server: str, champion_store: dict[str, str]) -> None:
    from serving.scoring import load_champions, score_customers

    dataset = load_real("cdnow_sample")
    assert dataset.transactions is not None
    ids = list(pd.unique(dataset.transactions.frame["customer_id"].astype(str)))[::47][:50]
    answer = httpx.post(f"{server}/score", json=request_for(dataset, ids), headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    api = pd.DataFrame(answer.json()["customers"]).set_index("customer_id")
    batch = score_customers(load_champions("cdnow_sample"), dataset, AS_OF, ids).set_index("customer_id")
    for column in ("churn_probability", "purchase_probability", "p_alive", "expected_orders", "clv", "value_at_risk"):
        np.testing.assert_allclose(
            api[column].to_numpy(float), batch.loc[api.index, column].to_numpy(float), rtol=0, atol=1e-9
        )
    for column in ("value_tier", "segment", "action", "suppressed", "risk_band", "potential_band"):
        assert api[column].tolist() == batch.loc[api.index, column].tolist(), column
    assert answer.json()["models"] == {"churn": "1", "propensity": "1", "clv": "1"}
    assert len(set(api["segment"])) >= 2


def test_plain_histories_score_exactly_as_the_pandas_path(champion_store: dict[str, str]) -> None:
    """The API's path for plain purchase histories (no pandas) against score_customers, the batch
    path, on real customers plus every edge: no history, only future rows, refunds only, a time zone,
    suppression attributes, an attribute the models do not read."""
    from serving.api import ScoreRequest, customer_attributes, transactions_frame
    from serving.histories import histories_of
    from serving.scoring import histories_problem, load_champions, score_customers, score_histories
    from training.common import request_dataset

    dataset = load_real("cdnow_sample")
    assert dataset.transactions is not None
    ids = list(pd.unique(dataset.transactions.frame["customer_id"].astype(str)))[5::31][:60]
    body = request_for(dataset, ids)
    customers = body["customers"]
    assert isinstance(customers, list)
    customers += [
        {"customer_id": "none", "transactions": []},
        {"customer_id": "future", "transactions": [{"timestamp": "1999-01-01", "amount": 5.0}]},
        {"customer_id": "refunds", "transactions": [{"timestamp": "1998-06-20", "amount": -12.0}]},
        {
            "customer_id": "zoned",
            "transactions": [
                {"timestamp": "1998-06-30T23:30:00-05:00", "amount": 20.0},  # 1998-07-01 in UTC: not history
                {"timestamp": "1998-03-02T01:00:00+02:00", "amount": 35.5},
                {"timestamp": "1998-06-15", "amount": -10.0},
            ],
        },
        {"customer_id": "opted", "attributes": {"opted_out": "Yes", "last_contacted": "1998-06-25", "tier": "gold"}},
        {
            "customer_id": "complained",
            "transactions": [{"timestamp": "1997-12-01", "amount": 80.0}],
            "attributes": {"last_complaint": "1998-06-29T23:00:00Z", "do_not_contact": 0},
        },
    ]
    parsed = ScoreRequest.model_validate(body)
    champions = load_champions("cdnow_sample")
    assert histories_problem(champions) is None
    histories = histories_of(parsed, set())
    assert histories is not None
    fast = score_histories(
        champions,
        histories.ids,
        histories.code,
        histories.ts,
        histories.amount,
        pd.Timestamp(AS_OF),
        histories.attributes,
    )
    frame = transactions_frame(parsed)
    reference = score_customers(
        champions,
        request_dataset(champions.models["clv"].model.dataset_config, frame),
        AS_OF,
        histories.ids,
        attributes=customer_attributes(parsed),
    )
    assert list(fast) == list(reference.columns)
    for column in reference.columns:
        expected = reference[column].to_numpy()
        if expected.dtype.kind == "f":
            np.testing.assert_array_equal(fast[column].astype(float), expected, err_msg=column)
        else:
            got = [None if v is None or v != v else v for v in fast[column].tolist()]
            assert got == [None if v is None or v != v else v for v in expected.tolist()], column
    by_id = {c: i for i, c in enumerate(histories.ids)}
    assert fast["suppression_reason"][by_id["opted"]] == "opted out"
    assert fast["suppression_reason"][by_id["complained"]] == "complaint in the last 30 days"
    assert fast["suppression_reason"][by_id["refunds"]] == "refund in the last 30 days"
    assert fast["clv"][by_id["none"]] == fast["clv"][by_id["future"]]  # both without history as of AS_OF

    # Categories take the array path too; order ids, a category the dataset maps, or attributes the
    # dataset's row checks read go the pandas way.
    def one(**fields: object) -> ScoreRequest:
        row = {"timestamp": "1998-01-05", "amount": 3, **fields}
        return ScoreRequest.model_validate({"customers": [{"customer_id": "c", "transactions": [row]}]})

    with_category = one(category="x")
    got = histories_of(with_category, set())
    assert got is not None and got.category_names is not None and got.category is not None
    assert list(got.category_names[got.category]) == ["x"]
    assert histories_of(with_category, set(), with_categories=False) is None
    assert histories_of(one(order_id="o1"), set()) is None
    assert histories_of(parsed, {"tier"}) is None


def test_categories_on_the_array_path_give_the_features_of_the_row_checks() -> None:
    from features.config import load_dataset_config
    from features.transactions import compute_transaction_features, feature_arrays
    from serving.api import ScoreRequest, transactions_frame
    from serving.histories import histories_of
    from training.common import request_dataset

    rows = [
        ("a", "1998-01-05", 30.0, "Rock"),
        ("a", "1998-02-05", 12.5, "Jazz"),
        ("a", "1998-03-01", 7.0, "NA"),  # the dataset's missing-value marker: no category
        ("b", "1998-04-01", 50.0, "Jazz"),
        ("b", "1998-05-01", -10.0, "Pop"),
        ("c", "1998-06-01", 20.0, None),
    ]
    customers: dict[str, list[dict[str, object]]] = {}
    for customer, day, amount, category in rows:
        row: dict[str, object] = {"timestamp": day, "amount": amount}
        if category is not None:
            row["category"] = category
        customers.setdefault(customer, []).append(row)
    parsed = ScoreRequest.model_validate(
        {"customers": [{"customer_id": c, "transactions": t} for c, t in customers.items()]}
    )
    config = load_dataset_config("cdnow_sample").model_copy(update={"missing_values": ["NA"]})
    as_of, chosen = pd.Timestamp("1998-07-01"), ["Jazz", "Rock", "(none)"]
    histories = histories_of(parsed, set(), config.missing_values)
    assert histories is not None and histories.category is not None
    fast = feature_arrays(
        histories.code,
        len(histories.ids),
        histories.ts,
        histories.amount,
        as_of,
        categories=chosen,
        category_codes=histories.category,
        category_names=histories.category_names,
    )
    checked = request_dataset(config, transactions_frame(parsed)).transactions
    assert checked is not None
    reference = compute_transaction_features(checked.frame, as_of, categories=chosen).set_index("customer_id")
    reference = reference.loc[histories.ids]
    shares = [c for c in reference.columns if c.startswith("category_share_")]
    assert len(shares) == 3
    for column in reference.columns:
        if column != "as_of":
            np.testing.assert_allclose(fast[column], reference[column].to_numpy(dtype=float), err_msg=column)


def test_positive_probability_equals_predict_proba(champion_store: dict[str, str]) -> None:
    from serving.scoring import load_champions
    from training.columns import feature_matrix
    from training.common import positive_probability

    champions = load_champions("cdnow_sample")
    model = champions.models["churn"].model
    features = model.features(load_real("cdnow_sample"), AS_OF)
    fitted = [*model.classifiers.values(), *champions.models["propensity"].model.classifiers.values()]
    estimators = [f for one in fitted for f in (one.parts or [one]) if hasattr(f.estimator, "predict_proba")]
    for one in estimators:  # whatever won: calibrated xgboost, a logistic regression pipeline, a blend's parts
        x = np.ascontiguousarray(feature_matrix(features, one.columns))  # row-major, as positive_probability computes
        classifier = one.estimator
        np.testing.assert_array_equal(positive_probability(classifier, x), classifier.predict_proba(x)[:, 1])
        np.testing.assert_array_equal(positive_probability(classifier, x[:1]), classifier.predict_proba(x[:1])[:, 1])
        # a DataFrame's matrix is column-major: the same scores as its rows (batch and API agree)
        np.testing.assert_array_equal(
            positive_probability(classifier, np.asfortranarray(x)), positive_probability(classifier, x)
        )


def test_new_customers_unknown_categories_and_suppression(server: str) -> None:
    body = {
        "as_of": AS_OF,
        "customers": [
            {"customer_id": "brand-new", "transactions": []},
            {
                "customer_id": "odd-category",
                "transactions": [{"timestamp": "1998-01-05T10:00:00", "amount": 30, "category": "never seen"}],
            },
            {"customer_id": "opted", "attributes": {"opted_out": True}},
            {
                "customer_id": "refunder",
                "transactions": [
                    {"timestamp": "1998-05-01", "amount": 40},
                    {"timestamp": "1998-06-20", "amount": -40},
                ],
            },
        ],
    }
    answer = httpx.post(f"{server}/score", json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    rows = {c["customer_id"]: c for c in answer.json()["customers"]}
    assert 0 <= rows["brand-new"]["churn_probability"] <= 1 and rows["brand-new"]["clv"] >= 0
    assert rows["odd-category"]["clv"] > 0
    assert rows["opted"]["suppressed"] and rows["opted"]["suppression_reason"] == "opted out"
    assert rows["opted"]["action"] == "no marketing action" and rows["opted"]["clv"] is not None
    assert rows["refunder"]["suppression_reason"] == "refund in the last 30 days"
    assert not rows["brand-new"]["suppressed"]


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        ({"customers": [{"customer_id": "", "transactions": []}]}, ["customers[0].customer_id"]),
        (
            {
                "as_of": "1998-13-01",
                "customers": [{"customer_id": "a", "transactions": [{"timestamp": "x", "amount": "ten"}]}],
            },
            ["as_of", "customers[0].transactions[0].timestamp", "customers[0].transactions[0].amount"],
        ),
        ({"customers": "everyone"}, ["customers"]),
        ({"customers": []}, ["customers"]),
        ({"customers": [{"customer_id": "a"}, {"customer_id": "a"}]}, ["customers"]),
        (
            {"customers": [{"customer_id": "a", "transactions": [{"timestamp": "1998-01-01"}]}]},
            ["customers[0].transactions[0].amount"],
        ),
        ({"customers": [{"customer_id": "a", "colour": "red"}]}, ["customers[0].colour"]),
        ([1, 2, 3], ["(body)"]),
    ],
)
def test_bad_input_is_422_naming_each_field(server: str, body: object, paths: list[str]) -> None:
    answer = httpx.post(f"{server}/score", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    found = [p["path"] for p in answer.json()["problems"]]
    assert found == paths
    assert all(p["reason"] for p in answer.json()["problems"])


def test_non_json_and_non_finite_amounts_are_422(server: str) -> None:
    garbage = httpx.post(f"{server}/score", content=b"{not json", headers=AUTH)
    assert garbage.status_code == 422 and "not valid JSON" in garbage.json()["error"]
    nan = '{"customers": [{"customer_id": "a", "transactions": [{"timestamp": "1998-01-01", "amount": NaN}]}]}'
    answer = httpx.post(f"{server}/score", content=nan.encode(), headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["problems"][0]["path"] == "customers[0].transactions[0].amount"


def test_too_many_customers_is_413(server: str) -> None:
    body = {"customers": [{"customer_id": str(i)} for i in range(10_001)]}
    answer = httpx.post(f"{server}/score", json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 413 and "at most 10,000" in answer.json()["error"]


def test_requests_without_the_key_get_401(server: str) -> None:
    body = {"customers": [{"customer_id": "a"}]}
    assert httpx.post(f"{server}/score", json=body).status_code == 401
    assert httpx.post(f"{server}/score", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.post(f"{server}/score", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.post(f"{server}/score_leads", json={"leads": [{"lead_id": "x"}]}).status_code == 401
    assert httpx.post(f"{server}/reload").status_code == 401


def _raw_leads(rows: int = 5) -> pd.DataFrame:
    dataset = load_real("x_education")
    table = dataset.config.leads
    assert table is not None
    return read_raw_table(table_path(dataset.config, table), table).drop(columns=["_row"]).head(rows)


def test_lead_scores_match_the_logged_model(server: str, champion_store: dict[str, str]) -> None:
    import mlflow

    raw = _raw_leads()
    leads = [
        {"lead_id": row.pop("Prospect ID"), **{k: v for k, v in row.items() if isinstance(v, str)}}
        for row in raw.to_dict(orient="records")
    ]
    answer = httpx.post(f"{server}/score_leads", json={"leads": leads}, headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    scored = answer.json()["leads"]
    model = mlflow.pyfunc.load_model("models:/valuecast-lead-score-x_education@champion").unwrap_python_model()
    expected = model.predict(None, raw.drop(columns=["Converted"]))
    np.testing.assert_allclose([s["probability"] for s in scored], expected["probability"], rtol=0, atol=1e-12)
    assert [s["tier"] for s in scored] == expected["tier"].tolist()
    assert all(0 <= s["score"] <= 100 and len(s["reasons_up"]) <= 3 and len(s["reasons_down"]) <= 3 for s in scored)


def test_bad_lead_values_are_422_and_unknown_levels_are_scored(server: str) -> None:
    bad = {"leads": [{"lead_id": "L1", "Do Not Email": "Maybe"}]}
    answer = httpx.post(f"{server}/score_leads", json=bad, headers=AUTH)
    assert answer.status_code == 422
    problem = answer.json()["problems"][0]
    assert problem["path"] == "leads[0].Do Not Email" and problem["value"] == "Maybe"
    assert "not one of ['No', 'Yes']" in problem["reason"]
    odd = {"leads": [{"lead_id": "L2", "Lead Origin": "a brand new origin", "TotalVisits": 3, "colour": "red"}]}
    fine = httpx.post(f"{server}/score_leads", json=odd, headers=AUTH)
    assert fine.status_code == 200 and 0 <= fine.json()["leads"][0]["probability"] <= 1
    missing_id = httpx.post(f"{server}/score_leads", json={"leads": [{"Lead Origin": "API"}]}, headers=AUTH)
    assert missing_id.status_code == 422 and missing_id.json()["problems"][0]["path"] == "leads"


def served_lead_version(server: str) -> str:
    models = httpx.get(f"{server}/models", headers=AUTH).json()["models"]
    return str(next(m["version"] for m in models if m["family"] == "lead_score"))


def test_reload_switches_to_a_new_champion_without_dropping_requests(
    server: str, champion_store: dict[str, str]
) -> None:
    import mlflow

    from training.run import train_and_log

    second = train_and_log("lead_score", "x_education", echo=lambda _: None)
    assert second.promotion.version != served_lead_version(server)  # the API serves what it loaded
    mlflow.MlflowClient(champion_store["MLFLOW_TRACKING_URI"]).set_registered_model_alias(
        "valuecast-lead-score-x_education", "champion", second.promotion.version
    )

    statuses: list[int] = []
    stop = threading.Event()

    def keep_scoring() -> None:
        while not stop.is_set():
            statuses.append(
                httpx.post(
                    f"{server}/score_leads", json={"leads": [{"lead_id": "x"}]}, headers=AUTH, timeout=30
                ).status_code
            )

    threads = [threading.Thread(target=keep_scoring) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        reloaded = httpx.post(f"{server}/reload", headers=AUTH, timeout=60)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["versions"]["x_education"]["lead_score"] == second.promotion.version
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses and set(statuses) == {200}
    # every worker switches (the stamp file tells the ones that did not get the reload request)
    seen = {
        next(
            m["version"]
            for m in httpx.get(f"{server}/models", headers=AUTH).json()["models"]
            if m["family"] == "lead_score"
        )
        for _ in range(8)
    }
    assert seen == {second.promotion.version}
    answer = httpx.post(f"{server}/score_leads", json={"leads": [{"lead_id": "x"}]}, headers=AUTH)
    assert answer.json()["model_version"] == second.promotion.version


def test_promote_and_rollback_change_what_the_api_serves_after_reload(
    server: str, champion_store: dict[str, str]
) -> None:
    """`make promote` / `make rollback` move the alias; `make reload` makes the running API follow."""
    valuecast = str(Path(sys.executable).with_name("valuecast"))
    env = {**os.environ, **champion_store}

    def served() -> str:
        models = httpx.get(f"{server}/models", headers=AUTH).json()["models"]
        return str(next(m["version"] for m in models if m["family"] == "lead_score"))

    def move(*args: str) -> None:
        done = subprocess.run([valuecast, *args], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
        assert done.returncode == 0, done.stderr
        assert httpx.post(f"{server}/reload", headers=AUTH, timeout=60).status_code == 200

    import mlflow

    from training.run import train_and_log

    uri = champion_store["MLFLOW_TRACKING_URI"]
    lead_model = "name = 'valuecast-lead-score-x_education'"
    if len(mlflow.MlflowClient(uri, registry_uri=uri).search_model_versions(lead_model)) < 2:
        train_and_log("lead_score", "x_education", echo=lambda _: None)  # a second version to move to
    before = served()
    other = "1" if before != "1" else "2"
    move("promote", "--model", "lead_score", "--data", "x_education", "--version", other)
    assert served() == other
    move("rollback", "--model", "lead_score", "--data", "x_education")
    assert served() == before


def _catalog(default: str | None = None) -> object:
    """Two customer datasets (one whose clv model failed to load) and one lead dataset, without a store."""
    from serving.scoring import Catalog, Champions, Served
    from serving.segments.rules import freeze, load_rules

    def served(family: str, dataset: str) -> Served:
        return Served(family, f"valuecast-{family}-{dataset}", "1", "r", "t", {}, dataset, "xgboost", None)

    frozen = freeze(pd.DataFrame({"clv": [1.0, 2.0], "total_spend": [1.0, 2.0]}), load_rules(), "test")
    shop = Champions("shop", {f: served(f, "shop") for f in ("churn", "propensity", "clv")}, frozen=frozen)
    broken = Champions("broken", {f: served(f, "broken") for f in ("churn", "propensity")}, frozen=frozen)
    broken.problems["clv"] = "valuecast-clv-broken v3 failed to load: OSError: gone"
    broken.broken.add("clv")
    snapshot = Champions("telco", problems={"churn": "trained on a customer snapshot", "clv": "not registered"})
    leads = Champions("crm", {"lead_score": served("lead_score", "crm")})
    return Catalog({c.dataset: c for c in (shop, broken, leads, snapshot)}, default=default)


def test_choosing_the_dataset_of_a_request() -> None:
    from serving.scoring import CUSTOMER_FAMILIES, LEAD_FAMILIES, DatasetChoiceError, NotReadyError, choose_dataset

    catalog = _catalog()
    assert choose_dataset(catalog, None, LEAD_FAMILIES).dataset == "crm"  # the only one with leads
    assert choose_dataset(catalog, "shop", CUSTOMER_FAMILIES).dataset == "shop"
    with pytest.raises(DatasetChoiceError, match=r"several datasets score customers.*choose one of: broken, shop"):
        choose_dataset(catalog, None, CUSTOMER_FAMILIES)
    with pytest.raises(NotReadyError, match="clv: valuecast-clv-broken v3 failed to load"):
        choose_dataset(catalog, "broken", CUSTOMER_FAMILIES)  # served, but not whole: 503 with the reason
    with pytest.raises(DatasetChoiceError, match="'crm' has no churn, propensity, clv model") as unknown:
        choose_dataset(catalog, "crm", CUSTOMER_FAMILIES)
    assert unknown.value.value == "crm" and unknown.value.choices == ["broken", "shop"]
    with pytest.raises(DatasetChoiceError, match=r"'telco' has no .*\(churn: trained on a customer snapshot; clv: not"):
        choose_dataset(catalog, "telco", CUSTOMER_FAMILIES)
    with_default = _catalog(default="shop")
    assert choose_dataset(with_default, None, CUSTOMER_FAMILIES).dataset == "shop"
    assert choose_dataset(with_default, None, LEAD_FAMILIES).dataset == "crm"  # shop has no lead model
    with pytest.raises(NotReadyError, match="VALUECAST_DEFAULT_DATASET=gone is not served"):
        choose_dataset(_catalog(default="gone"), None, CUSTOMER_FAMILIES)


def test_served_datasets_come_from_the_environment_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from features.config import ConfigError
    from serving.scoring import configured_datasets, default_dataset

    monkeypatch.setenv("VALUECAST_DATASETS", " cdnow, x_education,cdnow ")
    assert configured_datasets() == ["cdnow", "x_education"]
    monkeypatch.setenv("VALUECAST_DATASETS", "cdnow,../etc")
    with pytest.raises(ConfigError, match=re.escape("VALUECAST_DATASETS: dataset name '../etc'")):
        configured_datasets()
    monkeypatch.setenv("VALUECAST_DEFAULT_DATASET", "Shop")
    with pytest.raises(ConfigError, match="VALUECAST_DEFAULT_DATASET: dataset name 'Shop'"):
        default_dataset()


def test_segment_files_live_in_their_datasets_folder(tmp_path: Path) -> None:
    from features.config import ConfigError
    from serving.segments.rules import freeze, frozen_dir, latest_frozen, load_rules, missing_frozen, write_frozen

    frozen = freeze(pd.DataFrame({"clv": [1.0, 5.0], "total_spend": [1.0, 2.0]}), load_rules(), "test")
    path = write_frozen(frozen, "shop", tmp_path)
    assert path == tmp_path / "shop" / f"segments-{frozen.version}.json"
    assert latest_frozen("shop", tmp_path) == path and latest_frozen("other", tmp_path) is None
    with pytest.raises(ConfigError, match=re.escape("dataset name '../x'")):
        frozen_dir("../x", tmp_path)
    (tmp_path / "segments-20240101T000000.json").write_text("{}")  # an earlier version's flat file
    assert "make segments DATA=other (or move the" in missing_frozen("other", tmp_path)


def test_a_store_of_earlier_versions_is_migrated_once_and_served(
    champion_store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Models registered one per family (``valuecast-churn``, before per-dataset names) move to
    ``valuecast-<family>-<dataset>`` the first time the API loads, one line each, and are served."""
    from serving.scoring import CUSTOMER_FAMILIES, choose_dataset, load_catalog, load_champions, score_customers
    from serving.segments.rules import write_frozen
    from training import tracking

    source = load_champions("cdnow_sample")
    assert source.frozen is not None
    dataset = load_real("cdnow_sample")
    assert dataset.transactions is not None
    ids = list(pd.unique(dataset.transactions.frame["customer_id"].astype(str)))[:40]
    with monkeypatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        env.setenv("VALUECAST_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
        env.setenv("VALUECAST_SEGMENTS_DIR", str(tmp_path / "segments"))
        for family in CUSTOMER_FAMILIES:
            register_copy(source.models[family].model, f"valuecast-{family}", "cdnow", family)
        write_frozen(source.frozen, "cdnow")
        lines: list[str] = []
        catalog = load_catalog(echo=lines.append)
        again: list[str] = []
        assert sorted(load_catalog(echo=again.append).datasets) == ["cdnow"] and again == []  # once
        client = tracking.connect()
        legacy = client.get_registered_model("valuecast-churn").tags["migrated_to"]
    tracking.connect()  # back to the session's store for the tests after this one
    assert lines == [
        f"migrated valuecast-{f} v1 (dataset cdnow) to valuecast-{f}-cdnow v1; valuecast-{f} is kept"
        for f in CUSTOMER_FAMILIES
    ]
    assert legacy == "valuecast-churn-cdnow v1"
    assert sorted(catalog.datasets) == ["cdnow"] and catalog.problem_list() == []
    champions = choose_dataset(catalog, None, CUSTOMER_FAMILIES)
    assert {f: s.registered_name for f, s in champions.models.items()} == {
        f: f"valuecast-{f}-cdnow" for f in CUSTOMER_FAMILIES
    }
    migrated = score_customers(champions, dataset, AS_OF, ids)
    original = score_customers(source, dataset, AS_OF, ids)
    pd.testing.assert_frame_equal(migrated, original)


def test_bentofile_pins_match_the_installed_packages() -> None:
    spec = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())
    for pin in spec["python"]["packages"]:
        name, version = pin.split("==")
        assert importlib.metadata.version(name) == version, pin


ROUTE_SHAPES = """
import asyncio, json
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute
from serving.service import app
def routes(router):  # FastAPI 0.165 keeps an included router's routes inside it
    for r in router.routes:
        yield from routes(r.original_router) if hasattr(r, "original_router") else [r]
print(json.dumps({  # each endpoint's dependencies as FastAPI reads its signature now
    f"{sorted(r.methods)[0]} {r.path}": [
        [d.call.__name__ for d in get_dependant(path=r.path, call=r.endpoint).dependencies],
        asyncio.iscoroutinefunction(r.endpoint),
    ]
    for r in routes(app.router) if isinstance(r, APIRoute)
}))
"""


def test_routes_take_no_dependency_and_scoring_stays_on_the_event_loop() -> None:
    """A route written as a method of the service gets ``self`` from BentoML through a sync FastAPI
    dependency, which FastAPI runs in its thread pool: a thread hop on every request (~10% of the
    server's CPU per request, docs/benchmarks.md). The scoring routes are coroutines and no route has
    a dependency. In a child process: importing the service sets its worker environment."""
    done = subprocess.run(
        [sys.executable, "-c", ROUTE_SHAPES], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    routes = json.loads(done.stdout.splitlines()[-1])
    assert {"POST /score", "POST /score_leads", "POST /reload", "GET /models", "GET /metrics"} <= set(routes)
    assert {name: deps for name, (deps, _) in routes.items() if deps} == {}
    assert all(routes[name][1] for name in ("POST /score", "POST /score_leads", "POST /reload"))


FREEZING = """
import gc, json, weakref
from serving.scoring import Catalog, Champions, Served
from serving.service import _freeze_what_is_loaded
def catalog(version):
    served = Served("churn", "valuecast-churn-x", version, "run", "today", {}, "x", None, object())
    return Catalog(datasets={"x": Champions(dataset="x", models={"churn": served})})
class Node:  # what a model leaves behind in a reference cycle
    pass
first = catalog("1")
_freeze_what_is_loaded(Catalog(), first)  # the first load
model = Node(); model.self = model; gone = weakref.ref(model)  # loaded with a reload that kept the rest
_freeze_what_is_loaded(first, first)  # what is new is frozen too
frozen = gc.get_freeze_count()
del model
gc.collect()
kept = gone() is not None
_freeze_what_is_loaded(first, catalog("2"))  # a new version: everything released, collected, frozen again
print(json.dumps([frozen, kept, gone() is None, gc.get_freeze_count() > 0]))
"""


def test_loaded_models_leave_the_garbage_collectors_scans_until_they_are_replaced() -> None:
    """After each load the process's objects are frozen (no full collection walks them during
    requests: p99 at 300 requests/s after reloads, docs/benchmarks.md); when a new version replaces a
    model, what was frozen is released and collected first, so that replaced models do not stay in
    memory through their reference cycles. In a child process, as above."""
    done = subprocess.run(
        [sys.executable, "-c", FREEZING], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    frozen, kept, collected, frozen_again = json.loads(done.stdout.splitlines()[-1])
    assert frozen > 1000 and kept  # frozen: a plain collection leaves the cycle alone
    assert collected and frozen_again


@pytest.mark.slow
def test_bentoml_build_succeeds(tmp_path: Path) -> None:
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    done = subprocess.run(
        [bentoml, "build", "--output", "tag"],
        cwd=PROJECT_ROOT,
        # bentoml build runs uv: the one make setup installed in .tools/bin
        env={
            **os.environ,
            "BENTOML_HOME": str(tmp_path / "bentoml"),
            "PATH": f"{PROJECT_ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valuecast:" in done.stdout
    built = list((tmp_path / "bentoml" / "bentos" / "valuecast").glob("*/bento.yaml"))
    assert built and "serving.service:ValueService" in built[0].read_text()
