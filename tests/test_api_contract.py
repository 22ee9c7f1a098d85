"""The API's contract under attack and carelessness (issue [2/5]): typed limits, strict types, no
name collisions, no 5xx (schemathesis against the served OpenAPI document), web hygiene, isolation.

Each numbered finding of the issue has a regression test named after it. All run against the real
BentoML server on a free port with real champions (the session's ``champion_store``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from features.config import PROJECT_ROOT

from .conftest import free_port, running_server, start_server
from .test_metrics import request_count, series

KEY = "clé-secrète-ü"  # non-ASCII on purpose (finding 7: such a key could never match)
AUTH = {b"X-API-Key": KEY.encode("utf-8")}  # header values travel as bytes
BENTOML = str(Path(sys.executable).with_name("bentoml"))
HISTORY = [{"timestamp": "1998-01-05", "amount": 9.5}]


def serve(port: int) -> list[str]:
    return [BENTOML, "serve", "serving.service:ValueService", "--host", "127.0.0.1", "--port", str(port)]


@pytest.fixture(scope="module")
def server(champion_store: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **champion_store, "VALUECAST_API_KEY": KEY, "VALUECAST_WORKERS": "2"}
    with running_server(serve(port), env, f"http://127.0.0.1:{port}/readyz"):
        yield f"http://127.0.0.1:{port}"


def post(server: str, path: str, body: object, **kwargs: object) -> httpx.Response:
    """POST ``body`` with the key (the server fixture waits until both workers have loaded)."""
    return httpx.post(f"{server}{path}", json=body, headers=AUTH, timeout=60, **kwargs)  # type: ignore[arg-type]


def paths_of(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]
    return [p["path"] for p in answer.json()["problems"]]


def one_customer(**fields: object) -> dict[str, object]:
    return {"as_of": "1998-07-01", "customers": [{"customer_id": "a", "transactions": HISTORY, **fields}]}


# -- 1. silent wrong answers: names that collide ----------------------------------------------------


@pytest.mark.parametrize("name", ["amount", "timestamp", "customer_id", "Amount", " category "])
def test_finding_1_attribute_named_like_a_transaction_field_is_422(server: str, name: str) -> None:
    answer = post(server, "/score", one_customer(attributes={name: "b"}))
    assert paths_of(answer) == ["customers[0].attributes"]
    assert name in answer.json()["problems"][0]["reason"] and "rename" in answer.json()["problems"][0]["reason"]


def test_finding_1_attributes_differing_only_in_case_or_a_key_sent_twice_are_422(server: str) -> None:
    assert paths_of(post(server, "/score", one_customer(attributes={"Tier": "a", "tier": "b"}))) == [
        "customers[0].attributes"
    ]
    twice = '{"customers": [{"customer_id": "a", "attributes": {"tier": "gold", "tier": "basic"}}]}'
    answer = httpx.post(f"{server}/score", content=twice.encode(), headers=AUTH)
    assert answer.status_code == 422 and "tier" in answer.json()["problems"][0]["reason"]


def test_finding_1_lead_field_named_like_the_id_column_is_422(server: str) -> None:
    answer = post(server, "/score_leads", {"leads": [{"lead_id": "L1", "Prospect ID": "someone-else"}]})
    assert paths_of(answer) == ["leads[0].Prospect ID"]
    assert "lead_id" in answer.json()["problems"][0]["reason"]


# -- 2. loose coercions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transaction", "field"),
    [
        ({"timestamp": "1998-01-05", "amount": True}, "amount"),
        ({"timestamp": "1998-01-05", "amount": "12.5"}, "amount"),
        ({"timestamp": 883958400, "amount": 3}, "timestamp"),
        ({"timestamp": "19980105", "amount": 3}, "timestamp"),  # pydantic would read 1970-08-20
        ({"timestamp": "1998-01-05", "amount": 3, "quantity": False}, "quantity"),
    ],
)
def test_finding_2_booleans_are_not_numbers_and_numbers_are_not_dates(
    server: str, transaction: dict[str, object], field: str
) -> None:
    body = {"customers": [{"customer_id": "a", "transactions": [transaction]}]}
    assert paths_of(post(server, "/score", body)) == [f"customers[0].transactions[0].{field}"]


def test_finding_2_customer_ids_are_text_or_integers(server: str) -> None:
    body = {"customers": [{"customer_id": True}, {"customer_id": 1.5}, {"customer_id": 7}]}
    assert paths_of(post(server, "/score", body)) == ["customers[0].customer_id", "customers[1].customer_id"]


# -- 3. non-finite and absurd numbers --------------------------------------------------------------


def test_finding_3_infinite_and_absurd_amounts_are_422(server: str) -> None:
    for raw in ("Infinity", "-Infinity", "NaN", "1e308", "-5e12"):
        body = '{"customers": [{"customer_id": "a", "transactions": [{"timestamp": "1998-01-05", "amount": %s}]}]}'
        answer = httpx.post(f"{server}/score", content=(body % raw).encode(), headers=AUTH)
        assert paths_of(answer) == ["customers[0].transactions[0].amount"], raw


# -- 7. web hygiene --------------------------------------------------------------------------------


def test_finding_7_a_browser_request_from_another_origin_is_403(server: str) -> None:
    for origin in ("https://evil.example", "null", f"{server}"):  # same-origin too: none allowed by default
        answer = httpx.post(f"{server}/reload", headers={**AUTH, b"Origin": origin.encode()})
        assert answer.status_code == 403 and "origin" in answer.json()["error"], origin
    assert httpx.get(f"{server}/healthz").status_code == 200  # no Origin (scripts, probes): unaffected


def test_finding_7_a_non_ascii_key_matches_and_a_wrong_one_does_not(server: str) -> None:
    assert httpx.get(f"{server}/models", headers=AUTH).status_code == 200
    assert httpx.get(f"{server}/models", headers={b"Authorization": b"Bearer " + KEY.encode()}).status_code == 200
    for wrong in ("clé-secrète-u".encode(), b"", KEY.encode("latin-1")):  # the last: the key in another encoding
        assert httpx.get(f"{server}/models", headers={b"X-API-Key": wrong}).status_code == 401, wrong


def test_finding_7_an_empty_key_stops_the_start(champion_store: dict[str, str]) -> None:
    port = free_port()
    env = {**os.environ, **champion_store, "VALUECAST_API_KEY": "  ", "VALUECAST_WORKERS": "1"}
    done = subprocess.run(serve(port), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "VALUECAST_API_KEY is set but empty" in done.stdout + done.stderr


def _series(server: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return series(httpx.get(f"{server}/metrics").text)


def test_finding_7_metrics_label_only_known_routes(server: str) -> None:
    """Made-up paths neither show in /metrics nor add series anywhere: they count under ``other``,
    each once, whichever of the two workers answered it (the answer adds up the workers' stores)."""
    httpx.get(f"{server}/healthz")
    httpx.get(f"{server}/probe-warm-up")
    before = _series(server)
    for n in range(40):
        httpx.get(f"{server}/probe-{n}", params={"q": n})
    metrics = httpx.get(f"{server}/metrics").text
    after = _series(server)
    assert "probe-" not in metrics
    assert set(after) == set(before)  # not one series more, of any metric
    assert request_count(after, "other", "404") - request_count(before, "other", "404") == 40
    assert request_count(after, "/healthz", "200") > 0


def test_unknown_paths_and_methods_answer_json(server: str) -> None:
    missing = httpx.get(f"{server}/nothing/here")
    assert missing.status_code == 404 and "no route" in missing.json()["error"]
    wrong = httpx.get(f"{server}/score")
    assert wrong.status_code == 405 and "GET" in wrong.json()["error"]


# -- 8. what used to be a 500 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        (one_customer() | {"as_of": "0001-01-01"}, ["as_of"]),
        (one_customer() | {"as_of": "9999-12-31"}, ["as_of"]),
        (
            {"customers": [{"customer_id": "a", "transactions": [{"timestamp": "2263-01-01", "amount": 1}]}]},
            ["customers[0].transactions[0].timestamp"],
        ),
        (one_customer(attributes={"timestamp": "x"}), ["customers[0].attributes"]),
        (one_customer(attributes={"tier": {"nested": [1]}}), ["customers[0].attributes.tier"]),
        (one_customer(attributes={"note": "x" * 5000}), ["customers[0].attributes.note"]),
        (one_customer(attributes={"visits": 10**400}), ["customers[0].attributes.visits"]),
    ],
)
def test_finding_8_out_of_range_values_are_422_not_500(server: str, body: dict[str, object], paths: list[str]) -> None:
    assert paths_of(post(server, "/score", body)) == paths


