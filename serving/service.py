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
  answer; the body gives each dataset's state), ``GET /models``, ``GET /metrics`` (Prometheus, per
  route: :mod:`serving.metrics`).
- ``POST /reload``: load the current champions and switch to them; requests under way finish on the
  models they started with. Other workers notice a reload through a stamp file and switch on their
  next request.

Bad input: 422 with ``{"error", "problems": [{"path", "value", "reason"}]}``; a body over the size
limit or more than 10,000 customers: 413; with ``VALUECAST_API_KEY`` set, requests without
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``: 401; a browser request from an origin not in
``VALUECAST_ALLOWED_ORIGINS``: 403. Every field, limit and error answer is in ``/openapi.json``; the
limits and the threat model are in docs/security.md. Loading happens in the background: ``/healthz``
answers at once, ``/readyz`` says what is loaded and why the rest is not (an unreachable registry is
retried with backoff). Avoids BentoML's batchable DataFrame input (broken in 1.4.x).
"""

from __future__ import annotations

import os

# One OpenMP thread per worker: xgboost's threads otherwise spin-wait against the other worker's on
# a small machine (measured: p50 over 2 s with 2 workers x 2 threads on 2 cores). Set before xgboost loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tracking client's own retries (7, doubling) would keep a worker on one unreachable-registry try
# for minutes; the loader below retries with its own backoff and says so in /readyz meanwhile.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

import gc
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import bentoml
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.config import PROJECT_ROOT, TRANSACTION_OPTIONAL, TRANSACTION_REQUIRED
from serving import json_keys, metrics
from serving.api import (
    MAX_BODY_BYTES,
    ErrorBody,
    FastJSONResponse,
    LeadRequest,
    LeadResponse,
    ModelsResponse,
    Readiness,
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
    column_records,
    customer_attributes,
    echo,
    event_problems,
    events_frame,
    lead_problems,
    missing_events,
    problems_of,
    to_json_records,
    too_many,
    transaction_field_collisions,
    transaction_problems,
    transactions_frame,
)
from serving.histories import Histories, PlainBody, histories_of, iso_times, plain_request
from serving.scoring import (
    CUSTOMER_FAMILIES,
    LEAD_FAMILIES,
    MACRO_FAMILIES,
    UPLIFT_FAMILIES,
    Catalog,
    Champions,
    DatasetChoiceError,
    NotReadyError,
    choose_dataset,
    events_read,
    histories_problem,
    keep_last_good,
    load_catalog,
    score_customers,
    score_histories,
    utc_today,
    warm_up,
)
from serving.segments import micro
from training import tracking
from training.common import InputRowsError, request_dataset

log = logging.getLogger("valuecast.serving")
app = FastAPI(
    title="valuecast scoring API",
    version="1",
    description="Scores customers (churn, purchase propensity, CLV, value segment and action) and leads "
    "(0-100 score with reasons) with each dataset's champion models from the MLflow registry. "
    "Limits, authentication and the threat model: docs/security.md.",
)
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
    "macro_segment",
)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug, never bad input (that is answered 4xx above): JSON, no traceback, logged in full."""
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths (404) and methods (405) answer in the API's error shape too."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def error(status: int, message: str, problems: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse(body, status_code=status)


class TooLargeError(ValueError):
    """A body over ``VALUECAST_MAX_BODY_BYTES``: answered 413 before any of it is parsed."""


