"""Benchmark: the scoring API under load, side by side with ``mlflow models serve`` (issue 4).

Sets up a temporary MLflow store with champions trained on the CDNOW sample and a frozen segment
file, starts the real service (``bentoml serve``, VALUECAST_WORKERS workers) on a free port, and
drives it with CLIENTS concurrent clients, each sending one customer with 20 transactions per
request. ``mlflow models serve --env-manager local`` serving the churn champion runs beside it and
gets the same customers (the pyfunc's raw-transaction input and its ``as_of`` parameter) from the
same client; the two take turns, ROUNDS rounds of DURATION seconds each, and the medians are
compared. Then one request of 1,000 customers (a warm-up, then p50 and best of nine).

    python -m benchmarks.bench_serve [--clients 16] [--duration 10] [--rounds 3]

Then, one client at a time, one customer with and without a category on each purchase; and open-loop
runs (Poisson arrivals at fixed rates, latency from each request's scheduled time).

Targets: p50 <= 15 ms, p99 <= 100 ms, zero errors; 1,000 customers p50 <= 100 ms; at least 4.5x the
requests/s of mlflow models serve; categories within 1.5x; open loop at 300/s p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import numpy as np
import pandas as pd

from features.config import PROJECT_ROOT

if TYPE_CHECKING:
    from serving.scoring import Champions

AS_OF = "1998-07-01"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def customers(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n customers with 20 transactions each between 1997-01-01 and the as-of date."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("1997-01-01")
    out = []
    for i in range(n):
        days = np.sort(rng.choice(545, size=20, replace=False))
        amounts = np.round(rng.gamma(2.0, 18.0, size=20), 2)
        out.append(
            {
                "customer_id": f"bench-{i}",
                "transactions": [
                    {"timestamp": (start + pd.Timedelta(days=int(d))).strftime("%Y-%m-%d"), "amount": float(a)}
                    for d, a in zip(days, amounts, strict=True)
                ],
            }
        )
    return out


def wait_until(url: str, seconds: float, process: subprocess.Popen[bytes] | None = None, workers: int = 1) -> None:
    """Until ``url`` answers 200; for the API's /readyz, which names the worker that answered, until
    ``workers`` different workers have (each probe on a new connection, which any worker may accept).
    Each worker loads the models on its own, and catches up with another's /reload on its own next
    request, holding its requests meanwhile (the reload runs in its event loop): that belongs to the
    reload figures, not to the steady-state latency measured after them."""
    deadline = time.time() + seconds
    seen: set[int] = set()
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"server exited early with code {process.returncode}")
        try:
            answer = httpx.get(url, timeout=10)
        except httpx.HTTPError:
            answer = None
        if answer is not None and answer.status_code == 200:
            try:
                worker = answer.json().get("worker")
            except (ValueError, AttributeError):  # mlflow's /ping: no JSON object
                worker = None
            if not isinstance(worker, int):
                return
            seen.add(worker)
            if len(seen) >= workers:
                return
            continue
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready within {seconds:.0f} s (workers answering: {sorted(seen)} of {workers})")


async def load(url: str, bodies: list[Any], clients: int, duration: float) -> dict[str, float]:
    """``clients`` concurrent clients, each posting the next body as soon as its last answer is in.

    aiohttp, not httpx: the client shares the 2 cores with the server, and httpx spent 2.4-3.6 ms of
    CPU per request against aiohttp's 0.6-1.2 ms. The client's CPU per request is reported.
    """
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = index
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += clients
            start = time.perf_counter()
            try:
                async with session.post(url, json=body) as answer:
                    await answer.read()
                    ok = answer.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += 0 if ok else 1

    cpu_before = time.process_time()
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), connector=connector) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "rps": len(ms) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
        "client_cpu_ms": (time.process_time() - cpu_before) * 1000 / max(len(ms), 1),
    }


async def load_with_reloads(
    base: str, bodies: list[Any], clients: int, duration: float, every: float
) -> tuple[dict[str, float], list[float], int]:
    """:func:`load` on /score while another client posts /reload every ``every`` seconds (issue 14:
    0 errors during reloads). Returns the load figures, each reload's seconds and failed reloads."""
    seconds: list[float] = []
    failed = 0

    async def reloader() -> None:
        nonlocal failed
        deadline = time.perf_counter() + duration
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            while time.perf_counter() + every < deadline:
                await asyncio.sleep(every)
                began = time.perf_counter()
                try:
                    async with session.post(f"{base}/reload") as answer:
                        await answer.read()
                        failed += answer.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    failed += 1
                seconds.append(time.perf_counter() - began)

    figures, _ = await asyncio.gather(load(f"{base}/score", bodies, clients, duration), reloader())
    return figures, seconds, failed


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def line(name: str, r: dict[str, float]) -> str:
    return (
        f"{name:<28} {r['requests']:>8,.0f} {r['rps']:>9.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['errors']:>7,.0f}"
        f" {r['client_cpu_ms']:>12.2f}"
    )


