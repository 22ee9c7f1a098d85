"""Delivery of a refresh's segment changes to a webhook, each change at most once.

Changes go out as JSON batches (``POST``, ``{"dataset", "as_of", "previous_as_of", "changes": [...]}``),
each change with its ``idempotency_key`` (one per customer and ``as_of``: a receiver that has seen the
key has the change already) and the batch with an ``Idempotency-Key`` header. The body is signed:
``X-Valuecast-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` with the secret of
``VALUECAST_WEBHOOK_SECRET`` and the Unix time of ``X-Valuecast-Timestamp``, so the receiver can reject
forged and replayed requests. Time-outs, dropped connections, 408, 425, 429 and 5xx answers are
retried with exponential backoff and jitter (``Retry-After`` is honoured up to the cap); any other
answer but 2xx fails the batch at once. Redirects are not followed.

What is delivered is recorded in ``delivered.jsonl`` (appended and synced after each acknowledged
batch); a run sends only the changes not recorded there, so a re-run delivers nothing twice. What still
failed is in ``dead_letter.jsonl`` with its last error, and is sent again by the next run. After
several failed batches in a row the rest is not attempted (the endpoint is down) and goes to the
dead-letter file too.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from features.config import ConfigError, format_validation_error
from features.io import atomic_path

URL_ENV = "VALUECAST_WEBHOOK_URL"
SECRET_ENV = "VALUECAST_WEBHOOK_SECRET"
LEDGER = "delivered.jsonl"
DEAD_LETTER = "dead_letter.jsonl"
RETRY_STATUSES = frozenset({408, 425, 429, *range(500, 600)})
MAX_URL_LENGTH = 2048


class WebhookSettings(BaseModel):
    """Where and how to deliver. ``url`` and ``secret`` come from the environment or the command line,
    never from a committed file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(max_length=MAX_URL_LENGTH)
    secret: SecretStr = Field(min_length=16, max_length=4096)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_attempts: int = Field(default=5, ge=1, le=20)
    backoff_seconds: float = Field(default=0.5, ge=0, le=60)
    backoff_max_seconds: float = Field(default=30.0, ge=0, le=600)
    give_up_after_failed_batches: int = Field(default=3, ge=1, le=1000)


def display_url(url: str) -> str:
    """The URL fit to print: credentials redacted (as the tracking URI), the query (often a token) left out."""
    from training.tracking import redacted

    parts = urlsplit(redacted(url))
    return parts._replace(query="***" if parts.query else "", fragment="").geturl()


