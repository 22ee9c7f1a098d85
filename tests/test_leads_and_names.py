"""Leads without an id column, with day-first creation times and labels from a won-deals file; and
attribute names that would collide with contract columns or with each other."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.config import ConfigError, load_dataset_config
from features.io import load_dataset
from features.pipeline import attribute_columns, build_lead_features
from features.validate import DataError

NOW = pd.Timestamp("2025-01-01")

LEADS_CSV = """\
Email;Created;Source;Employees
ana@a.example;03-02-2024 09:15;web;12
bo@b.example;03-02-2024 17:40;fair;250
cy@c.example;29-02-2024 08:05;web;
di@d.example;01-03-2024 23:59;referral;40
"""
WON_CSV = "Deal Lead;Amount\nbo@b.example;1200\ndi@d.example;300\nzed@z.example;90\n"
FUNNEL_YAML = """\
leads:
  path: leads.csv
  separator: ";"
  date_format: day_first
  columns: {created_at: Created}
  label_from:
    path: won.csv
    separator: ";"
    id_column: Deal Lead
    lead_column: Email
"""


def funnel(tmp_path: Path, yaml_text: str = FUNNEL_YAML) -> Path:
    (tmp_path / "leads.csv").write_text(LEADS_CSV)
    (tmp_path / "won.csv").write_text(WON_CSV)
    (tmp_path / "funnel.yaml").write_text(yaml_text)
    return tmp_path / "funnel.yaml"


def test_leads_without_ids_with_day_first_times_and_a_won_deals_file(tmp_path: Path) -> None:
    dataset = load_dataset(load_dataset_config(funnel(tmp_path)), now=NOW)
    leads = dataset.leads
    assert leads is not None and leads.quarantine.empty
    frame = leads.frame
    assert frame["lead_id"].tolist() == ["row-1", "row-2", "row-3", "row-4"]
    assert frame["converted"].tolist() == [0.0, 1.0, 0.0, 1.0]
    # 3 Feb 2024 was a Saturday (weekday 5), 29 Feb a Thursday (3), 1 Mar a Friday (4): worked out with a calendar
    assert frame["created_at"].tolist() == [
        pd.Timestamp("2024-02-03 09:15"),
        pd.Timestamp("2024-02-03 17:40"),
        pd.Timestamp("2024-02-29 08:05"),
        pd.Timestamp("2024-03-01 23:59"),
    ]
    assert frame["created_dow"].tolist() == [5.0, 5.0, 3.0, 4.0]
    assert frame["created_month"].tolist() == [2.0, 2.0, 2.0, 3.0]
    assert frame["created_hour"].tolist() == [9.0, 17.0, 8.0, 23.0]
    assert leads.row_number_ids
    notices = {p.outcome: p for p in leads.problems}
    assert "each id is the row number" in notices["kept"].message()
    not_used = notices["not used"]
    assert (not_used.column, not_used.count, not_used.rows) == ("Deal Lead", 1, (3,))
    assert "zed@z.example" in not_used.message() and "won.csv" in not_used.message()


def test_calendar_columns_are_model_inputs_and_created_at_and_the_join_key_are_not(tmp_path: Path) -> None:
    dataset = load_dataset(load_dataset_config(funnel(tmp_path)), now=NOW)
    assert dataset.leads is not None
    columns = attribute_columns(dataset.leads.frame)
    assert set(columns) == {"Source", "Employees", "created_dow", "created_month", "created_hour"}
    features = build_lead_features(dataset)
    assert {"attr_created_dow", "attr_created_month", "attr_created_hour"} <= set(features.frame.columns)
    assert not [c for c in features.frame.columns if "email" in c or c.startswith("attr_created_at")]
    assert features.frame["converted"].tolist() == [0, 1, 0, 1]


def test_dates_without_a_time_of_day_give_no_hour_column(tmp_path: Path) -> None:
    (tmp_path / "leads.csv").write_text("Id,Created\nL1,2024-02-03\nL2,2024-03-04\n")
    (tmp_path / "funnel.yaml").write_text("leads:\n  path: leads.csv\n  columns: {lead_id: Id, created_at: Created}\n")
    leads = load_dataset(load_dataset_config(tmp_path / "funnel.yaml"), now=NOW).leads
    assert leads is not None
    assert "created_hour" not in leads.frame.columns and not leads.row_number_ids
    assert leads.frame["created_month"].tolist() == [2.0, 3.0]
    assert leads.problems == []


def test_label_from_joins_on_the_mapped_lead_id_by_default(tmp_path: Path) -> None:
    (tmp_path / "leads.csv").write_text("Id,Source\n17,web\n18,fair\n19,web\n")
    (tmp_path / "won.csv").write_text("Lead\n 19 \n18.0\n\n")  # padding is not part of an id
    (tmp_path / "funnel.yaml").write_text(
        "leads:\n  path: leads.csv\n  columns: {lead_id: Id}\n  label_from: {path: won.csv, id_column: Lead}\n"
    )
    leads = load_dataset(load_dataset_config(tmp_path / "funnel.yaml"), now=NOW).leads
    assert leads is not None
    assert leads.frame["converted"].tolist() == [0.0, 0.0, 1.0]
    # text ids are compared as written: '18.0' is reported rather than guessed to be 18
    [problem] = leads.problems
    assert (problem.outcome, problem.rows) == ("not used", (2,)) and "['18.0']" in problem.message()


@pytest.mark.parametrize(
    ("leads_yaml", "message"),
    [
        (
            "  columns: {created_at: Created}\n  label_from: {path: won.csv, id_column: Lead}\n",
            "label_from joins on the lead id: map lead_id",
        ),
        (
            "  columns: {lead_id: Id, converted: Won}\n  label_from: {path: won.csv, id_column: Lead}\n",
            "converted comes from a column or from label_from, not both",
        ),
        ("  columns: {lead_id: Id}\n  label_from: {path: won.csv, id_colum: Lead}\n", "label_from.id_colum: unknown"),
    ],
)
def test_label_from_config_errors(tmp_path: Path, leads_yaml: str, message: str) -> None:
    (tmp_path / "funnel.yaml").write_text("leads:\n  path: leads.csv\n" + leads_yaml)
    with pytest.raises(ConfigError, match=message):
        load_dataset_config(tmp_path / "funnel.yaml")


def test_label_from_with_a_column_the_won_file_lacks(tmp_path: Path) -> None:
    config = funnel(tmp_path, FUNNEL_YAML.replace("id_column: Deal Lead", "id_column: Lead"))
    with pytest.raises(DataError, match=r"won.csv: leads.label_from.id_column 'Lead' is not a column.*'Deal Lead'"):
        load_dataset(load_dataset_config(config), now=NOW)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ("[Customer ID]", "attribute column 'Customer ID' collides with the contract column 'customer_id'"),
        ("[timestamp]", "attribute column 'timestamp' collides with the contract column 'timestamp'"),
        ("[Lead Source, lead_source]", "attribute columns 'Lead Source' and 'lead_source' both become"),
        ("[Created DOW]", "collides with the contract column 'created_dow'"),
    ],
)
def test_finding_1_attribute_names_that_collide_are_config_errors(
    tmp_path: Path, attributes: str, message: str
) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(
        "transactions:\n  path: tx.csv\n  columns: {customer_id: c, timestamp: t, amount: a}\n"
        f"  attributes: {attributes}\n"
    )
    with pytest.raises(ConfigError, match=message) as raised:
        load_dataset_config(path)
    assert str(path) in str(raised.value) and "transactions" in str(raised.value)


def test_a_file_column_named_like_a_derived_contract_column_is_not_silently_dropped(tmp_path: Path) -> None:
    (tmp_path / "tx.csv").write_text("c,t,q,p,amount\na,2024-01-01,2,1.5,999\n")
    path = tmp_path / "shop.yaml"
    path.write_text(
        "transactions:\n  path: tx.csv\n  columns: {customer_id: c, timestamp: t}\n  derived: {amount: q * p}\n"
    )
    with pytest.raises(DataError, match=r"attribute column 'amount' collides with the contract column 'amount'"):
        load_dataset(load_dataset_config(path), now=NOW)
    path.write_text(path.read_text() + "  exclude: [amount]\n")
    checked = load_dataset(load_dataset_config(path), now=NOW).transactions
    assert checked is not None and checked.frame["amount"].tolist() == [3.0]