async def open_loop(url: str, bodies: list[Any], rate: float, duration: float, seed: int = 0) -> dict[str, float]:
    """Requests arriving as a Poisson process of ``rate`` per second for ``duration`` seconds, each sent
    at its scheduled time whatever the answers before it; latency counted from the scheduled time, so
    a server that falls behind shows its queue (no coordinated omission: Tene, "How NOT to measure
    latency"). The client runs on the same machine as the server."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration * 1.5) + 10)
    offsets = np.cumsum(gaps)
    offsets = offsets[offsets < duration]
    latencies: list[float] = []
    errors = 0

    async def one(i: int, at: float, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            async with session.post(url, json=bodies[i % len(bodies)]) as answer:
                await answer.read()
                errors += answer.status != 200
        except (aiohttp.ClientError, TimeoutError):
            errors += 1
        latencies.append(time.perf_counter() - at)

    connector = aiohttp.TCPConnector(limit=1024)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), connector=connector) as session:
        began = time.perf_counter() + 0.1
        await asyncio.gather(*(one(i, began + float(o), session) for i, o in enumerate(offsets)))
    ms = np.array(latencies) * 1000
    return {
        "rate": rate,
        "requests": len(ms),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def sequential_p50(url: str, bodies: list[Any], count: int = 200) -> float:
    """p50 latency of ``count`` requests sent one after another by one client (no queueing)."""
    timings = []
    with httpx.Client(timeout=30) as session:
        for i in range(count):
            began = time.perf_counter()
            answer = session.post(url, json=bodies[i % len(bodies)])
            timings.append((time.perf_counter() - began) * 1000)
            assert answer.status_code == 200, answer.text
    return float(np.median(timings))


def with_categories(customer: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The customer with a category on every purchase (the champions' own category names)."""
    rows = [{**t, "category": names[i % len(names)]} for i, t in enumerate(customer["transactions"])]
    return {**customer, "transactions": rows}


@dataclass
class Measurements:
    """What the benchmark measured, for :func:`report`."""

    rounds: dict[str, list[dict[str, float]]]  # per server, each round's figures
    reloading: tuple[dict[str, float], list[float], int] | None  # see load_with_reloads
    one_plain: float
    one_categorised: float
    open_figures: list[dict[str, float]]
    big_ms: float
    big_p50: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round and server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--reload-every", type=float, default=2.0, help="seconds between reloads in the final 30 s (0: skip)"
    )
    parser.add_argument("--workers", type=int, default=int(os.environ.get("VALUECAST_WORKERS", "2")))
    parser.add_argument(
        "--open-loop-rates", default="100,200,300", help="requests/s of the open-loop runs, comma-separated ('': skip)"
    )
    parser.add_argument("--open-loop-seconds", type=float, default=20.0)
    return parser.parse_args()


def serve_env(folder: Path, workers: int) -> dict[str, str]:
    """The environment of the benchmark and both servers: a temporary MLflow store, segment folder and
    reload stamp under ``folder``."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "VALUECAST_ARTIFACT_ROOT": (folder / "artifacts").as_uri(),
        "VALUECAST_SEGMENTS_DIR": str(folder / "segments"),
        "VALUECAST_RELOAD_STAMP": str(folder / "reload.stamp"),
        "VALUECAST_WORKERS": str(workers),
        "OMP_NUM_THREADS": "1",  # both servers: no OpenMP spin-waiting between workers
        # mlflow models serve starts `uvicorn` from the PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def train_champions() -> Champions:
    """Champions of churn, propensity and CLV trained on the CDNOW sample into the store of the
    environment, and the sample's segment file frozen from their scores."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    from features.config import load_dataset_config
    from features.io import load_dataset
    from serving.scoring import load_champions, model_scores
    from serving.segments.rules import freeze, load_rules, write_frozen
    from training.run import train_and_log

    print("setting up: training churn, propensity and CLV on the CDNOW sample into a temporary store ...")
    from training import tracking

    for family in ("churn", "propensity", "clv"):
        outcome = train_and_log(family, "cdnow_sample", echo=lambda _: None)
        if not outcome.promotion.promoted:  # on the sample a version may lose to a baseline: serve it anyway
            tracking.promote(outcome.promotion.registered_name, outcome.promotion.version)
    champions = load_champions("cdnow_sample")
    scores, facts = model_scores(champions, load_dataset(load_dataset_config("cdnow_sample")), AS_OF)
    write_frozen(freeze(pd.concat([scores, facts], axis=1), load_rules(), "cdnow_sample"), "cdnow_sample")
    return champions


