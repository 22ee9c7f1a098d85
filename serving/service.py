"""The valuecast scoring API: a BentoML service with a FastAPI app mounted for full control of status
codes and error bodies.

Start it with ``make serve`` (127.0.0.1:3000; HOST/PORT to change). At start-up each worker loads, for
every served dataset (``VALUECAST_DATASETS``, default: every dataset with a champion), the ``champion``
version of each of its registered models (``valuecast-<family>-<dataset>``) from the MLflow registry
and the dataset's latest frozen segment file (:mod:`serving.scoring`). One server answers for every
dataset at once: a request names its dataset in the field ``dataset`` (default:
``VALUECAST_DEFAULT_DATASET``, else the only dataset that can answer that endpoint).

- ``POST /score``: customers with their transactions -> scores, segment and action per customer;
  where the dataset has an uplift champion, also the uplift per arm and the next best action
  (a dataset scored by uplift alone takes each customer's attributes, no transactions).
- ``POST /score_leads``: leads -> probability, 0-100 score, tier and reasons.
- ``GET /healthz`` (process up, BentoML's own), ``GET /readyz`` (200 when at least one dataset can
  answer; the body gives each dataset's state), ``GET /models``.
- ``POST /reload``: load the current champions and switch to them; requests under way finish on the
  models they started with. Other workers notice a reload through a stamp file and switch on their
  next request.

Bad input: 422 with ``{"error", "problems": [{"path", "value", "reason"}]}``; more than 10,000
customers: 413; with ``VALUECAST_API_KEY`` set, requests without ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``: 401. Avoids BentoML's batchable DataFrame input (broken in 1.4.x).
"""

from __future__ import annotations

import os

# One OpenMP thread per worker: xgboost's threads otherwise spin-wait against the other worker's on
# a small machine (measured: p50 over 2 s with 2 workers x 2 threads on 2 cores). Set before xgboost loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gc
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import bentoml
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from features.config import PROJECT_ROOT, TRANSACTION_OPTIONAL, TRANSACTION_REQUIRED
from serving import uplift
from serving.api import (
    MAX_CUSTOMERS,
    MAX_LEADS,
    LeadRequest,
    ScoreRequest,
    column_records,
    customer_attributes,
    histories_of,
    lead_problems,
    problems_of,
    to_json_records,
    transaction_problems,
    transactions_frame,
)
from serving.scoring import (
    CUSTOMER_FAMILIES,
    LEAD_FAMILIES,
    UPLIFT_FAMILIES,
    Catalog,
    Champions,
    DatasetChoiceError,
    NotReadyError,
    choose_dataset,
    histories_problem,
    load_catalog,
    score_customers,
    score_histories,
)
from training import tracking
from training.common import InputRowsError, request_dataset

log = logging.getLogger("valuecast.serving")
app = FastAPI(title="valuecast scoring API", version="1")
RELOAD_STAMP = Path(os.environ.get("VALUECAST_RELOAD_STAMP", PROJECT_ROOT / ".serve" / "reload.stamp"))
WORKERS = int(os.environ.get("VALUECAST_WORKERS", "2"))
OUTPUT_COLUMNS = (
    "customer_id",
    "churn_probability",
    "purchase_probability",
    "p_alive",
    "expected_orders",
    "expected_order_value",
    "clv",
    "value_at_risk",
    "value_tier",
    "risk_band",
    "potential_band",
    "segment",
    "action",
    "suppressed",
    "suppression_reason",
)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug, never bad input (that is answered 4xx above): JSON, no traceback, logged in full."""
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)


def error(status: int, message: str, problems: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse(body, status_code=status)


async def read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the body is not valid JSON ({exc})") from exc


class BadRequestError(ValueError):
    """Input the API cannot use; answered 422 with the message and the problems."""

    def __init__(self, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [{"path": "(body)", "value": None, "reason": message}]


class ReadinessRoute:
    """ASGI middleware sending ``GET /readyz`` to the app's own readiness route: BentoML's /readyz
    answers from a yes/no (``__is_ready__``) with a fixed text, and an operator with several datasets
    needs to see which of them can answer and why the others cannot."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path") == "/readyz":
            scope = {**scope, "path": READINESS_PATH, "raw_path": READINESS_PATH.encode()}
        await self.app(scope, receive, send)


