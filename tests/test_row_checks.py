"""Deliberately broken files: each problem gets its message (count, first rows, fix) and its
quarantine rows; only unusable data stops a run, and a failed run leaves the previous output intact.

Row numbers are 1-based data rows (the header is not counted), worked out by hand from each file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import ConfigError, load_dataset_config
from features.io import DatasetMissingError, load_dataset
from features.validate import DataError
from valuecast.cli import app

runner = CliRunner()
NOW = pd.Timestamp("2025-01-01")

CONFIG = """\
transactions:
  path: {file}
  columns: {{customer_id: cust, timestamp: when, amount: value, category: kind}}
  timestamp_format: "%Y-%m-%d"
"""


def dataset_files(tmp_path: Path, csv: str, config: str = CONFIG, name: str = "tx.csv") -> Path:
    (tmp_path / name).write_text(csv)
    path = tmp_path / "data.yaml"
    path.write_text(config.format(file=name))
    return path


def check(tmp_path: Path, csv: str, **kwargs: object):  # type: ignore[no-untyped-def]
    dataset = load_dataset(load_dataset_config(dataset_files(tmp_path, csv)), now=NOW, **kwargs)  # type: ignore[arg-type]
    assert dataset.transactions is not None
    return dataset.transactions


HEADER = "cust,when,value,kind\n"


def test_clean_file_has_no_problems(tmp_path: Path) -> None:
    checked = check(tmp_path, HEADER + "a,2024-01-01,10,x\nb,2024-01-02,5.5,y\n")
    assert checked.problems == [] and checked.quarantine.empty
    assert checked.frame["amount"].tolist() == [10.0, 5.5]


def test_empty_customer_ids(tmp_path: Path) -> None:
    checked = check(tmp_path, HEADER + "a,2024-01-01,10,x\n,2024-01-02,5,x\n   ,2024-01-03,5,x\nb,2024-01-04,1,x\n")
    [problem] = checked.problems
    assert (problem.column, problem.count, problem.rows) == ("cust", 2, (2, 3))
    assert "have an empty customer_id" in problem.message() and "Fix: give every row a customer_id" in problem.message()
    assert checked.quarantine["row"].tolist() == [2, 3]
    assert checked.quarantine["reason"].str.startswith("cust: have an empty customer_id").all()
    assert checked.frame["customer_id"].astype(str).tolist() == ["a", "b"]


def test_unparseable_timestamps(tmp_path: Path) -> None:
    csv = HEADER + "a,2024-01-01,10,x\na,01/02/2024,10,x\nb,2024-13-40,1,x\nb,2024-02-01,1,x\n"
    checked = check(tmp_path, csv)
    [problem] = checked.problems
    assert (problem.column, problem.count, problem.rows) == ("when", 2, (2, 3))
    assert "cannot be parsed with format '%Y-%m-%d'" in problem.message()
    assert checked.quarantine["when"].tolist() == ["01/02/2024", "2024-13-40"]  # original values kept


def test_non_numeric_amounts(tmp_path: Path) -> None:
    checked = check(tmp_path, HEADER + "a,2024-01-01,$10,x\na,2024-01-02,1.5,x\nb,2024-01-03,ten,x\nb,2024-01-04,,x\n")
    messages = {p.reason: p for p in checked.problems}
    assert messages["are not numbers"].rows == (1, 3)
    assert "no currency sign" in messages["are not numbers"].message()
    assert messages["have no amount"].rows == (4,)
    assert checked.quarantine["row"].tolist() == [1, 3, 4]
    assert checked.frame["amount"].tolist() == [1.5]


def test_exact_duplicates_keep_the_first_copy(tmp_path: Path) -> None:
    csv = HEADER + "a,2024-01-01,10,x\na,2024-01-01,10,x\nb,2024-01-02,3,y\na,2024-01-01,10,x\na,2024-01-01,11,x\n"
    checked = check(tmp_path, csv)
    [problem] = checked.problems
    assert (problem.count, problem.rows) == (2, (2, 4))
    assert checked.quarantine["row"].tolist() == [2, 4]
    assert len(checked.frame) == 3  # the first copy and the row that differs in amount stay


def test_duplicates_can_be_kept_where_they_are_real(tmp_path: Path) -> None:
    config = CONFIG + "  duplicates: keep\n"
    dataset = load_dataset(
        load_dataset_config(dataset_files(tmp_path, HEADER + "a,2024-01-01,10,x\na,2024-01-01,10,x\n", config)), now=NOW
    )
    assert dataset.transactions is not None
    [problem] = dataset.transactions.problems
    assert problem.outcome == "kept" and "; kept." in problem.message()
    assert len(dataset.transactions.frame) == 2 and dataset.transactions.quarantine.empty


def test_rows_after_the_as_of_date_are_reported_not_quarantined(tmp_path: Path) -> None:
    checked = check(
        tmp_path, HEADER + "a,2024-01-01,10,x\na,2024-03-01,10,x\nb,2024-03-05,1,x\n", as_of=pd.Timestamp("2024-02-01")
    )
    [problem] = checked.problems
    assert (problem.count, problem.rows, problem.outcome) == (2, (2, 3), "not used for features")
    assert "on or after the as-of date 2024-02-01" in problem.message()
    assert checked.quarantine.empty and len(checked.frame) == 3  # labels need them


def test_rows_dated_in_the_future_are_quarantined(tmp_path: Path) -> None:
    checked = check(tmp_path, HEADER + "a,2024-01-01,10,x\na,2099-01-01,10,x\n")
    [problem] = checked.problems
    assert problem.rows == (2,) and "dated in the future" in problem.message()
    assert checked.quarantine["row"].tolist() == [2]


def test_unknown_value_labels(tmp_path: Path) -> None:
    config = CONFIG + "value_maps:\n  kind: {{x: 1, y: 2}}\n"
    csv = HEADER + "a,2024-01-01,10,x\na,2024-01-02,10,z\nb,2024-01-03,1,y\nb,2024-01-04,1,Y\n"
    dataset = load_dataset(load_dataset_config(dataset_files(tmp_path, csv, config)), now=NOW)
    assert dataset.transactions is not None
    [problem] = dataset.transactions.problems
    assert (problem.column, problem.count, problem.rows) == ("kind", 2, (2, 4))
    assert "not one of ['x', 'y']" in problem.message() and "value_maps.kind" in problem.message()


def test_a_row_with_several_problems_is_quarantined_once_with_the_first_reason(tmp_path: Path) -> None:
    checked = check(tmp_path, HEADER + ",not-a-date,ten,x\na,2024-01-01,10,x\n")
    assert checked.quarantine["row"].tolist() == [1]
    assert checked.quarantine["reason"].iloc[0].startswith("cust: have an empty customer_id")
    assert [p.count for p in checked.problems] == [1]  # later checks do not count it again


def test_missing_required_column_stops_the_run(tmp_path: Path) -> None:
    config = "transactions:\n  path: {file}\n  columns: {{customer_id: cust, timestamp: when}}\n"
    with pytest.raises(DataError, match=r"required column\(s\) \['amount'\] are not mapped"):
        load_dataset(load_dataset_config(dataset_files(tmp_path, HEADER + "a,2024-01-01,1,x\n", config)))


def test_mapping_a_column_the_file_lacks_names_it(tmp_path: Path) -> None:
    csv = "cust,when,amount_eur,kind\na,2024-01-01,1,x\n"
    with pytest.raises(DataError, match=r"maps column 'value', which the file does not have.*amount_eur"):
        load_dataset(load_dataset_config(dataset_files(tmp_path, csv)))


def test_no_usable_row_stops_the_run_and_says_why(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no usable rows.*have an empty customer_id"):
        check(tmp_path, HEADER + ",2024-01-01,10,x\n,2024-01-02,10,x\n")


def test_crlf_file_with_an_empty_trailing_column_like_leads_csv(tmp_path: Path) -> None:
    csv = "cust,when,value,kind,\r\na,2024-01-01,10,x,\r\nb,2024-01-02,5,y,\r\n"
    checked = check(tmp_path, csv)
    assert checked.problems == []
    assert "Unnamed: 4" not in checked.frame.columns
    assert checked.frame["category"].astype(str).tolist() == ["x", "y"]


def test_cli_reports_problems_and_writes_the_quarantine_file(tmp_path: Path) -> None:
    config = dataset_files(tmp_path, HEADER + "a,2024-01-01,10,x\n,2024-01-02,5,x\na,2024-01-03,oops,x\n")
    out = tmp_path / "out" / "features.parquet"
    result = runner.invoke(app, ["features", "--data", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "(rows 2); quarantined" in result.output
    quarantine = pd.read_csv(tmp_path / "out" / "features.quarantine.transactions.csv")
    assert quarantine["row"].tolist() == [2, 3]
    assert set(quarantine.columns) >= {"row", "reason", "cust", "when", "value", "kind"}
    assert len(pd.read_parquet(out)) == 1


def test_failed_run_leaves_the_previous_output_intact(tmp_path: Path) -> None:
    out = tmp_path / "features.parquet"
    good = dataset_files(tmp_path, HEADER + "a,2024-01-01,10,x\n")
    assert runner.invoke(app, ["features", "--data", str(good), "--out", str(out)]).exit_code == 0
    before = out.read_bytes()
    (tmp_path / "tx.csv").write_text(HEADER + ",2024-01-01,10,x\n")  # now nothing is usable
    result = runner.invoke(app, ["features", "--data", str(good), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("  reading") or "error:" in result.output
    assert "Traceback" not in result.output
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".features")] == []  # no temp file left


def test_unknown_dataset_name_and_bad_yaml_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'cdnw': use one of .*cdnow"):
        load_dataset_config("cdnw")
    path = tmp_path / "bad.yaml"
    path.write_text("transactions:\n  path: x.csv\n  colums: {customer_id: a}\n")
    with pytest.raises(ConfigError, match=r"transactions\.colums: unknown key \(check the spelling\)"):
        load_dataset_config(path)
    path.write_text("transactions:\n  path: x.csv\n  columns: {client: a}\n")
    with pytest.raises(ConfigError, match=r"'client' is not a transactions contract column"):
        load_dataset_config(path)


def test_absent_file_is_one_line_and_exit_3(tmp_path: Path) -> None:
    config = tmp_path / "data.yaml"
    config.write_text(CONFIG.format(file="missing.csv"))
    with pytest.raises(DatasetMissingError):
        load_dataset(load_dataset_config(config))
    result = runner.invoke(app, ["features", "--data", str(config), "--out", str(tmp_path / "f.parquet")])
    assert result.exit_code == 3
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.csv is absent" in errors[0]


def test_data_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "online-retail").mkdir()
    monkeypatch.setenv("VALUECAST_DATA_ROOT", str(tmp_path))
    with pytest.raises(DatasetMissingError, match=str(tmp_path / "online-retail" / "online_retail.parquet")):
        load_dataset(load_dataset_config("online_retail"))


def test_value_maps_for_a_column_no_table_has_is_a_config_error(tmp_path: Path) -> None:
    config = CONFIG + "value_maps:\n  knid: {{x: 1}}\n"
    with pytest.raises(ConfigError, match=r"value_maps names column\(s\) \['knid'\] that no table has"):
        load_dataset(load_dataset_config(dataset_files(tmp_path, HEADER + "a,2024-01-01,1,x\n", config)))


def test_derived_amount_with_a_bad_factor_is_quarantined(tmp_path: Path) -> None:
    config = (
        "transactions:\n  path: {file}\n  columns: {{customer_id: c, timestamp: t}}\n  derived: {{amount: q * p}}\n"
    )
    csv = "c,t,q,p,text\na,2024-01-01,2,1.5,hello\na,2024-01-02,x,1.5,world\n"
    dataset = load_dataset(load_dataset_config(dataset_files(tmp_path, csv, config)), now=NOW)
    assert dataset.transactions is not None
    assert dataset.transactions.frame["amount"].tolist() == [3.0]
    [problem] = dataset.transactions.problems
    assert problem.rows == (2,) and "give no number for amount = q * p" in problem.message()
    assert "text" in dataset.transactions.frame.columns  # unreferenced columns are attributes