def mlflow_serve_command(bin_dir: Path, model_uri: str, workers: int, port: int) -> list[str]:
    return [
        str(bin_dir / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--workers",
        str(workers),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def mlflow_body(customer: dict[str, Any]) -> dict[str, Any]:
    """The customer as the churn pyfunc takes it from ``mlflow models serve``: raw transactions and ``as_of``."""
    return {
        "dataframe_split": {
            "columns": ["customer_id", "timestamp", "amount"],
            "data": [[customer["customer_id"], t["timestamp"], t["amount"]] for t in customer["transactions"]],
        },
        "params": {"as_of": AS_OF},
    }


def big_request(base: str, times: int = 9) -> tuple[float, float]:
    """One request of 1,000 customers: one warm-up, then ``times`` timed; the best and the median
    milliseconds. The body is encoded to JSON once, before the clock starts: encoding 1 MB of JSON
    costs the client ~19 ms, which is not the server's latency (httpx's ``json=`` did it inside the
    timed call until 2026-12-02)."""
    body = json.dumps({"as_of": AS_OF, "customers": customers(1000, seed=1)}).encode()
    headers = {"content-type": "application/json"}
    timings = []
    with httpx.Client(timeout=60) as session:
        assert session.post(f"{base}/score", content=body, headers=headers).status_code == 200
        for _ in range(times):
            began = time.perf_counter()
            answer = session.post(f"{base}/score", content=body, headers=headers)
            timings.append((time.perf_counter() - began) * 1000)
            assert answer.status_code == 200, answer.text
    return min(timings), float(np.median(timings))


def measure(
    args: argparse.Namespace, targets: dict[str, tuple[str, list[Any]]], ours_base: str, pool: list[dict[str, Any]]
) -> Measurements:
    """The servers taking turns under load, then reloads, one client with and without categories, the
    open-loop runs and the 1,000-customer request (both servers are ready)."""
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for url, bodies in targets.values():
        asyncio.run(load(url, bodies[:32], args.clients, 3.0))  # warm-up
    for _ in range(args.rounds):
        for name, (url, bodies) in targets.items():
            rounds[name].append(asyncio.run(load(url, bodies, args.clients, args.duration)))
    reloading = None
    if args.reload_every > 0:
        reloading = asyncio.run(
            load_with_reloads(ours_base, targets["valuecast /score"][1], args.clients, 30.0, args.reload_every)
        )
        wait_until(f"{ours_base}/readyz", 60, workers=args.workers)
    plain = [{"as_of": AS_OF, "customers": [c]} for c in pool[:50]]
    names = ["Rock", "Pop", "Jazz"]  # any names: a category the models do not know counts as other
    categorised = [{"as_of": AS_OF, "customers": [with_categories(c, names)]} for c in pool[:50]]
    one_plain = sequential_p50(f"{ours_base}/score", plain)
    one_categorised = sequential_p50(f"{ours_base}/score", categorised)
    rates = [float(r) for r in args.open_loop_rates.split(",") if r.strip()]
    open_figures = [
        asyncio.run(open_loop(f"{ours_base}/score", targets["valuecast /score"][1], rate, args.open_loop_seconds))
        for rate in rates
    ]
    big_ms, big_p50 = big_request(ours_base)
    return Measurements(rounds, reloading, one_plain, one_categorised, open_figures, big_ms, big_p50)


def print_rounds(rounds: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each server's rounds and their medians (requests and errors: totals), as table rows; returns the medians."""
    medians: dict[str, dict[str, float]] = {}
    for name, runs in rounds.items():
        for position, r in enumerate(runs, start=1):
            print(line(f"{name} #{position}", r))
        medians[name] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        medians[name]["requests"] = float(sum(r["requests"] for r in runs))
        medians[name]["errors"] = float(sum(r["errors"] for r in runs))
    for name, r in medians.items():
        print(line(f"{name} median", r))
    return medians


def report(args: argparse.Namespace, measured: Measurements) -> None:
    """The figures next to their targets."""
    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.clients} clients, {args.rounds} rounds of {args.duration:.0f} s per server, taking turns; "
        f"one customer with 20 transactions per request; workers: {args.workers} per server"
    )
    header = f"{'server':<28} {'requests':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
    print(f"{header} {'client CPU ms':>12}")
    medians = print_rounds(measured.rounds)
    ours, theirs = medians["valuecast /score"], medians["mlflow models serve (churn)"]
    pairs = zip(measured.rounds["valuecast /score"], measured.rounds["mlflow models serve (churn)"], strict=True)
    ratios = [a["rps"] / b["rps"] for a, b in pairs]
    print()
    print(
        f"valuecast p50 {ours['p50']:.1f} ms (target <= 15), p99 {ours['p99']:.1f} ms (target <= 100), "
        f"errors {ours['errors']:.0f} (target 0)"
    )
    print(
        f"1,000 customers in one request: p50 {measured.big_p50:.0f} ms, best {measured.big_ms:.0f} ms of 9 "
        "(target: p50 <= 100 ms)"
    )
    one_plain, one_categorised = measured.one_plain, measured.one_categorised
    print(
        f"one customer, one client, p50 of 200: {one_plain:.1f} ms plain, {one_categorised:.1f} ms with a category on "
        f"every purchase ({one_categorised / one_plain:.2f}x; target <= 1.5x)"
    )
    for figures in measured.open_figures:
        print(
            f"open loop, Poisson arrivals at {figures['rate']:.0f}/s for {args.open_loop_seconds:.0f} s: "
            f"{figures['requests']:.0f} requests, p50 {figures['p50']:.1f} ms, p99 {figures['p99']:.1f} ms, "
            f"{figures['errors']:.0f} errors (target at 300/s: p99 <= 50 ms, 0 errors)"
        )
    if measured.reloading is not None:
        figures, reload_seconds, failed = measured.reloading
        print(
            f"30 s of {args.clients} clients with POST /reload every {args.reload_every:g} s: "
            f"{figures['requests']:,.0f} requests, {figures['errors']:.0f} errors (target 0); "
            f"{len(reload_seconds)} reloads, {failed} failed, median {np.median(reload_seconds) * 1000:.0f} ms, "
            f"slowest {max(reload_seconds) * 1000:.0f} ms"
        )
    print(
        f"requests/s vs mlflow models serve: {ours['rps'] / theirs['rps']:.2f}x of the medians, per round "
        f"{', '.join(f'{r:.2f}x' for r in ratios)} (target >= 4.5x)"
    )


def main() -> None:
    args = parse_args()
    warnings.simplefilter("ignore")
    folder = Path(tempfile.mkdtemp(prefix="valuecast-bench-serve-"))
    env = serve_env(folder, args.workers)
    os.environ.update(env)
    champions = train_champions()

    pool = customers(400)
    bin_dir = Path(sys.executable).parent
    churn = champions.models["churn"]
    ours_port, theirs_port = free_port(), free_port()
    ours_base, theirs_base = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{theirs_port}"
    # Both servers run side by side (an idle server costs no CPU) and take turns under load, so that
    # the drift of this VM's speed (up to 2x between minutes) hits both alike.
    service = start([str(bin_dir / "bentoml"), "serve", "serving.service:ValueService", "--port", str(ours_port)], env)
    churn_uri = f"models:/{churn.registered_name}/{churn.version}"
    mlflow_server = start(mlflow_serve_command(bin_dir, churn_uri, args.workers, theirs_port), env)
    targets = {
        "valuecast /score": (f"{ours_base}/score", [{"as_of": AS_OF, "customers": [c]} for c in pool]),
        "mlflow models serve (churn)": (f"{theirs_base}/invocations", [mlflow_body(c) for c in pool]),
    }
    # The client holds ~800,000 objects (the libraries, the champions it trained): a full collection
    # of them paused it for 0.6 s in the middle of an open-loop run, which counted as the servers'
    # latency (scheduled times passed unsent). Out of the collector's scans from here on.
    gc.collect()
    gc.freeze()
    try:
        wait_until(f"{ours_base}/readyz", 120, service, args.workers)
        wait_until(f"{theirs_base}/ping", 120, mlflow_server)
        measured = measure(args, targets, ours_base, pool)
    finally:
        stop(service)
        stop(mlflow_server)
    report(args, measured)


if __name__ == "__main__":
    main()
