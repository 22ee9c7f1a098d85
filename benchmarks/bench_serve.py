"""Benchmark: the scoring API under load, side by side with ``mlflow models serve`` (issue 4).

Sets up a temporary MLflow store with champions trained on the CDNOW sample and a frozen segment
file, starts the real service (``bentoml serve``, VALUECAST_WORKERS workers) on a free port, and
drives it with CLIENTS concurrent clients, each sending one customer with 20 transactions per
request for DURATION seconds. Then one request of 1,000 customers (best of five). Then
``mlflow models serve --env-manager local`` serving the churn champion, driven by the same client
with the same customers (the pyfunc's raw-transaction input and its ``as_of`` parameter).

    python -m benchmarks.bench_serve [--clients 16] [--duration 20]

Targets: p50 <= 15 ms, p99 <= 100 ms, zero errors; 1,000 customers < 250 ms; at least 3x the
requests/s of mlflow models serve.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from features.config import PROJECT_ROOT

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


def wait_until(url: str, seconds: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited early with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready within {seconds:.0f} s")


async def load(url: str, bodies: list[Any], clients: int, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def client(index: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(timeout=30) as session:
            i = index
            while time.perf_counter() < stop_at:
                body = bodies[i % len(bodies)]
                i += clients
                start = time.perf_counter()
                try:
                    answer = await session.post(url, json=body)
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "rps": len(ms) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
    }


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
    return f"{name:<26} {r['requests']:>8,.0f} {r['rps']:>9.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['errors']:>7,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("VALUECAST_WORKERS", "2")))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    folder = Path(tempfile.mkdtemp(prefix="valuecast-bench-serve-"))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "VALUECAST_ARTIFACT_ROOT": (folder / "artifacts").as_uri(),
        "VALUECAST_SEGMENTS_DIR": str(folder / "segments"),
        "VALUECAST_RELOAD_STAMP": str(folder / "reload.stamp"),
        "VALUECAST_WORKERS": str(args.workers),
        "OMP_NUM_THREADS": "1",  # both servers: no OpenMP spin-waiting between workers
        # mlflow models serve starts `uvicorn` from the PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    os.environ.update(env)
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    from features.config import load_dataset_config
    from features.io import load_dataset
    from serving.scoring import load_champions, model_scores
    from serving.segments import freeze, load_rules, write_frozen
    from training.run import train_and_log

    print("setting up: training churn, propensity and CLV on the CDNOW sample into a temporary store ...")
    for family in ("churn", "propensity", "clv"):
        train_and_log(family, "cdnow_sample", echo=lambda _: None)
    champions = load_champions()
    scores, facts = model_scores(champions, load_dataset(load_dataset_config("cdnow_sample")), AS_OF)
    write_frozen(freeze(pd.concat([scores, facts], axis=1), load_rules(), "cdnow_sample"))

    pool = customers(400)
    results: dict[str, dict[str, float]] = {}
    bin_dir = Path(sys.executable).parent

    port = free_port()
    service = start([str(bin_dir / "bentoml"), "serve", "serving.service:ValueService", "--port", str(port)], env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(f"{base}/readyz", 120, service)
        bodies = [{"as_of": AS_OF, "customers": [c]} for c in pool]
        asyncio.run(load(f"{base}/score", bodies[:32], args.clients, 3.0))  # warm-up
        results["valuecast /score"] = asyncio.run(load(f"{base}/score", bodies, args.clients, args.duration))
        big = {"as_of": AS_OF, "customers": customers(1000, seed=1)}
        timings = []
        with httpx.Client(timeout=60) as session:
            for _ in range(5):
                began = time.perf_counter()
                answer = session.post(f"{base}/score", json=big)
                timings.append((time.perf_counter() - began) * 1000)
                assert answer.status_code == 200, answer.text
        big_ms = min(timings)
    finally:
        stop(service)

    port = free_port()
    churn = champions.models["churn"]
    mlflow_server = start(
        [
            str(bin_dir / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{churn.registered_name}/{churn.version}",
            "--env-manager",
            "local",
            "--workers",
            str(args.workers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(f"{base}/ping", 120, mlflow_server)
        to_split: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: {  # noqa: E731
            "dataframe_split": {
                "columns": ["customer_id", "timestamp", "amount"],
                "data": [[c["customer_id"], t["timestamp"], t["amount"]] for t in c["transactions"]],
            },
            "params": {"as_of": AS_OF},
        }
        bodies = [to_split(c) for c in pool]
        asyncio.run(load(f"{base}/invocations", bodies[:32], args.clients, 3.0))
        results["mlflow models serve (churn)"] = asyncio.run(
            load(f"{base}/invocations", bodies, args.clients, args.duration)
        )
    finally:
        stop(mlflow_server)

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.clients} clients, {args.duration:.0f} s each, one customer with 20 transactions per request; "
        f"valuecast workers: {args.workers}"
    )
    print(f"{'server':<26} {'requests':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in results.items():
        print(line(name, r))
    ours, theirs = results["valuecast /score"], results["mlflow models serve (churn)"]
    ratio = ours["rps"] / theirs["rps"] if theirs["rps"] else float("inf")
    print()
    print(
        f"valuecast p50 {ours['p50']:.1f} ms (target <= 15), p99 {ours['p99']:.1f} ms (target <= 100), "
        f"errors {ours['errors']:.0f} (target 0)"
    )
    print(f"1,000 customers in one request: {big_ms:.0f} ms (best of 5; target < 250)")
    print(f"requests/s vs mlflow models serve: {ratio:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
