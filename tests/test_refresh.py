"""make refresh: transitions, change files, the history table and atomic OUT."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from features.config import ConfigError
from serving import refresh
from serving.batch import MARKER
from serving.refresh import DEPARTED, NEW

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