async def read_json(request: Request) -> Any:
    """The body as JSON, within the size limit: a declared length over it is refused before reading,
    a streamed body as soon as it passes it (nothing over the limit is held in memory)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise TooLargeError(f"the body has {int(declared):,} bytes; send at most {MAX_BODY_BYTES:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TooLargeError(f"the body has more than {MAX_BODY_BYTES:,} bytes; send at most that")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        return json_keys.loads(body)
    except json_keys.RepeatedKeyError as exc:
        twice = echo(exc.key)
        problem = {"path": "(body)", "value": twice, "reason": f"the key '{twice}' appears twice in one object"}
        raise BadRequestError("an object in the body has a key twice", [problem]) from None
    except RecursionError:
        raise BadRequestError("the body is nested too deeply to be a request") from None
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
ROUTES = ("/score", "/score_leads", "/models", "/reload", "/readyz", "/healthz", "/livez", "/metrics")


def allowed_origins() -> frozenset[str]:
    """``VALUECAST_ALLOWED_ORIGINS``: the web origins (``https://crm.example.com``) whose pages may call
    the API from a browser, comma-separated; none by default."""
    raw = os.environ.get("VALUECAST_ALLOWED_ORIGINS", "")
    return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


class OriginGuard:
    """ASGI middleware: a request carrying an ``Origin`` header (sent by browsers) from an origin not
    allowed is refused with 403 before it reaches a route. Scripts and servers send no Origin and are
    not affected; a web page the user happens to visit cannot reach ``/reload`` or ``/score``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.allowed = allowed_origins()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            origin = next((v for k, v in scope.get("headers", []) if k == b"origin"), None)
            if origin is not None and origin.decode("latin-1").rstrip("/") not in self.allowed:
                response = error(403, "requests from this web origin are not allowed (VALUECAST_ALLOWED_ORIGINS)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def api_key() -> str | None:
    """``VALUECAST_API_KEY``: unset means no authentication (for a server on 127.0.0.1); set but empty
    or blank stops the start, since that is a mistake that would silently switch authentication off."""
    key = os.environ.get("VALUECAST_API_KEY")
    if key is None:
        return None
    if not key.strip():
        raise SystemExit("VALUECAST_API_KEY is set but empty: set a key, or unset the variable to serve without one")
    return key


def request_body(shape: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its body itself (one JSON parse, with the
    size limit and the duplicate-key check first); the schema is added to the document's components."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape.__name__}"}}},
        }
    }


ERROR_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    403: {"model": ErrorBody, "description": "a browser request from an origin not allowed"},
    413: {"model": ErrorBody, "description": "body over the size limit, or too many customers or leads"},
    422: {"model": ErrorBody, "description": "invalid fields, each named with its path and the reason"},
    503: {"model": ErrorBody, "description": "the models this request needs are not loaded; the reason says why"},
}


