"""Hardening of batch scoring's output (issue "[2/5] Hardening"): names from data stay inside OUT,
OUT is only replaced when it is valuecast's own output, and a crash never loses OUT."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from features.config import ConfigError
from serving.batch import segment_lists
from serving.segments import DEFAULT_RULES, load_rules


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
