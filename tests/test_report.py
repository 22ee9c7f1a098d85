"""The HTML report (issue 17; issue 16's drift in it): escaping, money and horizons, the order of the
segments, sections only where the run has them, and every figure and table rendered by a real
headless browser (Debian's chromium, installed by ``make browser`` when absent)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import PROJECT_ROOT, ConfigError, load_dataset_config
from serving.report import ModelFacts, ReportInputs, by_segment, money, percent, render
from valuecast.cli import app

from .conftest import IN_CI, SERVING_AS_OF

runner = CliRunner()
ARTIFACTS = PROJECT_ROOT / "test-artifacts"


def scores_frame(segments: list[str], clv: list[float]) -> pd.DataFrame:
    """Scored customers as batch scoring writes them, one per (segment, clv) pair."""
    n = len(segments)
    churn = np.linspace(0.05, 0.95, n)
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "segment": segments,
            "clv": clv,
            "churn_probability": churn,
            "purchase_probability": 1 - churn,
            "value_at_risk": np.asarray(clv) * churn,
            "value_tier": ["A", "B", "C", "D"] * (n // 4) + ["D"] * (n % 4),
            "suppressed": [False] * n,
            "action": ["call"] * n,
        }
    )


CLV_FACTS = {"clv": ModelFacts("clv", "1", "xgboost", {"gini_normalized": 0.7}, 90, 0.01)}


def test_money_is_written_in_the_datasets_currency_and_probabilities_as_percentages() -> None:
    assert money(1234.56, "USD") == "$1,234.56"
    assert money(1234.56, "GBP") == "£1,234.56"
    assert money(1234.56, "INR") == "1,234.56 INR"
    assert money(-1234.5, "USD", 0) == "-$1,234"
    assert money(1234.56, None) == "1,234.56"
    assert percent(0.1234) == "12.3%"
    for name, code in (("cdnow", "USD"), ("online_retail", "GBP"), ("telco", "USD"), ("x_education", "INR")):
        assert load_dataset_config(name).currency == code


@pytest.mark.parametrize("code", ["usd", "US$", "DOLLAR", "<b>"])
def test_a_currency_that_is_not_three_capital_letters_is_refused(tmp_path: Path, code: str) -> None:
    (tmp_path / "shop.yaml").write_text(
        f"name: shop\ncurrency: '{code}'\ntransactions:\n  path: orders.csv\n"
        "  columns: {customer_id: customer_id, timestamp: timestamp, amount: amount}\n"
    )
    with pytest.raises(ConfigError, match="not a currency code: write three capital letters"):
        load_dataset_config(tmp_path / "shop.yaml")


def test_html_in_names_and_reasons_is_escaped() -> None:
    evil = "<script>alert('x')</script>"
    scores = scores_frame([evil, "grow", "grow", "keep"], [10.0, 20.0, 30.0, 5.0])
    drift = {
        "retrain_recommended": ["clv"],
        "families": {"clv": {"version": "1", "reference_cutoff": "", "age_days": 1, "reasons": [evil], "psi": {}}},
    }
    macro = pd.DataFrame(
        [[evil, 4, 1.0, 16.25, 0.5, 0.5, '<img src=x onerror="alert(1)">']],
        columns=["macro_segment", "customers", "share_of_value", "mean_clv", "mean_churn_probability",
                 "mean_purchase_probability", "description"],
    )  # fmt: skip
    page = render(
        ReportInputs("value", "shop & <co>", "2024-01-01", "USD", CLV_FACTS, scores=scores, macro_profiles=macro,
                     drift=drift)
    )  # fmt: skip
    assert "<script" not in page and "<img src=x" not in page
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
    assert page.count(escaped) == 3  # the segment table, the drift reason, the macro segment
    assert "shop &amp; &lt;co&gt;" in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page


def test_segments_are_ordered_by_total_predicted_value_not_by_name() -> None:
    names = ["alpha", "beta", "beta", "gamma", "gamma", "gamma", "delta"]
    clv = [50.0, 10.0, 15.0, 1.0, 2.0, 3.0, 40.0]
    scores = scores_frame(names, clv)
    totals = {name: sum(v for n, v in zip(names, clv, strict=True) if n == name) for name in set(names)}
    expected = sorted(totals, key=lambda n: -totals[n])
    assert by_segment(scores).index.tolist() == expected == ["alpha", "delta", "beta", "gamma"]
    page = render(ReportInputs("value", "shop", "2024-01-01", "USD", CLV_FACTS, scores=scores))
    table = page[page.index('data-table="segments"') :]
    positions = [table.index(f">{name}<") for name in expected]
    assert positions == sorted(positions)


def test_a_section_appears_only_when_the_run_has_it() -> None:
    scores = scores_frame(["grow"] * 8, [float(v) for v in range(8)])
    page = render(ReportInputs("value", "shop", "2024-01-01", "GBP", CLV_FACTS, scores=scores))
    sections = set(re.findall(r'data-section="([a-z-]+)"', page))
    assert sections == {"segments", "value", "models"}
    assert "expected spend in the next 90 days, discounted 1% a month" in page and "Amounts are in GBP" in page
    unnamed = render(ReportInputs("value", "shop", "2024-01-01", None, {}, scores=scores))
    assert "does not name" in unnamed and "expected spend" not in unnamed


# ---------------------------------------------------------------------------------------------------
# In a real browser.


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium binary; installed with ``make browser`` (apt) when it is not on the PATH."""
    found = shutil.which("chromium")
    if found is None:
        if shutil.which("apt-get") is None:
            reason = "chromium is not on the PATH and apt-get is absent to install it (make browser)"
            if IN_CI:
                pytest.fail(reason)
            pytest.skip(reason)
        done = subprocess.run(["make", "browser"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        found = shutil.which("chromium")
    assert found is not None
    return found


# Run in a copy of the page (the report itself allows no script): what the browser made of each
# figure and table, written into the page for --dump-dom.
PROBE = """<script>
window.addEventListener("load", () => {
  const size = (e) => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  const found = {
    height: document.documentElement.scrollHeight,
    figures: [...document.querySelectorAll("figure[data-figure]")].map((f) => {
      const img = f.querySelector("img");
      return {key: f.dataset.figure, complete: img.complete, natural: [img.naturalWidth, img.naturalHeight],
              shown: size(img)};
    }),
    tables: [...document.querySelectorAll("table[data-table]")].map((t) => ({key: t.dataset.table,
              rows: t.tBodies[0].rows.length, shown: size(t)})),
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


def browser_view(chromium: str, page: Path, folder: Path) -> dict[str, Any]:
    """Open ``page`` in headless chromium: the page's height, every figure's decoded size and every
    table's rows and size."""
    text = page.read_text()
    probed = folder / f"{page.parent.name}.probe.html"
    probed.write_text(
        text.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';").replace(
            "</body>", PROBE + "</body>"
        )
    )
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,4000"]
    done = subprocess.run(
        [*command, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return {
        "height": probe["height"],
        **{kind: {item["key"]: item for item in probe[kind]} for kind in ("figures", "tables")},
    }


def screenshot(chromium: str, page: Path, name: str, height: int) -> Path:
    """A screenshot of the whole report as is (a window ``height`` pixels high, at most 16,000), kept in
    test-artifacts/ (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / f"{name}.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size=1280,{min(max(height, 800), 16_000)}",
         f"--screenshot={target}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert target.stat().st_size > 10_000
    print(f"screenshot of {page}: {target}")
    return target


def check_rendered(view: dict[str, Any], figures: set[str], tables: set[str]) -> None:
    assert set(view["figures"]) >= figures, sorted(view["figures"])
    assert set(view["tables"]) >= tables, sorted(view["tables"])
    for key, figure in view["figures"].items():
        natural, shown = figure["natural"], figure["shown"]
        assert figure["complete"] and natural[0] > 100 and natural[1] > 100, (key, figure)
        assert shown[0] > 100 and shown[1] > 50, (key, figure)
    for key, table in view["tables"].items():
        assert table["rows"] and table["shown"][1] > 20, (key, table)


def self_contained(page: str) -> None:
    """No file or address outside the page: every image a data: URL, every link an anchor."""
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', page))
    assert "http://" not in page and "https://" not in page


def macro_profiles_of(scores: pd.DataFrame) -> pd.DataFrame:
    """A macro segment profile table in the macro_segment family's shape, computed from real scores
    (customers grouped by risk band stand in for the family's macro segments)."""
    total = scores["clv"].sum()
    table = scores.groupby("risk_band").agg(
        customers=("customer_id", "size"),
        value=("clv", "sum"),
        mean_clv=("clv", "mean"),
        mean_churn_probability=("churn_probability", "mean"),
        mean_purchase_probability=("purchase_probability", "mean"),
    )
    table["share_of_value"] = table["value"] / total
    table["description"] = [f"customers of churn-risk band {band}" for band in table.index]
    return table.rename_axis("macro_segment").reset_index().drop(columns="value")


VALUE_FIGURES = {"segment-value", "value-by-tier", "risk-value", "concentration"}
GAINS_FIGURES = {"gains-churn", "gains-propensity", "gains-clv"}
VALUE_TABLES = {"segments", "tiers", "risk-grid", "models"}


@pytest.mark.real_data
@pytest.mark.slow
def test_every_report_renders_each_figure_and_table_in_a_real_browser(
    champion_store: dict[str, str], chromium: str, tmp_path: Path
) -> None:
    import html
    from dataclasses import replace

    from serving.batch import report_inputs
    from serving.scoring import load_champions

    from .conftest import load_real

    scored = tmp_path / "scores"
    result = runner.invoke(app, ["score", "--data", "cdnow_sample", "--out", str(scored), "--as-of", SERVING_AS_OF])
    assert result.exit_code == 0, result.output
    refreshes = tmp_path / "refresh"
    for day in ("1998-04-01", SERVING_AS_OF):
        result = runner.invoke(app, ["refresh", "--data", "cdnow_sample", "--as-of", day, "--out", str(refreshes)])
        assert result.exit_code == 0, result.output
    refreshed = refreshes / "refreshes" / SERVING_AS_OF
    assert f"report: {refreshed / 'report.html'}" in result.output

    scores = pd.read_parquet(scored / "scores.parquet")
    summary = json.loads((scored / "summary.json").read_text())
    dataset = load_real("cdnow_sample")
    inputs = report_inputs(load_champions("cdnow_sample"), dataset, scores, summary)
    (tmp_path / "macro").mkdir()
    (tmp_path / "macro" / "report.html").write_text(render(replace(inputs, macro_profiles=macro_profiles_of(scores))))

    expected = {
        scored: (VALUE_FIGURES | GAINS_FIGURES, VALUE_TABLES),
        refreshed: (VALUE_FIGURES | GAINS_FIGURES | {"drift"},
                    VALUE_TABLES | {"drift", "transition-matrix", "transition-moves", "segment-changes"}),
        tmp_path / "macro": (VALUE_FIGURES | GAINS_FIGURES, VALUE_TABLES | {"macro-segments"}),
    }  # fmt: skip
    for folder, (figures, tables) in expected.items():
        page = (folder / "report.html").read_text()
        self_contained(page)
        view = browser_view(chromium, folder / "report.html", tmp_path)
        check_rendered(view, figures, tables)
        assert re.search(r"expected spend in the next \d+ days", page) and re.search(r">\$\d{1,3}(,\d{3})*<", page)
        screenshot(chromium, folder / "report.html", f"report-{folder.name}", view["height"])

    # the segment table in the order of total predicted value, computed here from the scores file
    order = scores.groupby("segment")["clv"].sum().sort_values(ascending=False).index.tolist()
    page = (scored / "report.html").read_text()
    table = page[page.index('data-table="segments"') :]
    assert [m for m in re.findall(r"<tr><td>([a-z_]+)</td>", table)][: len(order)] == order

    # drift as the refresh measured it: "retrain recommended" and every reason, or that none is
    drift = json.loads((refreshed / "summary.json").read_text())["drift"]
    page = (refreshed / "report.html").read_text()
    assert ("Retrain recommended" in page) == bool(drift["retrain_recommended"])
    for facts in drift["families"].values():
        for reason in facts["reasons"]:
            assert html.escape(reason) in page, reason
    assert os.path.exists(ARTIFACTS / "report-scores.png")