def openapi() -> dict[str, Any]:
    """FastAPI's document plus the request schemas of the routes that parse their own body."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for shape in (ScoreRequest, LeadRequest):
            schema = shape.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[shape.__name__] = schema
        app.openapi_schema = document
    return app.openapi_schema


app.openapi = openapi  # type: ignore[method-assign]
API_KEY = api_key()  # checked when the service is imported: `bentoml serve` stops before any worker starts


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


def _freeze_what_is_loaded(previous: Catalog, catalog: Catalog) -> None:
    """Take the libraries and models loaded by now out of the garbage collector's scans: its full
    passes over them stall requests for tens of ms, and for hundreds once reloads have added their
    objects (docs/benchmarks.md). Where models were replaced, everything frozen is released first,
    so that what the replaced models leave in reference cycles is collected."""
    kept = {id(served) for served in previous.served()}
    if any(id(served) not in kept for served in catalog.served()):
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def _stamp() -> float:
    try:
        return RELOAD_STAMP.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# BentoML's traffic metrics are off: they label series with the path as requested (serving/metrics.py)
@bentoml.service(name="valuecast", workers=WORKERS, traffic={"timeout": 120}, metrics={"enabled": False})
@bentoml.asgi_app(app, path="/")
class ValueService:
    """Holds the loaded champions; a reload swaps the whole set at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        store = tracking.redacted(tracking.tracking_uri())
        self.catalog = Catalog(problems={"loading": f"loading the champion models from {store}"})
        self.loaded_stamp = _stamp()
        self.api_key = API_KEY
        # Loading in the background: the worker answers /healthz at once, and SIGTERM stops it even
        # while the registry cannot be reached (a daemon thread does not hold the process).
        threading.Thread(target=self._first_load, name="valuecast-load", daemon=True).start()

    def _first_load(self) -> None:
        """Load until the store answers: 1, 2, 4 ... 60 s between tries, /readyz saying why meanwhile."""
        # numba loads the compiled body scan and stamp reading now, not in the first request
        json_keys.keys_proven_unique(b"{}")
        iso_times(["1998-01-05"])
        delay, tries = 1.0, 1
        while True:
            catalog = self._load()
            if "store" not in catalog.problems:
                break
            catalog.problems["store"] += f" (try {tries}; next in {delay:.0f} s)"
            time.sleep(delay)
            delay, tries = min(delay * 2, 60.0), tries + 1

    def _load(self) -> Catalog:
        """Load the current champions and switch to them; what fails to load keeps being served from
        the previous set (the reason is in /readyz), and a store that cannot be read keeps all of it."""
        with self._lock:
            try:
                with _exclusive(RELOAD_STAMP.with_name("migrate.lock")):
                    migrated = tracking.migrate_legacy(echo=log.warning)
                catalog = load_catalog(migrate=False, loaded=self.catalog)
                catalog.migrated = migrated
            except Exception as exc:  # a broken store or setting must not kill the process: readyz says why
                log.warning("loading the champion models failed: %s", tracking.scrubbed(str(exc)))
                store = tracking.redacted(tracking.tracking_uri())
                reason = tracking.scrubbed(f"{type(exc).__name__}: {exc}".splitlines()[0])
                catalog = Catalog(problems={"store": f"cannot read the registry at {store}: {reason}"})
            catalog.kept_lines = keep_last_good(self.catalog, catalog)
            for champions in catalog.datasets.values():
                try:
                    warm_up(champions)
                except Exception as exc:  # a model that cannot score says so in the requests; loading goes on
                    log.warning("scoring a first customer of %s failed: %s", champions.dataset, exc)
            previous, self.catalog = self.catalog, catalog  # one assignment: requests see the old set or the new one
            _freeze_what_is_loaded(previous, catalog)
            return catalog

    def __is_ready__(self) -> bool:
        return self.catalog.ready

    def _current(self) -> Catalog:
        """The loaded set; when another worker reloaded (stamp newer), reload here first."""
        stamp = _stamp()
        if stamp > self.loaded_stamp:
            self.loaded_stamp = stamp
            self._load()
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
        """None when the key matches (or none is set). Keys are compared as bytes in constant time:
        header values arrive as bytes (Starlette hands them over decoded as Latin-1), the key is
        UTF-8, so a non-ASCII key sent as UTF-8 matches."""
        if self.api_key is None:
            return None
        given = request.headers.get("x-api-key") or ""
        bearer = request.headers.get("authorization", "")
        if not given and bearer[:7].lower() == "bearer ":
            given = bearer[7:].strip()
        if given and hmac.compare_digest(given.encode("latin-1"), self.api_key.encode("utf-8")):
            return None
        return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")

    def readiness(self, request: Request) -> JSONResponse:
        """See :func:`readiness`."""
        catalog = self._current()
        return JSONResponse(_readiness(catalog), status_code=200 if catalog.ready else 503)

    def models(self, request: Request) -> JSONResponse:
        """See :func:`models`."""
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

    async def reload(self, request: Request) -> JSONResponse:
        """See :func:`reload`."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        catalog = self._load()
        RELOAD_STAMP.parent.mkdir(parents=True, exist_ok=True)
        RELOAD_STAMP.touch()
        self.loaded_stamp = _stamp()
        failed = catalog.problem_list()
        status = 503 if not catalog.ready else 409 if catalog.kept_lines else 200
        return JSONResponse(
            {
                "reloaded": status == 200,
                "versions": {name: c.versions() for name, c in sorted(catalog.datasets.items())},
                "kept": catalog.kept_lines,
                "problems": failed,
            },
            status_code=status,
        )

    async def _handle(
        self,
        request: Request,
        shape: type[BaseModel],
        work: Callable[..., JSONResponse],
        quick: Callable[[Any], tuple[BaseModel, Any] | None] | None = None,
    ) -> JSONResponse:
        """Auth, size limit (413), JSON and validation (422) in that order, then the scoring.
        ``quick``: a cheaper reading of the usual body, (request, extra) for ``work(request, extra)``,
        or None to validate the body the full way."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            body = await read_json(request)
            if quick is not None and (read := quick(body)) is not None:
                return work(*read)
            try:
                parsed = shape.model_validate(body)
            except ValidationError as exc:
                if (message := too_many(exc)) is not None:
                    return error(413, message)
                raise BadRequestError("the request has invalid fields", problems_of(exc)) from exc
            return work(parsed)  # CPU-bound: in the event loop, one at a time per worker (threads only contend)
        except TooLargeError as exc:
            return error(413, str(exc))
        except BadRequestError as exc:
            return error(422, str(exc), exc.problems)

    async def score(self, request: Request) -> JSONResponse:
        """See :func:`score`."""
        return await self._handle(request, ScoreRequest, self._score, quick=plain_request)

    def _score(self, parsed: ScoreRequest, plain: PlainBody | None = None) -> JSONResponse:
        """``plain``: the purchases of a usual request read as columns (``parsed`` then has none);
        where they cannot be scored as histories, the body is validated the full way."""
        try:
            champions = self._choose(parsed.dataset, CUSTOMER_FAMILIES, UPLIFT_FAMILIES)
        except NotReadyError as exc:
            return error(503, f"not ready: {exc}")
        as_of = pd.Timestamp(parsed.as_of) if parsed.as_of else utc_today()
        if plain is not None and not (champions.has(CUSTOMER_FAMILIES) and histories_problem(champions) is None):
            parsed, plain = plain.request(), None
        if not champions.has(CUSTOMER_FAMILIES):  # uplift alone: customers come as attribute rows
            return self._score_uplift(parsed, champions, as_of)
        # An attribute named like a transaction field is refused, unless the dataset's uplift model
        # reads it (Hillstrom's customer-level `channel`): then it goes to that model only.
        uplift_reads = (
            set(micro.input_columns(micro.uplift_model(champions))) if champions.has(UPLIFT_FAMILIES) else set()
        )
        if clashes := transaction_field_collisions(parsed, allowed=uplift_reads):
            raise BadRequestError("an attribute is named like a transaction field", clashes)
        histories = _histories(parsed, plain, champions)
        if histories is None and plain is not None:  # the row checks read more than histories hold
            parsed = plain.request()
        if histories is not None:  # the usual request skips pandas: same code underneath, same numbers
            category = None
            if histories.category is not None and histories.category_names is not None:
                category = (histories.category, histories.category_names)
            columns = score_histories(
                champions,
                histories.ids,
                histories.code,
                histories.ts,
                histories.amount,
                as_of,
                histories.attributes,
                category,
            )
        else:
            columns = _scored_rows(parsed, champions, as_of)
        names = [c for c in OUTPUT_COLUMNS if c in columns]
        if champions.has(UPLIFT_FAMILIES):  # and the uplift columns of the same customers
            given = _attributes(parsed)
            columns = _uplift_or_422(champions, parsed, lambda: micro.score_with_customers(champions, columns, given))
            names += micro.response_columns(micro.uplift_model(champions))
        records = _customer_records(columns, names)
        return FastJSONResponse(
            {
                "dataset": champions.dataset,
                "as_of": as_of.strftime("%Y-%m-%d"),
                "customers": records,
                "models": champions.versions((*CUSTOMER_FAMILIES, *UPLIFT_FAMILIES, *MACRO_FAMILIES)),
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
            champions, parsed, lambda: micro.score_attributes(champions, ids, _attributes(parsed), as_of)
        )
        names = ["customer_id", *micro.response_columns(micro.uplift_model(champions)), *micro.SUPPRESSION_OUTPUT]
        return FastJSONResponse(
            {
                "dataset": champions.dataset,
                "as_of": as_of.strftime("%Y-%m-%d"),
                "customers": column_records({c: scored[c].to_numpy() for c in names}, names),
                "models": champions.versions(UPLIFT_FAMILIES),
                "segment_version": None,
            }
        )

    async def score_leads(self, request: Request) -> JSONResponse:
        """See :func:`score_leads`."""
        return await self._handle(request, LeadRequest, self._score_leads)

    def _score_leads(self, parsed: LeadRequest) -> JSONResponse:
        try:
            champions = self._choose(parsed.dataset, LEAD_FAMILIES)
        except NotReadyError as exc:
            return error(503, f"not ready: {exc}")
        served = champions.models[LEAD_FAMILIES[0]]
        model = served.model
        id_column = model.dataset_config.leads.columns["lead_id"]
        clashes = [
            {
                "path": f"leads[{position}].{name}",
                "value": echo(value),
                "reason": f"'{name}' is this dataset's lead id column: send the id once, as lead_id",
            }
            for position, lead in enumerate(parsed.leads)
            for name, value in lead.items()
            if name != "lead_id" and name.strip().casefold() == id_column.strip().casefold()
        ]
        if clashes:
            raise BadRequestError("a lead field is named like the id column", clashes)
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
        return FastJSONResponse({"dataset": champions.dataset, "leads": records, "model_version": served.version})


def _service() -> ValueService:
    """This worker's service. The routes are functions calling it rather than methods: BentoML hands a
    method route its ``self`` through a FastAPI dependency, a plain function, which FastAPI runs in its
    thread pool, a thread hop on every request (docs/benchmarks.md, 2026-12-03, eleventh session)."""
    return cast(ValueService, bentoml.get_current_service())


def _scoring_route(path: str, shape: type[BaseModel], answer: type[BaseModel]) -> Callable[..., Any]:
    """``POST path`` with its request schema in the OpenAPI document (the body is read by the route,
    not by FastAPI) and the error answers every scoring route gives."""
    return app.post(path, response_model=answer, openapi_extra=request_body(shape), responses=ERROR_ANSWERS)


@app.get(READINESS_PATH, response_model=Readiness, include_in_schema=False)
def readiness(request: Request) -> JSONResponse:
    """``GET /readyz`` (see :class:`ReadinessRoute`): no key needed, like BentoML's probes."""
    return _service().readiness(request)


@app.get("/models", response_model=ModelsResponse, responses={401: {"model": ErrorBody}})
def models(request: Request) -> JSONResponse:
    """Every champion served, per dataset: version, run, training time, candidate and metrics; and
    what could not be loaded, with the reason."""
    return _service().models(request)


@app.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        401: {"model": ErrorBody},
        409: {"model": ReloadResponse, "description": "something failed to load: the last good set is served"},
        503: {"model": ReloadResponse, "description": "nothing can be served"},
    },
)
async def reload(request: Request) -> JSONResponse:
    """Load the current champions (after ``make promote``) and switch every worker to them. What
    fails to load keeps its last good version; the answer says what failed.

    Runs in the event loop, not in a thread: under load a thread doing the registry's many small
    reads waits for the interpreter lock after each one while requests compute (measured: no
    reload finished within 60 s at 16 clients on a busy machine); here it holds the worker for
    the fraction of a second it takes, unchanged versions being reused."""
    return await _service().reload(request)