def check_url(url: str) -> str:
    """An http(s) URL with a host; plain http only to this machine (the signature does not hide the data)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        raise ConfigError(f"webhook URL {display_url(url)!r} is not a URL ({exc}): give https://host/path") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"webhook URL {display_url(url)!r} must be https://host/path (WEBHOOK= or {URL_ENV})")
    if parts.scheme == "http" and not _loopback(host):
        raise ConfigError(
            f"webhook URL {display_url(url)!r} is plain http to another machine: use https (plain http is allowed "
            "to 127.0.0.1 and localhost only)"
        )
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from(url: str | None, secret: str | None, **options: Any) -> WebhookSettings | None:
    """Settings from a URL (None: no delivery) and the secret (the environment's), checked; the error
    names the option and never shows the secret."""
    if not url:
        return None
    check_url(url)
    if not secret:
        raise ConfigError(
            f"delivering to {display_url(url)} needs {SECRET_ENV}: set it to the secret the receiver checks "
            "X-Valuecast-Signature with (16 characters or more)"
        )
    try:
        return WebhookSettings(url=url, secret=SecretStr(secret), **options)
    except ValidationError as exc:
        if any(error["loc"] == ("secret",) for error in exc.errors()):
            raise ConfigError(f"{SECRET_ENV} must be 16 to 4096 characters long") from None
        raise ConfigError(f"webhook settings: {format_validation_error(exc)}") from None


@dataclass
class DeliveryResult:
    delivered: int = 0
    already_delivered: int = 0
    dead_letter: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    dead_letter_file: Path | None = None

    def line(self) -> str:
        text = (
            f"delivered {self.delivered:,} change(s) in {self.requests:,} request(s); "
            f"{self.already_delivered:,} delivered before"
        )
        if self.dead_letter:
            text += f"; {self.dead_letter:,} failed, in {self.dead_letter_file} (the next run sends them again)"
        return text


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``"<timestamp>." + body``; a receiver recomputes it."""
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def delivered_keys(folder: Path) -> set[str]:
    """The idempotency keys acknowledged so far; a line cut short by a crash is skipped (its batch is
    sent again, and the receiver knows its keys)."""
    path = Path(folder) / LEDGER
    keys: set[str] = set()
    if not path.is_file():
        return keys
    for line in path.read_text().splitlines():
        try:
            keys.add(str(json.loads(line)["idempotency_key"]))
        except (ValueError, KeyError, TypeError):
            continue
    return keys


def _records(changes: pd.DataFrame) -> list[dict[str, Any]]:
    def plain(value: Any) -> Any:
        value = value.item() if hasattr(value, "item") else value  # numpy scalars to Python
        if isinstance(value, float) and not math.isfinite(value):
            return None  # JSON has no NaN or infinity
        return value

    return [{k: plain(v) for k, v in row.items()} for row in changes.to_dict(orient="records")]


def _batches(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _append(path: Path, keys: list[str], batch_key: str) -> None:
    """Record acknowledged keys durably before going on: a crash after this never resends them."""
    with path.open("a") as ledger:
        for key in keys:
            ledger.write(json.dumps({"idempotency_key": key, "batch": batch_key}) + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())


def deliver(
    changes: pd.DataFrame,
    folder: Path,
    settings: WebhookSettings,
    *,
    dataset: str,
    as_of: str,
    previous_as_of: str | None,
    sleep: Callable[[float], None] = time.sleep,
    transport: httpx.BaseTransport | None = None,
    echo: Callable[[str], object] = lambda _: None,
) -> DeliveryResult:
    """Send the ``changes`` (rows of :func:`serving.segments.refresh.changes`) not yet in ``folder``'s ledger."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = delivered_keys(folder)
    rows = _records(changes)
    pending = [row for row in rows if row["idempotency_key"] not in done]
    result = DeliveryResult(already_delivered=len(rows) - len(pending))
    failed: list[tuple[dict[str, Any], str, int]] = []
    failed_in_a_row = 0
    jitter = random.Random()
    secret = settings.secret.get_secret_value()
    url = settings.url
    with httpx.Client(timeout=settings.timeout_seconds, follow_redirects=False, transport=transport) as client:
        for batch in _batches(pending, settings.batch_size):
            keys = [row["idempotency_key"] for row in batch]
            if failed_in_a_row >= settings.give_up_after_failed_batches:
                reason = f"not attempted: {failed_in_a_row} batches in a row failed (last: {result.errors[-1]})"
                failed += [(row, reason, 0) for row in batch]
                continue
            batch_key = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:32]
            body = _batch_body(batch, dataset, as_of, previous_as_of)
            ok, error, attempts = _post(client, url, body, batch_key, secret, settings, sleep, jitter, result)
            if ok:
                _append(folder / LEDGER, keys, batch_key)
                result.delivered += len(batch)
                failed_in_a_row = 0
            else:
                error = error.replace(url, display_url(url))
                echo(f"  batch of {len(batch)} failed after {attempts} attempt(s): {error}")
                result.errors.append(error)
                failed += [(row, error, attempts) for row in batch]
                failed_in_a_row += 1
    _record_dead_letter(folder, failed, result)
    return result


def _batch_body(batch: list[dict[str, Any]], dataset: str, as_of: str, previous_as_of: str | None) -> bytes:
    """The JSON a batch is sent as: compact and with sorted keys, so that its signature is reproducible."""
    return json.dumps(
        {"dataset": dataset, "as_of": as_of, "previous_as_of": previous_as_of, "changes": batch},
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    ).encode()


def _record_dead_letter(folder: Path, failed: list[tuple[dict[str, Any], str, int]], result: DeliveryResult) -> None:
    """Replace ``folder``'s dead-letter file with the changes that still failed, each with its last error
    and attempts, or remove it when none did."""
    result.dead_letter = len(failed)
    dead = folder / DEAD_LETTER
    if failed:
        with atomic_path(dead) as tmp:
            tmp.write_text(
                "".join(
                    json.dumps({"change": row, "error": error, "attempts": attempts}, sort_keys=True) + "\n"
                    for row, error, attempts in failed
                )
            )
        result.dead_letter_file = dead
    else:
        dead.unlink(missing_ok=True)


def _post(
    client: httpx.Client,
    url: str,
    body: bytes,
    batch_key: str,
    secret: str,
    settings: WebhookSettings,
    sleep: Callable[[float], None],
    jitter: random.Random,
    result: DeliveryResult,
) -> tuple[bool, str, int]:
    """One batch, with retries: (acknowledged, the last error, attempts made)."""
    error = ""
    for attempt in range(1, settings.max_attempts + 1):
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "valuecast-refresh",
            "idempotency-key": batch_key,
            "x-valuecast-timestamp": str(timestamp),
            "x-valuecast-signature": sign(secret, timestamp, body),
        }
        retry_after: float | None = None
        result.requests += 1
        try:
            response = client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            error = f"no answer within {settings.timeout_seconds:g} s"
        except httpx.TransportError as exc:  # refused, reset, dropped without an answer
            error = f"connection failed: {type(exc).__name__}: {exc}"
        else:
            if 200 <= response.status_code < 300:
                return True, "", attempt
            error = f"HTTP {response.status_code}"
            if response.status_code not in RETRY_STATUSES:
                if 300 <= response.status_code < 400:
                    error += " (a redirect: give the final URL; redirects are not followed)"
                return False, error, attempt
            retry_after = _retry_after(response.headers.get("retry-after"))
        if attempt < settings.max_attempts:
            delay = min(settings.backoff_max_seconds, settings.backoff_seconds * 2 ** (attempt - 1))
            delay *= 0.5 + jitter.random() / 2  # jitter: many senders do not come back in step
            if retry_after is not None:
                delay = max(delay, min(retry_after, settings.backoff_max_seconds))
            sleep(delay)
    return False, error, settings.max_attempts


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header given in seconds (a date is ignored: backoff applies)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None
