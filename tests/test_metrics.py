"""serving/metrics.py in one process: requests count under their route or ``other``, and the README's
/metrics example uses the names and labels the API writes. (Across workers, against the real
server: tests/test_api_contract.py, finding 7.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from serving import metrics

from .test_readme_examples import blocks, section

SERVICE = (("service_name", "valuecast"),)
SCORE_IN_PROGRESS = ("bentoml_service_request_in_progress", (("endpoint", "/score"), *SERVICE))


def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample of a /metrics text: its name and sorted labels, and its value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def request_count(samples: dict, endpoint: str, code: str) -> float:
    """``bentoml_service_request_total`` of one route and status in :func:`series`' samples (0 if absent)."""
    labels = (("endpoint", endpoint), ("http_response_code", code), *SERVICE)
    return samples.get(("bentoml_service_request_total", labels), 0.0)


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return series(metrics.exposition()[0].decode())


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(5)
    return PlainTextResponse("late")


def _ask(app: Any, *requests: tuple[str, str]) -> list[int]:
    """Send (method, path) requests to an ASGI app in one process; their status codes."""

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return [(await client.request(method, path)).status_code for method, path in requests]

    return asyncio.run(send_all())


def _counted(endpoint: Callable[[Request], Awaitable[PlainTextResponse]]) -> metrics.RouteMetrics:
    """The middleware around an app whose one route, ``POST /score``, is ``endpoint``."""
    return metrics.RouteMetrics(Starlette(routes=[Route("/score", endpoint, methods=["POST"])]), routes=("/score",))


def test_requests_count_under_their_route_and_made_up_paths_under_other() -> None:
    before = _samples()
    _ask(
        _counted(_ok), ("POST", "/score"), ("GET", "/score"), *(("GET", f"/made-up-{n}") for n in range(3))
    )  # GET: 405
    after = _samples()
    assert request_count(after, "/score", "200") - request_count(before, "/score", "200") == 1
    assert request_count(after, "/score", "405") - request_count(before, "/score", "405") == 1
    assert request_count(after, "other", "404") - request_count(before, "other", "404") == 3
    assert not any("made-up" in value for _, labels in after for _, value in labels)
    assert after[SCORE_IN_PROGRESS] == 0


def test_the_readme_metrics_example_uses_the_names_and_labels_the_api_writes() -> None:
    _ask(_counted(_ok), ("POST", "/score"), ("GET", "/made-up"))
    written = {(name, tuple(key for key, _ in labels)) for name, labels in _samples()}
    (example,) = blocks(section("### Every endpoint, by example"), "text")
    shown = {(name, tuple(key for key, _ in labels)) for name, labels in series(example)}
    assert shown and shown <= written, shown - written


def test_a_request_bentomls_timeout_cancels_counts_as_504() -> None:
    """BentoML's timeout middleware sits outside ours: it cancels the request and answers 504 itself."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    before = _samples()
    assert _ask(TimeoutMiddleware(_counted(_slow), timeout=0.05), ("POST", "/score")) == [504]
    after = _samples()
    assert request_count(after, "/score", "504") - request_count(before, "/score", "504") == 1
    assert after[SCORE_IN_PROGRESS] == 0
