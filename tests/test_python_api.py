"""The public Python API (``import valuecast``): the README's "In Python" block runs as it stands."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import PROJECT_ROOT
from serving.segments.rules import load_rules


def readme_python_block() -> str:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("## In Python") :]
    found = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert found is not None, "README: the In Python section has no python block"
    return found.group(1)


@pytest.mark.real_data
@pytest.mark.slow
def test_the_readme_python_example_runs(champion_store_copy: Path) -> None:
    # champion_store_copy: the example trains and may promote, which the other tests must not see
    printed = io.StringIO()
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_python_block(), "README.md (In Python)", "exec"), namespace)  # our own README
    output = printed.getvalue()
    scores = namespace["scores"]
    assert isinstance(scores, pd.DataFrame)
    assert scores["customer_id"].tolist() == ["c1", "c2"]
    assert np.isfinite(scores["churn_probability"].to_numpy(float)).all() and (scores["clv"] >= 0).all()
    assert "transactions," in output and "quarantined" in output
    assert "cdnow_sample" in output and "value_tier" in output
    import valuecast

    table = valuecast.segments("cdnow_sample")
    assert table["segment"].tolist() == [rule.name for rule in load_rules().segments]
    assert all(name in output for name in table["segment"]) and table.attrs["value_floors"]
    outcome = namespace["outcome"]
    assert outcome.promotion.registered_name == "valuecast-churn-cdnow_sample"  # type: ignore[attr-defined]
    similar = namespace["similar"]
    assert isinstance(similar, pd.DataFrame) and len(similar) == 50
    assert "recall of a hidden 20% of the seed" in output


@pytest.mark.slow
def test_lookalike_ranks_customers_outside_the_seed_and_finds_hidden_members() -> None:
    import valuecast

    data = valuecast.load_dataset("cdnow_sample")
    spend = data.transactions.frame.groupby("customer_id", observed=True)["amount"].sum()
    seed = [str(i) for i in spend.nlargest(100).index]
    similar = valuecast.lookalike(data, seed, size=40, method="nearest_neighbours")
    assert len(similar) == 40 and similar["rank"].tolist() == list(range(1, 41))
    assert not similar["customer_id"].isin(seed).any()
    assert similar["lookalike_score"].is_monotonic_decreasing
    quality = similar.attrs["quality"]
    # big spenders resemble each other: hidden members are found far more often than at random
    assert quality["method"] == "nearest_neighbours" and quality["hidden"] == 20
    assert quality["recall_at_n"] > 3 * quality["random_recall_at_n"]
    with pytest.raises(ValueError, match="not customers of the data"):
        valuecast.lookalike(data, [*seed, "no-such-customer"])


def test_the_public_surface_is_small_documented_and_cheap_to_import() -> None:
    import valuecast

    assert valuecast.__all__ == ["load_dataset", "lookalike", "models", "score", "segments", "train"]
    for name in valuecast.__all__:
        function = getattr(valuecast, name)
        assert function.__doc__ and function.__annotations__, name
    # importing the package loads none of the heavy libraries (they load on the first call)
    probe = "import sys, valuecast; print(sorted(m for m in ('pandas', 'mlflow', 'xgboost') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_score_gives_the_numbers_of_the_scoring_path_the_api_uses(champion_store: dict[str, str]) -> None:
    import valuecast
    from serving.scoring import load_champions, score_histories

    transactions = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b"],
            "timestamp": pd.to_datetime(["1997-02-01", "1998-03-01", "1997-06-15"]),
            "amount": [20.0, 35.5, 12.0],
        }
    )
    ours = valuecast.score(transactions, dataset="cdnow_sample", as_of="1998-07-01")
    champions = load_champions("cdnow_sample")
    stamps = transactions["timestamp"].to_numpy("datetime64[ns]").astype(np.int64)
    api = score_histories(
        champions,
        ["a", "b"],
        np.array([0, 0, 1]),
        stamps,
        transactions["amount"].to_numpy(),
        pd.Timestamp("1998-07-01"),
        {},
    )
    for column in ("churn_probability", "purchase_probability", "clv", "value_at_risk"):
        np.testing.assert_allclose(
            ours[column].to_numpy(float), np.asarray(api[column], dtype=float), rtol=0, atol=1e-9
        )
    assert ours["segment"].tolist() == list(api["segment"])


def test_an_empty_frame_or_a_bad_day_raises_naming_it_before_any_work() -> None:
    """No store, no champions and no data are needed to get these errors: they come first."""
    import valuecast

    empty = pd.DataFrame({"customer_id": [], "timestamp": [], "amount": []})
    with pytest.raises(ValueError, match="nothing to score: transactions has no rows"):
        valuecast.score(empty, dataset="no_such_dataset", as_of="1998-07-01")
    one = pd.DataFrame({"customer_id": ["a"], "timestamp": ["1998-01-01"], "amount": [1.0]})
    for bad in ("01/07/1998", "1998-13-01", "NaT", "yesterday"):
        with pytest.raises(ValueError, match=rf"as_of='{bad}' is not a date: write it as YYYY-MM-DD"):
            valuecast.score(one, dataset="no_such_dataset", as_of=bad)
    with pytest.raises(ValueError, match="as_of='July' is not a date"):
        valuecast.lookalike("no_such_dataset", ["1"], as_of="July")
    with pytest.raises(ValueError, match="as_of='1998-07' is not a date"):
        valuecast.load_dataset("cdnow_sample", as_of="1998-07")


@pytest.mark.parametrize(
    ("environment", "first", "backend"),
    [
        ({}, "import valuecast", "system"),  # the CLI's order: valuecast before pandas
        ({}, "import pandas, valuecast", "system"),  # a notebook's: pyarrow loaded first
        ({"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}, "import valuecast", "jemalloc"),  # the user's choice
    ],
)
def test_arrow_allocator_is_the_system_one_unless_chosen(environment: dict[str, str], first: str, backend: str) -> None:
    """Arrow's default allocator (mimalloc) made reading 10M rows 2-3x slower on our VMs (features/__init__.py)."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"} | environment
    shown = "pyarrow.default_memory_pool().backend_name, os.environ['ARROW_DEFAULT_MEMORY_POOL']"
    code = f"{first}; import os, pyarrow; print({shown})"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [backend, backend]