READINESS_PATH = "/readiness"


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An inter-process lock on ``path``: workers start together, and two migrations of the same
    store at once would each copy the old models (the second would find no ``migrated_to`` tag yet)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stamp() -> float:
    try:
        return RELOAD_STAMP.stat().st_mtime
    except FileNotFoundError:
        return 0.0


@bentoml.service(name="valuecast", workers=WORKERS, traffic={"timeout": 120})
@bentoml.asgi_app(app, path="/")
class ValueService:
    """Holds the loaded champions; a reload swaps the whole set at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.catalog = Catalog()
        self.loaded_stamp = _stamp()
        self.api_key = os.environ.get("VALUECAST_API_KEY") or None
        self._load()
        # The libraries and models loaded by now live as long as the process: take them out of the
        # garbage collector's scans, whose full passes otherwise stall requests (p99) for tens of ms.
        gc.collect()
        gc.freeze()

    def _load(self) -> Catalog:
        try:
            with _exclusive(RELOAD_STAMP.with_name("migrate.lock")):
                migrated = tracking.migrate_legacy(echo=log.warning)
            catalog = load_catalog(migrate=False)
            catalog.migrated = migrated
        except Exception as exc:  # a broken store or setting must not kill the process: readyz says why
            log.exception("loading the champion models failed")
            catalog = Catalog(problems={"registry": f"{type(exc).__name__}: {exc}"})
        self.catalog = catalog  # one assignment: requests see the old set or the new one
        return catalog

    def __is_ready__(self) -> bool:
        return self.catalog.ready

    def _current(self) -> Catalog:
        """The loaded set; when another worker reloaded (stamp newer), reload here first."""
        stamp = _stamp()
        if stamp > self.loaded_stamp:
            with self._lock:
                if stamp > self.loaded_stamp:
                    self._load()
                    self.loaded_stamp = stamp
        return self.catalog

    def _choose(self, requested: str | None, needs: tuple[str, ...], or_needs: tuple[str, ...] = ()) -> Champions:
        """The dataset's champions for a request; a dataset the request cannot use is a 422 naming
        the field ``dataset`` and the choices."""
        try:
            return choose_dataset(self._current(), requested, needs, or_needs)
        except DatasetChoiceError as exc:
            raise BadRequestError(
                "the request's dataset cannot be used", [{"path": "dataset", "value": exc.value, "reason": str(exc)}]
            ) from exc

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        if self.api_key is None:
            return None
        given = request.headers.get("x-api-key") or ""
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            given = given or bearer[7:].strip()
        if given and hmac.compare_digest(given.encode(), self.api_key.encode()):
            return None
        return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")

    @app.get(READINESS_PATH)
    def readiness(self, request: Request) -> JSONResponse:
        """``GET /readyz`` (see :class:`ReadinessRoute`): no key needed, like BentoML's probes."""
        catalog = self._current()
        return JSONResponse(_readiness(catalog), status_code=200 if catalog.ready else 503)

    @app.get("/models")
    def models(self, request: Request) -> JSONResponse:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        catalog = self._current()
        return JSONResponse(
            {
                "models": [served.describe() for served in catalog.served()],
                "problems": catalog.problem_list(),
                "datasets": {name: c.state() for name, c in sorted(catalog.datasets.items())},
                "default_dataset": catalog.default,
                "loaded_at": pd.Timestamp(catalog.loaded_at, unit="s", tz="UTC").isoformat(),
            }
        )

    @app.post("/reload")
    def reload(self, request: Request) -> JSONResponse:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        with self._lock:
            catalog = self._load()
            RELOAD_STAMP.parent.mkdir(parents=True, exist_ok=True)
            RELOAD_STAMP.touch()
            self.loaded_stamp = _stamp()
        return JSONResponse(
            {
                "reloaded": True,
                "versions": {name: c.versions() for name, c in sorted(catalog.datasets.items())},
                "problems": catalog.problem_list(),
            },
            status_code=200 if catalog.ready else 503,
        )

    async def _handle(
        self, request: Request, shape: type[BaseModel], items: str, limit: int, work: Callable[[Any], JSONResponse]
    ) -> JSONResponse:
        """Auth, JSON, size limit (413) and validation (422) in that order, then the scoring."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            body = await read_json(request)
            sent = body.get(items) if isinstance(body, dict) else None
            if isinstance(sent, list) and len(sent) > limit:
                return error(413, f"{len(sent):,} {items} in one request; send at most {limit:,}")
            try:
                parsed = shape.model_validate(body)
            except ValidationError as exc:
                raise BadRequestError("the request has invalid fields", problems_of(exc)) from exc
            return work(parsed)  # CPU-bound: in the event loop, one at a time per worker (threads only contend)
        except BadRequestError as exc:
            return error(422, str(exc), exc.problems)

    @app.post("/score")
    async def score(self, request: Request) -> JSONResponse:
        return await self._handle(request, ScoreRequest, "customers", MAX_CUSTOMERS, self._score)

    def _score(self, parsed: ScoreRequest) -> JSONResponse:
        try:
            champions = self._choose(parsed.dataset, CUSTOMER_FAMILIES, UPLIFT_FAMILIES)
        except NotReadyError as exc:
            return error(503, f"not ready: {exc}")
        as_of = pd.Timestamp(parsed.as_of) if parsed.as_of else pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
        if not champions.has(CUSTOMER_FAMILIES):  # uplift alone: customers come as attribute rows
            return self._score_uplift(parsed, champions, as_of)
        config = champions.models["clv"].model.dataset_config
        # Plain purchase histories (the usual request) skip pandas: same code underneath, same numbers.
        histories = None
        if histories_problem(champions) is None:
            histories = histories_of(parsed, {*config.value_maps, *TRANSACTION_REQUIRED, *TRANSACTION_OPTIONAL})
        if histories is not None:
            columns = score_histories(
                champions, histories.ids, histories.code, histories.ts, histories.amount, as_of, histories.attributes
            )
        else:
            try:
                dataset = request_dataset(config, transactions_frame(parsed))
            except InputRowsError as exc:
                raise BadRequestError(
                    "some transactions cannot be used", transaction_problems(parsed, exc.problems)
                ) from exc
            ids = [str(c.customer_id) for c in parsed.customers]
            scored = score_customers(champions, dataset, as_of, ids, attributes=customer_attributes(parsed))
            columns = {c: scored[c].to_numpy() for c in scored.columns}
        names = [c for c in OUTPUT_COLUMNS if c in columns]
        if champions.has(UPLIFT_FAMILIES):  # and the uplift columns of the same customers
            given = _attributes(parsed)
            columns = _uplift_or_422(champions, parsed, lambda: uplift.score_with_customers(champions, columns, given))
            names += uplift.response_columns(uplift.uplift_model(champions))
        categories = [c for c in columns if c.startswith("purchase_probability_")]
        records = column_records(columns, names)
        by_category = column_records(columns, categories)
        for record, per_category in zip(records, by_category, strict=True):
            record["purchase_probability_by_category"] = {
                name.removeprefix("purchase_probability_"): value for name, value in per_category.items()
            }
        return JSONResponse(
            {
                "dataset": champions.dataset,
                "as_of": as_of.strftime("%Y-%m-%d"),
                "customers": records,
                "models": champions.versions((*CUSTOMER_FAMILIES, *UPLIFT_FAMILIES)),
                "segment_version": champions.frozen.version if champions.frozen else None,
            }
        )

    def _score_uplift(self, parsed: ScoreRequest, champions: Champions, as_of: pd.Timestamp) -> JSONResponse:
        """A dataset scored by its uplift model alone (Hillstrom): each customer's attributes are a
        campaign-file row; transactions have nothing to be scored with."""
        reason = (
            f"dataset '{champions.dataset}' scores customers from their attributes (its uplift model), "
            "not from purchase histories: leave out transactions"
        )
        sent = [
            {"path": f"customers[{i}].transactions", "value": None, "reason": reason}
            for i, customer in enumerate(parsed.customers)
            if customer.transactions
        ]
        if sent:
            raise BadRequestError("the request has invalid fields", sent)
        ids = [str(c.customer_id) for c in parsed.customers]
        scored = _uplift_or_422(
            champions, parsed, lambda: uplift.score_attributes(champions, ids, _attributes(parsed), as_of)
        )
        names = ["customer_id", *uplift.response_columns(uplift.uplift_model(champions)), *uplift.SUPPRESSION_OUTPUT]
        return JSONResponse(
            {
                "dataset": champions.dataset,
                "as_of": as_of.strftime("%Y-%m-%d"),
                "customers": column_records({c: scored[c].to_numpy() for c in names}, names),
                "models": champions.versions(UPLIFT_FAMILIES),
                "segment_version": None,
            }
        )

    @app.post("/score_leads")
    async def score_leads(self, request: Request) -> JSONResponse:
        return await self._handle(request, LeadRequest, "leads", MAX_LEADS, self._score_leads)

    def _score_leads(self, parsed: LeadRequest) -> JSONResponse:
        try:
            champions = self._choose(parsed.dataset, LEAD_FAMILIES)
        except NotReadyError as exc:
            return error(503, f"not ready: {exc}")
        served = champions.models[LEAD_FAMILIES[0]]
        model = served.model
        id_column = model.dataset_config.leads.columns["lead_id"]
        raw = pd.DataFrame(
            [
                {id_column: str(lead["lead_id"]), **{k: v for k, v in lead.items() if k != "lead_id"}}
                for lead in parsed.leads
            ]
        )
        raw = raw.astype({c: "object" for c in raw.columns})
        for column in raw.columns:  # the model reads values as a file holds them: text
            raw[column] = raw[column].map(lambda v: None if v is None or v is pd.NA or v != v else str(v))
        try:
            scored = model.predict(None, raw)
        except InputRowsError as exc:
            raise BadRequestError("some leads cannot be used", lead_problems(parsed, id_column, exc.problems)) from exc
        records = to_json_records(scored)
        for record in records:
            record["reasons_up"] = [r for r in str(record.pop("reasons_up") or "").split("; ") if r]
            record["reasons_down"] = [r for r in str(record.pop("reasons_down") or "").split("; ") if r]
        return JSONResponse({"dataset": champions.dataset, "leads": records, "model_version": served.version})


def _attributes(parsed: ScoreRequest) -> list[dict[str, Any]]:
    return [dict(c.attributes) for c in parsed.customers]


def _uplift_or_422(champions: Champions, parsed: ScoreRequest, work: Callable[[], Any]) -> Any:
    """Uplift scoring, its input problems answered 422 naming each attribute."""
    try:
        return work()
    except uplift.AttributeProblemsError as exc:
        raise BadRequestError("some attributes cannot be used for uplift scoring", exc.problems) from exc
    except InputRowsError as exc:
        model = uplift.uplift_model(champions)
        problems = uplift.row_problems(model, _attributes(parsed), exc.problems)
        raise BadRequestError("some attributes cannot be used for uplift scoring", problems) from exc


def _readiness(catalog: Catalog) -> dict[str, Any]:
    """The /readyz body: ready when any dataset can answer; each dataset's state and every problem."""
    return {
        "ready": catalog.ready,
        "datasets": {
            name: {
                "customers": c.ready_for_customers,
                "leads": c.ready_for_leads,
                "uplift": c.ready_for_uplift,
                "problems": c.problems,
            }
            for name, c in sorted(catalog.datasets.items())
        },
        "problems": catalog.problems,
    }


cast(Any, ValueService).add_asgi_middleware(ReadinessRoute)  # the decorator's type hides the method
