"""make refresh: transitions, change files, the history table, atomic OUT, and webhook delivery against
a real local HTTP server that fails in the ways networks fail."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import ConfigError
from serving.batch import MARKER
from serving.segments import delivery, refresh
from serving.segments.refresh import DEPARTED, NEW
from valuecast.cli import app

runner = CliRunner()
DAY1, DAY2, DAY3 = pd.Timestamp("1998-01-01"), pd.Timestamp("1998-04-01"), pd.Timestamp("1998-07-01")


def customers(spec: dict[str, tuple[str, str, str, float]]) -> pd.DataFrame:
    """History rows from {customer: (segment, value_tier, risk_band, clv)}; other facts fixed."""
    return pd.DataFrame(
        [
            {
                "customer_id": cid,
                "segment": segment,
                "action": f"do {segment}",
                "value_tier": tier,
                "past_value_tier": "B",
                "risk_band": risk,
                "potential_band": "low",
                "lapsed": False,
                "suppressed": False,
                "suppression_reason": None,
                "clv": clv,
                "segment_version": "v1",
            }
            for cid, (segment, tier, risk, clv) in spec.items()
        ]
    )


FIRST = customers(
    {"a": ("maintain", "A", "low", 100.0), "b": ("grow", "B", "low", 40.0), "c": ("nurture", "C", "low", 5.0)}
)
# a: its churn risk rose (maintain -> protect); b stays; c left the data; d is new
SECOND = customers(
    {"a": ("protect", "A", "high", 80.0), "b": ("grow", "B", "low", 45.0), "d": ("nurture", "C", "low", 7.0)}
)


def test_transitions_count_everyone_of_both_dates_with_new_and_departed_shown() -> None:
    previous, current = refresh.normalized(FIRST), refresh.normalized(SECOND)
    table = refresh.transitions(previous, current)
    cells = {(r.from_segment, r.to_segment): (r.customers, r.previous_clv, r.clv) for r in table.itertuples()}
    assert cells == {
        ("maintain", "protect"): (1, 100.0, 80.0),
        ("grow", "grow"): (1, 40.0, 45.0),
        ("nurture", DEPARTED): (1, 5.0, 0.0),
        (NEW, "nurture"): (1, 0.0, 7.0),
    }
    matrix = refresh.transition_matrix(table)
    assert matrix.to_numpy().sum() == 4  # a, b, c, d
    assert matrix.index[0] == NEW and matrix.columns[-1] == DEPARTED

    changed = refresh.changes(previous, current, "shop", DAY2, DAY1).set_index("customer_id")
    assert sorted(changed.index) == ["a", "c", "d"]  # b stayed in its segment
    assert changed.loc["a", "reason"] == "risk_band low -> high"
    assert (changed.loc["a", "previous_segment"], changed.loc["a", "new_segment"]) == ("maintain", "protect")
    assert changed.loc["c", "new_segment"] == DEPARTED and changed.loc["c", "reason"].startswith("departed")
    assert changed.loc["d", "previous_segment"] == NEW and "not scored on 1998-01-01" in changed.loc["d", "reason"]
    key = hashlib.sha256(json.dumps(["shop", "a", "1998-04-01"]).encode()).hexdigest()[:32]
    assert changed.loc["a", "idempotency_key"] == key


def test_a_segment_change_without_a_fact_change_names_the_new_segment_file() -> None:
    previous = refresh.normalized(FIRST)
    current = refresh.normalized(FIRST.assign(segment=["protect", "grow", "nurture"], segment_version="v2"))
    changed = refresh.changes(previous, current, "shop", DAY2, DAY1)
    assert changed["reason"].tolist() == ["segment rules changed: segment file v1 -> v2"]


def change_files_agree_with(folder: Path) -> pd.DataFrame:
    """Check a refresh folder's change files against its transition matrix; return the matrix."""
    matrix = pd.read_csv(folder / "transition_matrix.csv").set_index("from_segment")
    table = pd.read_csv(folder / "transitions.csv")
    assert matrix.to_numpy().sum() == table["customers"].sum()
    changed = pd.read_csv(folder / "changes.csv")
    off_diagonal = sum(
        int(matrix.loc[f, t]) for f in matrix.index for t in matrix.columns if f != t and matrix.loc[f, t]
    )
    assert len(changed) == off_diagonal
    segments = (set(matrix.index) | set(matrix.columns)) - {NEW, DEPARTED}
    for segment in segments:
        entered_file, left_file = (
            folder / "changes" / f"{segment}.entered.csv",
            folder / "changes" / f"{segment}.left.csv",
        )
        entered = pd.read_csv(entered_file) if entered_file.exists() else pd.DataFrame(columns=["customer_id"])
        left = pd.read_csv(left_file) if left_file.exists() else pd.DataFrame(columns=["customer_id"])
        into = matrix[segment].drop(segment, errors="ignore").sum() if segment in matrix.columns else 0
        out_of = matrix.loc[segment].drop(segment, errors="ignore").sum() if segment in matrix.index else 0
        assert (len(entered), len(left)) == (into, out_of), segment
    return matrix