@_scoring_route("/score", ScoreRequest, ScoreResponse)
async def score(request: Request) -> JSONResponse:
    """Customers with their purchase histories (and attributes) -> churn and purchase probability,
    CLV, value at risk, value tier, segment, recommended action and suppression, per customer."""
    return await _service().score(request)


@_scoring_route("/score_leads", LeadRequest, LeadResponse)
async def score_leads(request: Request) -> JSONResponse:
    """Leads with the fields of the dataset's leads file -> conversion probability, 0-100 score,
    tier and the reasons up and down."""
    return await _service().score_leads(request)


def _attributes(parsed: ScoreRequest) -> list[dict[str, Any]]:
    return [dict(c.attributes) for c in parsed.customers]


def _histories(parsed: ScoreRequest, plain: PlainBody | None, champions: Champions) -> Histories | None:
    """The request's purchase histories as arrays, or None where the champions need the row checks
    (pandas): a model that reads more than histories hold, or a request with more in it."""
    if histories_problem(champions) is not None:
        return None
    config = champions.models["clv"].model.dataset_config
    read = ({*config.value_maps, *TRANSACTION_REQUIRED, *TRANSACTION_OPTIONAL}, config.missing_values)
    with_categories = "category" not in config.value_maps
    if plain is not None:
        return plain.purchases.histories(parsed, *read, with_categories=with_categories)
    return histories_of(parsed, *read, with_categories=with_categories)