def test_finding_8_lone_surrogates_deep_nesting_and_huge_lead_values_are_422(server: str) -> None:
    surrogate = '{"customers": [{"customer_id": "a\\ud800", "transactions": []}]}'
    answer = httpx.post(f"{server}/score", content=surrogate.encode(), headers=AUTH)
    assert paths_of(answer) == ["customers[0].customer_id"]
    assert answer.json()["problems"][0]["value"] == "a\\ud800"  # repeated back escaped, not a 500
    deep = "[" * 50_000 + "]" * 50_000
    answer = httpx.post(f"{server}/score", content=deep.encode(), headers=AUTH)
    assert answer.status_code == 422 and "nested" in answer.json()["error"]
    huge = '{"leads": [{"lead_id": "L1", "TotalVisits": 1e308}]}'
    answer = httpx.post(f"{server}/score_leads", content=huge.encode(), headers=AUTH)
    assert paths_of(answer) == ["leads[0].TotalVisits"]


# -- 9. size limit ---------------------------------------------------------------------------------


def test_finding_9_a_body_over_the_limit_is_413_before_parsing(server: str) -> None:
    big = b'{"customers": [' + b'{"customer_id": "x"},' * 900_000 + b'{"customer_id": "y"}]}'  # ~19 MB
    started = time.perf_counter()
    answer = httpx.post(f"{server}/score", content=big, headers=AUTH, timeout=60)
    assert answer.status_code == 413 and "at most 16,777,216" in answer.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        yield from (big[i : i + (1 << 20)] for i in range(0, len(big), 1 << 20))

    streamed = httpx.post(f"{server}/score", content=chunks(), headers=AUTH, timeout=60)
    assert streamed.status_code == 413
    assert time.perf_counter() - started < 30
    assert post(server, "/score", one_customer()).status_code == 200  # and the server is fine