def test_three_refreshes_keep_a_history_that_reads_back_each_path(tmp_path: Path) -> None:
    out = tmp_path / "refresh"
    third = customers({"a": ("maintain", "A", "low", 90.0), "d": ("grow", "B", "low", 30.0)})
    for day, frame in ((DAY1, FIRST), (DAY2, SECOND), (DAY3, third)):
        result = refresh.write_refresh(out, "shop", day, frame)
        change_files_agree_with(result.folder)
    assert result.previous_as_of == DAY2
    assert result.summary["customers_either"] == 3  # a, b (departed now), d
    assert refresh.refreshes_in(out) == [DAY1, DAY2, DAY3]
    first = pd.read_csv(out / "refreshes" / "1998-01-01" / "changes.csv")
    assert set(first["previous_segment"]) == {NEW} and set(first["reason"]) == {"first refresh"}

    paths = refresh.customer_paths(out)
    assert paths.loc["a"].tolist() == ["maintain", "protect", "maintain"]
    assert paths.loc["b"].tolist()[:2] == ["grow", "grow"] and pd.isna(paths.loc["b", "1998-07-01"])
    assert pd.isna(paths.loc["d", "1998-01-01"]) and paths.loc["d"].tolist()[1:] == ["nurture", "grow"]
    one = refresh.read_history(out, ["c"])
    assert one["segment"].tolist() == ["nurture"] and one["as_of"].tolist() == [DAY1]
    assert json.loads((out / MARKER).read_text())["as_of"] == "1998-07-01"


