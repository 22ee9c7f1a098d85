"""Hardening of batch scoring's output (issue "[2/5] Hardening"): names from data stay inside OUT,
OUT is only replaced when it is valuecast's own output, and a crash never loses OUT."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import ConfigError
from serving.batch import MARKER, OutputInUseError, atomic_folder, recover, segment_lists
from serving.segments.rules import DEFAULT_RULES, load_rules
from valuecast.cli import app

from .conftest import SERVING_AS_OF


def rules_with_segment(tmp_path: Path, name: str, action: str = "low-cost channels only") -> Path:
    """The default rules file with its catch-all rule renamed."""
    text = DEFAULT_RULES.read_text().replace(
        "  - name: deprioritize\n    when: {}\n    action: low-cost channels only",
        f"  - name: {json.dumps(name)}\n    when: {{}}\n    action: {json.dumps(action)}",
    )
    assert name in text
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def test_finding_5_segment_name_cannot_escape_out(tmp_path: Path) -> None:
    path = rules_with_segment(tmp_path, "../../../x")
    with pytest.raises(ConfigError) as error:
        load_rules(path)
    message = str(error.value)
    assert str(path) in message and "segments.6.name" in message and "'../../../x'" in message
    assert "lower-case letters, digits" in message
    for bad in ("Win Back", "x/y", ".hidden", "a" * 65, ""):
        with pytest.raises(ConfigError):
            load_rules(rules_with_segment(tmp_path, bad))
    assert load_rules(rules_with_segment(tmp_path, "win-back_2")).segments[-1].name == "win-back_2"

    # segment_lists checks the path itself, whatever a frozen file or a caller hands it
    out = tmp_path / "out"
    scores = pd.DataFrame(
        {"customer_id": ["c1", "c2"], "segment": ["grow", "../../escaped"], "action": ["a", "b"], "suppressed": False}
    )
    with pytest.raises(ConfigError, match="escaped"):
        segment_lists(scores, None, out / "lists")
    assert not list(tmp_path.rglob("escaped*"))
    (out / "lists" / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(ConfigError, match="link"):
        segment_lists(scores.assign(segment=["grow", "link"]), None, out / "lists")
    assert not (tmp_path / "elsewhere.csv").exists()


def test_finding_5_action_is_one_line_of_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one line"):
        load_rules(rules_with_segment(tmp_path, "rest", action="call them\nnow"))


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_output(out: Path, text: str, force: bool = False) -> None:
    with atomic_folder(out, {"dataset": "shop", "as_of": "1998-07-01"}, force=force) as work:
        (work / "scores.csv").write_text(text)


def test_finding_6_out_that_is_not_valuecast_output_is_not_replaced(tmp_path: Path) -> None:
    unrelated = tmp_path / "documents"
    unrelated.mkdir()
    (unrelated / "thesis.txt").write_text("years of work")
    with pytest.raises(OutputInUseError) as error:
        write_output(unrelated, "scores")
    assert f"OUT={unrelated}" in str(error.value) and "FORCE=1" in str(error.value)
    assert files_of(unrelated) == {"thesis.txt": b"years of work"}
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    with pytest.raises(OutputInUseError):
        write_output(a_file, "scores")
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents", "notes.txt"]  # nothing left beside

    empty = tmp_path / "empty"
    empty.mkdir()
    write_output(empty, "first")  # an empty folder may be replaced
    marker = json.loads((empty / MARKER).read_text())
    assert marker == {"dataset": "shop", "as_of": "1998-07-01", "written_by": "valuecast"}
    write_output(empty, "second")  # valuecast's own output may be replaced
    assert (empty / "scores.csv").read_text() == "second"
    write_output(unrelated, "forced", force=True)
    write_output(a_file, "forced", force=True)
    assert (unrelated / "scores.csv").read_text() == "forced" and not (unrelated / "thesis.txt").exists()
    assert (a_file / "scores.csv").read_text() == "forced"


def test_finding_6_cli_refuses_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    result = CliRunner().invoke(app, ["score", "--data", "cdnow_sample", "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: OUT={out} exists and is not a valuecast output folder (no .valuecast-output in it): "
        "choose another OUT, or replace it with --force (make score ... FORCE=1)"
    ]
    assert files_of(out) == {"thesis.txt": b"years of work"}


def test_finding_11_crash_between_the_renames_restores_out(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    write_output(out, "good")
    good = files_of(out)
    # a crash after OUT was renamed aside and before the new output was renamed in, by a process now gone
    os.rename(out, tmp_path / ".scores.999999999.0123abcd.old")
    (tmp_path / ".scores.999999999.0123abcd.tmp").mkdir()
    (tmp_path / ".scores.abc_1234.tmp").mkdir()  # an earlier version's temporary
    keep = [tmp_path / ".scores.mine.tmp", tmp_path / ".other.999999999.0123abcd.tmp", tmp_path / "scores.bak"]
    for path in keep:
        path.mkdir()
    recover(out)
    assert files_of(out) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["scores", *(p.name for p in keep)])

    # a running run's temporaries are left alone
    running = tmp_path / f".scores.{os.getppid()}.0123abcd.tmp"
    running.mkdir()
    write_output(out, "next")
    assert running.exists() and (out / "scores.csv").read_text() == "next"


def test_finding_11_failed_swap_keeps_the_old_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "scores"
    write_output(out, "good")
    good = files_of(out)
    real_rename = os.rename

    def crash_on_second_rename(source: object, destination: object) -> None:
        if str(source).endswith(".tmp"):
            raise OSError("disk gone")
        real_rename(source, destination)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", crash_on_second_rename)
    with pytest.raises(OSError):
        write_output(out, "new")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not out.exists()  # as after kill -9 at that point: the next run puts it back first
    with pytest.raises(RuntimeError), atomic_folder(out, {}):
        raise RuntimeError("this run fails too")
    assert files_of(out) == good and sorted(p.name for p in tmp_path.iterdir()) == ["scores"]


def digest(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files_of(folder).items()}


@pytest.mark.slow
def test_finding_11_kill_9_at_random_points_never_loses_out(champion_store: dict[str, str], tmp_path: Path) -> None:
    """``valuecast score`` as a real process, killed with SIGKILL at random points of its run (three
    seeds): OUT holds the last good run's files, byte for byte (the marker is deterministic, so it is
    compared too), and after one more run no temporaries of the killed runs remain beside OUT."""
    out = tmp_path / "scores"
    command = [str(Path(sys.executable).parent / "valuecast"), "score", "--data", "cdnow_sample"]
    command += ["--out", str(out), "--as-of", SERVING_AS_OF]
    environment = {**os.environ, **champion_store}

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    began = time.monotonic()
    good_run = start()
    _, errors = good_run.communicate(timeout=300)
    assert good_run.returncode == 0, errors.decode()
    duration = time.monotonic() - began
    good = digest(out)
    assert MARKER in good and "lists/protect.csv" in good

    for seed in (1, 2, 3):
        killed = start()
        time.sleep(random.Random(seed).uniform(0.0, duration))
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)  # reaped, so its pid no longer counts as running
        aside = [p for p in tmp_path.glob(".scores.*.old") if (p / MARKER).exists()]
        assert out.exists() or aside, f"seed {seed}: the last good output is nowhere"
        recover(out)  # what the next run does first: after a kill between the two renames OUT is back
        assert digest(out) == good, f"seed {seed}: OUT differs from the last good run"

    final = start()
    _, errors = final.communicate(timeout=300)
    assert final.returncode == 0, errors.decode()
    assert digest(out) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores"]  # no .scores.* temporaries