# -- the typed contract ------------------------------------------------------------------------------


def test_openapi_documents_every_field_limit_and_error_answer(server: str) -> None:
    document = httpx.get(f"{server}/openapi.json").json()
    assert {"/score", "/score_leads", "/models", "/reload"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    transaction = schemas["Transaction"]["properties"]
    assert transaction["amount"]["maximum"] == 1e12 and transaction["timestamp"]["format"] == "date-time"
    assert schemas["ScoreRequest"]["properties"]["customers"]["maxItems"] == 10_000
    assert schemas["ScoreRequest"]["examples"] and schemas["ScoreResponse"]["examples"]
    for path, method in (("/score", "post"), ("/score_leads", "post")):
        answers = document["paths"][path][method]["responses"]
        assert {"200", "401", "403", "413", "422", "503"} <= set(answers), path
        body = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].startswith("#/components/schemas/")


def test_answers_match_the_documented_shapes(server: str) -> None:
    from serving.api import ErrorBody, LeadResponse, ModelsResponse, ScoreResponse

    ScoreResponse.model_validate(post(server, "/score", one_customer()).json())
    LeadResponse.model_validate(post(server, "/score_leads", {"leads": [{"lead_id": "L1"}]}).json())
    ModelsResponse.model_validate(httpx.get(f"{server}/models", headers=AUTH).json())
    ErrorBody.model_validate(post(server, "/score", {"customers": []}).json())