def test_the_latest_refresh_runs_again_to_the_same_files_and_earlier_dates_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "refresh"
    refresh.write_refresh(out, "shop", DAY1, FIRST)
    refresh.write_refresh(out, "shop", DAY2, SECOND)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refresh.write_refresh(out, "shop", DAY2, SECOND)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    with pytest.raises(ConfigError, match=r"AS_OF=1998-01-01 is before the latest refresh .* \(1998-04-01\)"):
        refresh.write_refresh(out, "shop", DAY1, FIRST)
    with pytest.raises(ConfigError, match="holds the refreshes of dataset 'shop', not refreshes of 'other'"):
        refresh.write_refresh(out, "other", DAY3, FIRST)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"not a valuecast output folder.*FORCE=1"):
        refresh.write_refresh(mine, "shop", DAY1, FIRST)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_failed_refresh_leaves_the_previous_output_and_history_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "refresh"
    refresh.write_refresh(out, "shop", DAY1, FIRST)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(frame: pd.DataFrame, path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(refresh, "write_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        refresh.write_refresh(out, "shop", DAY2, SECOND)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["refresh"]  # no temporaries left beside it


def test_one_refresh_of_an_out_at_a_time(tmp_path: Path) -> None:
    out = tmp_path / "refresh"
    with refresh.exclusive(out):
        result = runner.invoke(app, ["refresh", "--data", "cdnow_sample", "--as-of", "1998-01-01", "--out", str(out)])
        assert result.exit_code == 2
        assert f"another refresh of OUT={out} is running (pid " in result.output
        assert not out.exists()
    with refresh.exclusive(out):  # released: the next one goes ahead
        pass


# --- delivery -----------------------------------------------------------------------------------

SECRET = "test-secret-0123456789abcdef"


class Receiver:
    """A webhook receiver that checks signatures, deduplicates by idempotency key and misbehaves on
    a script: per request number, '500', 'drop' (close without an answer) or 'slow' (apply, then
    answer after the client's time-out); 'poison' keys always get 500."""

    def __init__(self, script: dict[int, str], poison: set[str] | None = None, slow_seconds: float = 1.0) -> None:
        self.script, self.poison, self.slow_seconds = script, poison or set(), slow_seconds
        self.requests = 0
        self.applied: Counter[str] = Counter()  # key -> times the change was applied (must stay 1)
        self.received: Counter[str] = Counter()  # key -> times it arrived in any request
        self.bad_signatures = 0
        self.lock = threading.Lock()


def handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            stamp = self.headers["x-valuecast-timestamp"]
            expected = "sha256=" + hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
            with receiver.lock:
                receiver.requests += 1
                number = receiver.requests
                if not hmac.compare_digest(expected, self.headers["x-valuecast-signature"]):
                    receiver.bad_signatures += 1
            keys = [c["idempotency_key"] for c in json.loads(body)["changes"]]
            with receiver.lock:
                receiver.received.update(keys)
            fault = receiver.script.get(number)
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "500" or receiver.poison & set(keys):
                self.send_response(500)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            with receiver.lock:  # apply: each key once, whatever arrives again
                for key in keys:
                    if key not in receiver.applied:
                        receiver.applied[key] += 1
            if fault == "slow":
                time.sleep(receiver.slow_seconds)  # applied, but the answer comes after the time-out
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    return Handler


@contextmanager
def serving(receiver: Receiver) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(receiver))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def fifty_changes() -> pd.DataFrame:
    before = customers({f"c{i:02d}": ("grow", "B", "low", float(i)) for i in range(50)})
    after = customers({f"c{i:02d}": ("protect", "A", "high", float(i)) for i in range(50)})
    return refresh.changes(refresh.normalized(before), refresh.normalized(after), "shop", DAY2, DAY1)


def test_delivery_through_500s_timeouts_and_dropped_connections_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    changes = fifty_changes()
    everyone = set(changes["idempotency_key"])
    poison = {changes["idempotency_key"].iloc[45]}  # its batch (40-49) never succeeds in the first run
    receiver = Receiver({1: "500", 2: "drop", 3: "slow", 5: "500", 6: "drop"}, poison=poison)
    folder = tmp_path / "delivery"
    waits: list[float] = []
    with serving(receiver) as url:
        settings = delivery.settings_from(url, SECRET, batch_size=10, timeout_seconds=0.5, max_attempts=4)
        assert settings is not None
        result = delivery.deliver(
            changes,
            folder,
            settings,
            dataset="shop",
            as_of="1998-04-01",
            previous_as_of="1998-01-01",
            sleep=waits.append,
        )
    assert receiver.bad_signatures == 0
    assert result.delivered == 40 and result.dead_letter == 10
    dead = [json.loads(line) for line in (folder / delivery.DEAD_LETTER).read_text().splitlines()]
    dead_keys = {d["change"]["idempotency_key"] for d in dead}
    ledger = delivery.delivered_keys(folder)
    assert ledger | dead_keys == everyone and not ledger & dead_keys  # none lost; each in one place
    assert set(receiver.applied) == ledger  # what the ledger says arrived is what the receiver applied
    assert max(receiver.applied.values()) == 1
    assert max(receiver.received.values()) >= 2  # the slow batch arrived twice: its keys made it count once
    assert dead[0]["error"] == "HTTP 500" and dead[0]["attempts"] == 4
    assert waits and all(w > 0 for w in waits) and waits[1] > waits[0] * 0.9  # backoff grows (with jitter)

    # the endpoint recovers: a re-run sends only the dead-lettered ones; a third run sends nothing
    healthy = Receiver({})
    healthy.applied = receiver.applied
    with serving(healthy) as url:
        settings = delivery.settings_from(url, SECRET, batch_size=10, timeout_seconds=0.5, max_attempts=4)
        assert settings is not None
        again = delivery.deliver(changes, folder, settings, dataset="shop", as_of="1998-04-01", previous_as_of=None)
        assert set(healthy.received) == dead_keys
        assert (again.delivered, again.already_delivered, again.dead_letter) == (10, 40, 0)
        third = delivery.deliver(changes, folder, settings, dataset="shop", as_of="1998-04-01", previous_as_of=None)
        assert (third.delivered, third.requests, third.already_delivered) == (0, 0, 50)
    assert set(healthy.applied) == everyone and max(healthy.applied.values()) == 1
    assert not (folder / delivery.DEAD_LETTER).exists()


def test_running_a_refresh_again_keeps_its_ledger_and_delivers_nothing_twice(tmp_path: Path) -> None:
    out, receiver = tmp_path / "refresh", Receiver({})
    with serving(receiver) as url:
        settings = delivery.settings_from(url, SECRET, batch_size=2)
        assert settings is not None
        for run in range(2):  # the same refresh twice: OUT is replaced, its delivery ledger carried over
            result = refresh.write_refresh(out, "shop", DAY1, FIRST)
            sent = delivery.deliver(
                result.changes,
                result.folder / "delivery",
                settings,
                dataset="shop",
                as_of="1998-01-01",
                previous_as_of=None,
            )
            assert (sent.delivered, sent.already_delivered) == ((3, 0) if run == 0 else (0, 3))
        result = refresh.write_refresh(out, "shop", DAY2, SECOND)
    assert receiver.requests == 2 and max(receiver.received.values()) == 1
    assert delivery.delivered_keys(out / "refreshes" / "1998-01-01" / "delivery") == set(receiver.applied)


def test_an_endpoint_that_is_down_fails_fast_into_the_dead_letter_file(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    settings = delivery.settings_from(url, SECRET, batch_size=10, timeout_seconds=0.5, max_attempts=2)
    assert settings is not None
    result = delivery.deliver(
        fifty_changes(),
        tmp_path,
        settings,
        dataset="shop",
        as_of="1998-04-01",
        previous_as_of=None,
        sleep=lambda _: None,
    )
    assert (result.delivered, result.dead_letter) == (0, 50)
    assert result.requests == 3 * 2  # three batches tried twice each; the other two not attempted
    lines = (tmp_path / delivery.DEAD_LETTER).read_text().splitlines()
    assert sum("not attempted: 3 batches in a row failed" in line for line in lines) == 20


@pytest.mark.parametrize(
    ("url", "secret", "message"),
    [
        ("ftp://example.com/x", SECRET, "must be https://host/path"),
        ("http://example.com/x", SECRET, "plain http to another machine: use https"),
        ("https://example.com/x", None, "needs VALUECAST_WEBHOOK_SECRET"),
        ("https://example.com/x", "short", "VALUECAST_WEBHOOK_SECRET must be 16 to 4096 characters"),
    ],
)
def test_bad_webhook_settings_are_one_clear_line(url: str, secret: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        delivery.settings_from(url, secret)


def test_urls_are_printed_without_credentials_or_query() -> None:
    shown = delivery.display_url("https://user:pa55@hooks.example.com/in?token=abc")
    assert shown == "https://***@hooks.example.com/in?***"
    settings = delivery.settings_from("https://hooks.example.com/in", SECRET)
    assert SECRET not in repr(settings) and SECRET not in str(settings)


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(delivery.SECRET_ENV, raising=False)
    result = runner.invoke(
        app, ["refresh", "--data", "cdnow_sample", "--out", str(tmp_path / "r"), "--webhook", "https://u:p@h.example/x"]
    )
    assert result.exit_code == 2
    assert "needs VALUECAST_WEBHOOK_SECRET" in result.output and "u:p" not in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["refresh", "--data", "cdnow_sample", "--as-of", "1998/01/01"])
    assert result.exit_code == 2 and "AS_OF='1998/01/01' is not a date" in result.output


@pytest.mark.slow
def test_make_refresh_on_the_cdnow_sample_at_three_dates(
    champion_store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's 'must be shown' on the 1/10 sample: three refreshes through the command, each matrix
    summing to the customers of both dates, change files agreeing with it, the history returning each
    customer's path, and the last refresh's changes delivered to a local webhook."""
    from features.config import load_dataset_config
    from features.io import load_dataset
    from serving.batch import score_dataset
    from serving.scoring import load_champions

    out = tmp_path / "refresh"
    receiver = Receiver({1: "500", 2: "drop"})
    monkeypatch.setenv(delivery.SECRET_ENV, SECRET)
    with serving(receiver) as url:
        for day, hook in (("1998-01-01", []), ("1998-04-01", []), ("1998-07-01", ["--webhook", url])):
            result = runner.invoke(app, ["refresh", "--data", "cdnow_sample", "--as-of", day, "--out", str(out), *hook])
            assert result.exit_code == 0, result.output
            folder = out / "refreshes" / day
            matrix = change_files_agree_with(folder)
            summary = json.loads((folder / "summary.json").read_text())
            assert matrix.to_numpy().sum() == summary["customers_either"] == 2_357  # the sample's cohort: no one new
            assert "customers, 2,357 in all: the customers of either date" in result.output
    assert "delivered" in result.output and receiver.bad_signatures == 0
    last = pd.read_csv(out / "refreshes" / "1998-07-01" / "changes.csv", dtype={"customer_id": str})
    assert set(receiver.applied) == set(last["idempotency_key"]) and max(receiver.applied.values()) == 1

    # the history's last partition is make score's segment of each customer, and the paths read back
    dataset = load_dataset(load_dataset_config("cdnow_sample"))
    scored = score_dataset(load_champions("cdnow_sample"), dataset, pd.Timestamp("1998-07-01"))
    paths = refresh.customer_paths(out)
    assert list(paths.columns) == ["1998-01-01", "1998-04-01", "1998-07-01"] and len(paths) == 2_357
    assert paths["1998-07-01"].to_dict() == scored.set_index("customer_id")["segment"].to_dict()
    moved = last["customer_id"].iloc[0]
    row = last.iloc[0]
    assert paths.loc[moved, "1998-04-01"] == row["previous_segment"]
    assert paths.loc[moved, "1998-07-01"] == row["new_segment"]
    shown = runner.invoke(app, ["paths", "--data", "cdnow_sample", "--out", str(out), "--customer", moved])
    assert shown.exit_code == 0 and row["new_segment"] in shown.output