def _scored_rows(parsed: ScoreRequest, champions: Champions, as_of: pd.Timestamp) -> dict[str, Any]:
    """The request's customers scored through the row checks, as batch scoring does; a row they
    refuse is a 422 naming it."""
    config = champions.models["clv"].model.dataset_config
    read = events_read(champions)
    if read and (absent := missing_events(parsed, read)):
        raise BadRequestError("customers without events", absent)
    try:
        dataset = request_dataset(config, transactions_frame(parsed), events_frame(parsed) if read else None)
    except InputRowsError as exc:
        where = event_problems if exc.table == "events" else transaction_problems
        raise BadRequestError(f"some {exc.table} cannot be used", where(parsed, exc.problems)) from exc
    ids = [str(c.customer_id) for c in parsed.customers]
    scored = score_customers(champions, dataset, as_of, ids, attributes=customer_attributes(parsed))
    return {c: scored[c].to_numpy() for c in scored.columns}


def _customer_records(columns: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """One answer per customer: the ``names`` columns, and the per-category purchase probabilities
    (and per-event ones, where the models predict events) as objects."""
    records = column_records(columns, names)
    for key, prefix in (
        ("purchase_probability_by_category", "purchase_probability_"),
        ("event_probability_by_event", "event_probability_"),
    ):
        per_event = column_records(columns, [c for c in columns if c.startswith(prefix)])
        for record, values in zip(records, per_event, strict=True):
            if values or prefix == "purchase_probability_":
                record[key] = {name.removeprefix(prefix): value for name, value in values.items()}
    return records


def _uplift_or_422(champions: Champions, parsed: ScoreRequest, work: Callable[[], Any]) -> Any:
    """Uplift scoring, its input problems answered 422 naming each attribute."""
    try:
        return work()
    except micro.AttributeProblemsError as exc:
        raise BadRequestError("some attributes cannot be used for uplift scoring", exc.problems) from exc
    except InputRowsError as exc:
        model = micro.uplift_model(champions)
        problems = micro.row_problems(model, _attributes(parsed), exc.problems)
        raise BadRequestError("some attributes cannot be used for uplift scoring", problems) from exc


@app.get("/metrics", include_in_schema=False)
async def _metrics() -> Response:
    """Prometheus' text format: requests per route and status, their durations, those in progress."""
    content, media_type = metrics.exposition()
    return Response(content, media_type=media_type)


@app.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"], include_in_schema=False
)
async def _elsewhere(request: Request, path: str) -> JSONResponse:
    """Any other path or method: 404 or 405 in the API's error shape (BentoML's own fallback is plain
    text). Registered last, so every real route matches first."""
    if f"/{path}" in ROUTES:
        return error(405, f"{request.method} is not allowed on /{path}; see /openapi.json")
    return error(404, f"no route /{echo(path)}; the routes are in /openapi.json")


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
                "kept_from_last_load": c.kept,
            }
            for name, c in sorted(catalog.datasets.items())
        },
        "problems": catalog.problems,
        # each worker loads on its own: a client waiting for every worker (a test, a deployment
        # script) needs to know which one answered
        "worker": bentoml.server_context.worker_index,
    }


# the decorator's type hides the method; the first added is the outermost
cast(Any, ValueService).add_asgi_middleware(metrics.RouteMetrics, routes=ROUTES)
cast(Any, ValueService).add_asgi_middleware(ReadinessRoute)
cast(Any, ValueService).add_asgi_middleware(OriginGuard)