def test_schemathesis_finds_no_5xx_and_every_4xx_is_json_with_a_reason(server: str) -> None:
    """Schema-valid and schema-violating requests generated from the served document, a bounded
    number per operation (deterministic, so CI sees the same cases)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.core.result import Ok
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    seen: dict[str, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=25,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                response = case.call(headers={"X-API-Key": KEY.encode("utf-8").decode("latin-1")}, timeout=60)
                seen[f"{case.method.upper()} {case.path}"] = response.status_code
                assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"
                if 400 <= response.status_code < 500:
                    assert response.json()["error"], response.text

            try:
                check()
            except Unsatisfiable:
                # GET /models and POST /reload take no input: there is nothing schema-violating to send
                assert mode is GenerationMode.NEGATIVE and operation.path in ("/models", "/reload"), operation.path
    assert {"POST /score", "POST /score_leads", "GET /models", "POST /reload"} <= set(seen)


# -- 10. isolation, an unreachable registry, SIGTERM ------------------------------------------------


def test_finding_10_a_corrupt_segment_file_leaves_the_other_datasets_serving_and_reload_keeps_the_last_good(
    champion_store: dict[str, str], tmp_path: Path
) -> None:
    segments = tmp_path / "segments"
    shutil.copytree(champion_store["VALUECAST_SEGMENTS_DIR"], segments)
    env = {
        **os.environ,
        **champion_store,
        "VALUECAST_SEGMENTS_DIR": str(segments),
        "VALUECAST_RELOAD_STAMP": str(tmp_path / "reload.stamp"),
        "VALUECAST_API_KEY": KEY,
        "VALUECAST_WORKERS": "1",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_server(serve(port), env, f"{url}/readyz"):
        assert post(url, "/score", one_customer()).status_code == 200
        # a newer, broken segment file: the reload keeps the last good one and says so
        (segments / "cdnow_sample" / "segments-9999-01-01T00-00-00.json").write_text("{not json")
        reloaded = post(url, "/reload", None)
        assert reloaded.status_code == 409, reloaded.text
        assert any("cdnow_sample segments: kept" in line for line in reloaded.json()["kept"])
        assert post(url, "/score", one_customer()).status_code == 200
        ready = httpx.get(f"{url}/readyz").json()
        assert "not a valid segment file" in ready["datasets"]["cdnow_sample"]["kept_from_last_load"]["segments"]
    # started with the broken file: the leads dataset serves, customers say why they cannot
    with running_server(serve(port), env, f"{url}/readyz"):
        assert post(url, "/score_leads", {"leads": [{"lead_id": "L1"}]}).status_code == 200
        refused = post(url, "/score", one_customer())
        assert refused.status_code == 503 and "not a valid segment file" in refused.json()["error"]
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["datasets"]["x_education"]["leads"] and not ready["datasets"]["cdnow_sample"]["customers"]


def test_finding_10_unreachable_registry_healthz_at_once_readyz_why_sigterm_stops(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://user:s3cret@127.0.0.1:{dead}",
        "VALUECAST_ARTIFACT_ROOT": (tmp_path / "artifacts").as_uri(),
        "VALUECAST_SEGMENTS_DIR": str(tmp_path / "segments"),
        "VALUECAST_RELOAD_STAMP": str(tmp_path / "reload.stamp"),
        "VALUECAST_WORKERS": "2",
    }
    env.pop("VALUECAST_API_KEY", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")  # a file, not a pipe nobody reads while it runs
    process = start_server(serve(port), env, log)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        started = time.perf_counter()
        assert httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        assert time.perf_counter() - started < 1
        reasons = ""
        while time.time() < deadline and "next in" not in reasons:  # the first try fails within seconds
            ready = httpx.get(f"{url}/readyz", timeout=5)
            assert ready.status_code == 503
            reasons = json.dumps(ready.json())
            time.sleep(0.5)
        assert "s3cret" not in reasons and "***@127.0.0.1" in reasons, reasons
        assert "try 1" in reasons and "next in" in reasons, reasons
    finally:
        stopping = time.perf_counter()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
            stopped = time.perf_counter() - stopping
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stopped = float("inf")
    assert stopped < 10, f"SIGTERM took {stopped:.1f} s"
    log.close()
    assert b"s3cret" not in (tmp_path / "server.log").read_bytes()


def test_finding_7_make_ui_refuses_other_hosts_and_cross_origin_posts(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "VALUECAST_ARTIFACT_ROOT": (tmp_path / "artifacts").as_uri(),
    }
    valuecast = str(Path(sys.executable).with_name("valuecast"))
    url = f"http://127.0.0.1:{port}"
    create = f"{url}/api/2.0/mlflow/experiments/create"
    with running_server([valuecast, "ui", "--port", str(port)], env, f"{url}/health"):
        rebinding = httpx.get(f"{url}/api/2.0/mlflow/experiments/search", headers={"Host": f"evil.example:{port}"})
        assert rebinding.status_code == 403
        cross_site = httpx.post(create, json={"name": "x"}, headers={"Origin": "https://evil.example"})
        assert cross_site.status_code == 403
        own_page = httpx.post(create, json={"name": "x"}, headers={"Origin": url})
        assert own_page.status_code == 200, own_page.text


def test_finding_10_the_store_is_prepared_once_before_the_workers_start(tmp_path: Path) -> None:
    """make serve runs `valuecast prepare-store` first: a new store gets its tables from one process."""
    import sqlite3

    database = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{database}"}
    valuecast = str(Path(sys.executable).with_name("valuecast"))
    done = subprocess.run([valuecast, "prepare-store"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"registered_models", "model_versions", "alembic_version"} <= tables
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    serve = makefile[makefile.index("\nserve:") :].split("\n\n")[0]
    assert serve.index("prepare-store") < serve.index("bentoml serve")


def test_finding_7_credentials_in_uris_are_redacted_wherever_printed() -> None:
    from training.tracking import redacted, scrubbed

    assert redacted("https://alice:pw@mlflow.example:5000/x") == "https://***@mlflow.example:5000/x"
    message = (
        "ConnectionError: HTTPConnectionPool(host='h') url http://alice:pw@h:5000/api/2.0 and s3://key:secret@bucket/p"
    )
    assert (
        scrubbed(message)
        == "ConnectionError: HTTPConnectionPool(host='h') url http://***@h:5000/api/2.0 and s3://***@bucket/p"
    )
    assert scrubbed("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert (
        scrubbed("failed: http://user:p@ss@h:5000/api")
        == "failed: http://***@h:5000/api"
        == ("failed: " + redacted("http://user:p@ss@h:5000/api"))
    )


def test_16_clients_for_30_s_with_reloads_every_2_s_see_no_error(server: str) -> None:
    """Load while the models are reloaded again and again: every answer is a 200 (the requests under
    way finish on the set they started with; the other worker switches through the stamp file)."""
    import threading

    statuses: dict[int, int] = {}
    reloads: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    customers = one_customer()
    leads = {"leads": [{"lead_id": "L1", "Lead Origin": "API", "TotalVisits": 3}]}

    def client(number: int) -> None:
        with httpx.Client(base_url=server, headers=AUTH, timeout=60) as session:
            while not stop.is_set():
                path, body = ("/score", customers) if number % 2 else ("/score_leads", leads)
                status = session.post(path, json=body).status_code
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    def reloader() -> None:
        with httpx.Client(base_url=server, headers=AUTH, timeout=60) as session:
            while not stop.wait(2.0):
                try:
                    reloads.append(session.post("/reload").status_code)
                except httpx.HTTPError as exc:  # a reload that never answers is a failure, not a lost thread
                    reloads.append(-1)
                    print(f"reload failed: {exc!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)] + [threading.Thread(target=reloader)]
    for thread in threads:
        thread.start()
    time.sleep(30)
    deadline = time.time() + 90  # a machine busy with other work: go on until a few reloads are in
    while len(reloads) < 3 and time.time() < deadline:
        time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    print(f"answers: {statuses}; reloads: {reloads}")
    assert set(statuses) == {200} and sum(statuses.values()) >= 16
    assert len(reloads) >= 3 and set(reloads) == {200}


def test_finding_10_a_broken_model_on_reload_keeps_the_last_good_version_and_the_rest_moves_on() -> None:
    from serving.scoring import Catalog, Champions, Served, keep_last_good

    def served(family: str, version: str) -> Served:
        return Served(family, f"valuecast-{family}-shop", version, "r", "t", {}, "shop", "xgboost", None)

    old = Catalog({"shop": Champions("shop", {"churn": served("churn", "1"), "clv": served("clv", "1")})})
    new = Catalog({"shop": Champions("shop", {"churn": served("churn", "2")})})
    new.datasets["shop"].problems["clv"] = "valuecast-clv-shop v2 failed to load: OSError: artifact gone"
    new.datasets["shop"].broken.add("clv")
    lines = keep_last_good(old, new)
    shop = new.datasets["shop"]
    assert shop.versions() == {"churn": "2", "clv": "1"}  # the new churn serves, the old clv is kept
    assert shop.problems == {} and "artifact gone" in shop.kept["clv"]
    assert lines == ["shop clv: kept v1 (valuecast-clv-shop v2 failed to load: OSError: artifact gone)"]
    # a store that cannot be read at all: every dataset keeps its models, the reason is recorded
    unreachable = Catalog(problems={"store": "cannot read the registry at http://***@h: ConnectionError"})
    assert keep_last_good(new, unreachable) and unreachable.datasets["shop"].versions() == {"churn": "2", "clv": "1"}
    assert "ConnectionError" in unreachable.datasets["shop"].kept["store"]
