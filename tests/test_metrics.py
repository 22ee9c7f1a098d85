"""serving/metrics.py in one process: requests count under their route or ``other``, and the README's
/metrics example uses the names and labels the API writes. (Across workers, against the real
server: tests/test_api_contract.py, finding 7.)"""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from serving import metrics

from .test_readme_examples import blocks, section


def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _ask(*requests: tuple[str, str]) -> None:
    """Send (method, path) requests through the middleware around a one-route app."""
    app = metrics.RouteMetrics(Starlette(routes=[Route("/score", _ok, methods=["POST"])]), routes=("/score",))

    async def send_all() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            for method, path in requests:
                await client.request(method, path)

    asyncio.run(send_all())


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _count(samples: dict, endpoint: str, code: str) -> float:
    labels = (("endpoint", endpoint), ("http_response_code", code), ("service_name", "valuecast"))
    return samples.get(("bentoml_service_request_total", labels), 0.0)


def test_requests_count_under_their_route_and_made_up_paths_under_other() -> None:
    before = _samples()
    _ask(("POST", "/score"), ("GET", "/score"), *(("GET", f"/made-up-{n}") for n in range(3)))  # GET: 405
    after = _samples()
    assert _count(after, "/score", "200") - _count(before, "/score", "200") == 1
    assert _count(after, "/score", "405") - _count(before, "/score", "405") == 1
    assert _count(after, "other", "404") - _count(before, "other", "404") == 3
    assert not any("made-up" in value for _, labels in after for _, value in labels)
    in_progress = ("bentoml_service_request_in_progress", (("endpoint", "/score"), ("service_name", "valuecast")))
    assert after[in_progress] == 0


def test_the_readme_metrics_example_uses_the_names_and_labels_the_api_writes() -> None:
    _ask(("POST", "/score"), ("GET", "/made-up"))
    written = {(name, tuple(key for key, _ in labels)) for name, labels in _samples()}
    (example,) = blocks(section("### Every endpoint, by example"), "text")
    shown = {
        (s.name, tuple(sorted(s.labels))) for family in text_string_to_metric_families(example) for s in family.samples
    }
    assert shown and shown <= written, shown - written


def test_a_request_bentomls_timeout_cancels_counts_as_504() -> None:
    """BentoML's timeout middleware sits outside ours: it cancels the request and answers 504 itself."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    async def slow(request: Request) -> PlainTextResponse:
        await asyncio.sleep(5)
        return PlainTextResponse("late")

    inner = metrics.RouteMetrics(Starlette(routes=[Route("/score", slow, methods=["POST"])]), routes=("/score",))
    app = TimeoutMiddleware(inner, timeout=0.05)

    async def ask() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return (await client.post("/score")).status_code

    before = _samples()
    assert asyncio.run(ask()) == 504
    after = _samples()
    assert _count(after, "/score", "504") - _count(before, "/score", "504") == 1
    in_progress = ("bentoml_service_request_in_progress", (("endpoint", "/score"), ("service_name", "valuecast")))
    assert after[in_progress] == 0
