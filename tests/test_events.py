"""Behaviour events: the events table of the data contract, its checks, and event propensity on
Online Retail's categories (written out as an events file, and derived from the transactions)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import load_dataset_config
from features.events import FROM_EVENTS, MAX_EVENT_SLUG, event_slug
from features.io import Dataset, load_dataset
from features.pipeline import build_customer_features, build_customer_labels
from features.validate import DataError
from serving.api import ScoreRequest, missing_events
from training import propensity
from training.candidates import BASELINE_NAMES
from training.config import load_model_config

from .conftest import load_real

TRANSACTIONS = "customer,when,amount\nc1,2024-01-05,10\nc2,2024-01-06,20\nc3,2024-02-01,5\n"


def small_dataset(tmp_path: Path, events: str, extra: str = "") -> Dataset:
    (tmp_path / "tx.csv").write_text(TRANSACTIONS)
    (tmp_path / "events.csv").write_text(events)
    (tmp_path / "shop.yaml").write_text(
        "name: shop\n"
        "transactions:\n  path: tx.csv\n  columns: {customer_id: customer, timestamp: when, amount: amount}\n"
        "events:\n  path: events.csv\n  columns: {customer_id: who, timestamp: at, event: what}\n" + extra
    )
    return load_dataset(load_dataset_config(tmp_path / "shop.yaml"))


def test_an_events_file_without_the_mapped_column_names_the_column_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"events\.csv: the config maps column 'what', which the file does not have"):
        small_dataset(tmp_path, "who,at,name\nc1,2024-01-07,click\n")


def test_an_event_with_a_bad_timestamp_is_quarantined_with_its_row(tmp_path: Path) -> None:
    dataset = small_dataset(tmp_path, "who,at,what\nc1,2024-01-07,click\nc2,yesterday,click\n")
    assert dataset.events is not None
    assert dataset.events.frame["customer_id"].tolist() == ["c1"]
    message = dataset.events.problems[0].message()
    assert "column 'at': 1 row(s) have a date that cannot be parsed (rows 2)" in message
    assert dataset.events.quarantine["row"].tolist() == [2]


def test_an_event_of_an_unknown_customer_is_quarantined_naming_the_fix(tmp_path: Path) -> None:
    dataset = small_dataset(tmp_path, "who,at,what\nc1,2024-01-07,click\nc9,2024-01-08,click\nc9,2024-01-09,open\n")
    assert dataset.events is not None
    assert dataset.events.frame["customer_id"].tolist() == ["c1"]
    (problem,) = dataset.events.problems
    assert problem.column == "who" and problem.rows == (2, 3)
    assert "no transaction or customers row has" in problem.reason and "customer ids" in problem.fix


def test_too_many_distinct_events_stop_the_run_naming_the_limit(tmp_path: Path) -> None:
    rows = "".join(f"c1,2024-01-07,page {i}\n" for i in range(4))
    with pytest.raises(DataError, match=r"column 'what' holds 4 distinct events, more than max_distinct_events \(3\)"):
        small_dataset(tmp_path, "who,at,what\n" + rows, "  max_distinct_events: 3\n")


def test_two_event_names_with_one_column_name_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"events 'E-mail click' and 'e-mail  click' both become .* event_e_mail_click"):
        small_dataset(tmp_path, "who,at,what\nc1,2024-01-07,E-mail click\nc2,2024-01-07,e-mail  click\n")


def test_event_names_reach_column_names_only_as_short_plain_slugs() -> None:
    assert event_slug("Feature: Export to PDF!") == "feature_export_to_pdf"
    assert event_slug("'; DROP TABLE x; --") == "drop_table_x"
    assert event_slug("x" * 500) == "x" * MAX_EVENT_SLUG
    assert event_slug("???") == "" and event_slug("__") == ""


def test_a_score_request_without_events_is_refused_where_the_models_read_them() -> None:
    request = ScoreRequest.model_validate(
        {"customers": [{"customer_id": "a", "events": []}, {"customer_id": "b", "transactions": []}]}
    )
    (problem,) = missing_events(request, ["email_click"])
    assert problem["path"] == "customers[1].events" and "email_click" in problem["reason"]
    assert missing_events(request.model_copy(update={"customers": request.customers[:1]}), ["x"]) == []


@pytest.fixture(scope="module")
def retail_with_events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Dataset]:
    """Online Retail as bundled (categories derived from the keyword map), and the same shop with its
    category purchases written out as an events file (customer, time, category as the event)."""
    retail = load_real("online_retail")
    assert retail.transactions is not None
    tx = retail.transactions.frame
    purchases = tx.loc[tx["amount"] >= 0, ["customer_id", "timestamp", "category"]].astype(str).drop_duplicates()
    folder = tmp_path_factory.mktemp("retail_events")
    purchases.set_axis(["Customer", "When", "Event"], axis=1).to_csv(folder / "events.csv", index=False)
    bundled = Path(retail.config.source_file).read_text()
    (folder / "retail_events.yaml").write_text(
        "name: retail_events\n"
        + bundled.replace("features:\n", "features:\n  top_events: 6\n")
        + "events:\n  path: events.csv\n  columns: {customer_id: Customer, timestamp: When, event: Event}\n"
    )
    return retail, load_dataset(load_dataset_config(folder / "retail_events.yaml"))


@pytest.mark.real_data
def test_an_events_file_of_the_category_purchases_gives_the_derived_labels(retail_with_events) -> None:  # type: ignore[no-untyped-def]
    retail, with_events = retail_with_events
    as_of = pd.Timestamp("2011-08-01")
    features = build_customer_features(with_events, as_of)
    categories = sorted(set(with_events.events.frame["event"]))
    assert len(categories) == 10  # the keyword map's nine categories and its default
    derived = build_customer_labels(retail, features.frame["customer_id"], as_of, 90, categories)
    events = build_customer_labels(with_events, features.frame["customer_id"], as_of, 90, [], categories)
    for name in categories:
        label = derived[f"purchased_{event_slug(name)}"].to_numpy()
        assert np.array_equal(label, events[FROM_EVENTS.label(name)].to_numpy()), name
        assert 0 < label.mean() < 1, name
    # the features read only events before the cut-off: a customer's count is its rows before as_of
    log = with_events.events.frame
    before = log.loc[(log["timestamp"] < as_of) & (log["event"] == features.events[0])]
    counts = before.groupby(before["customer_id"].astype(str)).size()
    column = features.frame.set_index("customer_id")[f"count_event_{event_slug(features.events[0])}"]
    assert column.reindex(counts.index).to_numpy().tolist() == counts.to_numpy().tolist()


@pytest.mark.real_data
@pytest.mark.slow
def test_event_propensity_beats_every_per_event_baseline_on_online_retail(retail_with_events) -> None:  # type: ignore[no-untyped-def]
    """Every candidate of the family, on two training cut-offs: per event, the winner chosen on the
    validation window is not below the best baseline on the test window (ROC AUC)."""
    _, with_events = retail_with_events
    config = load_model_config("propensity", "online_retail").model_copy(update={"cutoffs": 2})
    started = time.perf_counter()
    trained = propensity.train(with_events, config)
    table = trained.tables["candidates"]
    events = [o for o in table["output"].unique() if o.startswith("event_probability_")]
    assert len(events) == 6, trained.warnings
    lines = []
    for output in events:
        rows = table.loc[table["output"] == output].set_index("candidate")["test_roc_auc"]
        winner = table.loc[(table["output"] == output) & table["winner"], "candidate"].item()
        baselines = rows[[n for n in rows.index if n in BASELINE_NAMES]]
        best = f"best baseline {baselines.idxmax()} {baselines.max():.4f}"
        lines.append(f"{output}: {winner} {rows[winner]:.4f} vs {best}")
        assert rows[winner] >= baselines.max() - 0.001, lines[-1]
    print(f"\nevent propensity, Online Retail ({time.perf_counter() - started:.0f} s):\n" + "\n".join(lines))
    example = trained.output_example
    assert all(example[o].between(0, 1).all() for o in events)
