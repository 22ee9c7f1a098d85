"""Per-table reading options (separator, encoding, decimal, date_format) on a real log re-written the
way a small European shop exports it, and the one-line failure when an option is missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.config import ConfigError, load_dataset_config
from features.io import load_dataset
from features.validate import AmbiguousDatesError, DataError, NoUsableRowsError, parse_dates

NOW = pd.Timestamp("2025-01-01")
CITIES = ("Köln", "München", "Düsseldorf", "Zürich")
SHOP_YAML = """\
transactions:
  path: kasse.csv
  columns: {{customer_id: Kunde, timestamp: Datum, amount: Betrag, quantity: Anzahl}}
  duplicates: keep
{options}"""
ALL_OPTIONS = {"separator": "';'", "encoding": "latin-1", "decimal": "','", "date_format": "day_first"}


def decimal_comma(value: float) -> str:
    """12.5 -> '12,50'; 1234.5 -> '1.234,50' (German style), computed with Python's own formatting."""
    return f"{value:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")


@pytest.fixture(scope="module")
def cdnow_300(cdnow_transactions: pd.DataFrame) -> pd.DataFrame:
    """Every purchase of 300 real CDNOW customers (ids in file order), as the bundled config reads them."""
    ids = cdnow_transactions["customer_id"].astype(str).drop_duplicates().head(300)
    rows = cdnow_transactions.loc[cdnow_transactions["customer_id"].astype(str).isin(set(ids))]
    return rows[["customer_id", "timestamp", "amount", "quantity"]].reset_index(drop=True)


def write_shop(tmp_path: Path, original: pd.DataFrame, **options: str) -> Path:
    lines = ["Kunde;Datum;Stadt;Anzahl;Betrag"]
    for i, row in enumerate(original.itertuples(index=False)):
        amount = decimal_comma(row.amount)
        lines.append(f"{row.customer_id};{row.timestamp:%d-%m-%Y};{CITIES[i % 4]};{row.quantity:.0f};{amount}")
    (tmp_path / "kasse.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    config = tmp_path / "kasse.yaml"
    config.write_text(SHOP_YAML.format(options="".join(f"  {k}: {v}\n" for k, v in options.items())))
    return config


def test_day_first_semicolon_latin1_decimal_comma_csv_reads_like_the_original(
    tmp_path: Path, cdnow_300: pd.DataFrame
) -> None:
    checked = load_dataset(load_dataset_config(write_shop(tmp_path, cdnow_300, **ALL_OPTIONS)), now=NOW).transactions
    assert checked is not None and checked.quarantine.empty
    frame = checked.frame
    assert frame["customer_id"].astype(str).tolist() == cdnow_300["customer_id"].astype(str).tolist()
    assert frame["timestamp"].tolist() == cdnow_300["timestamp"].tolist()
    assert frame["amount"].tolist() == cdnow_300["amount"].tolist()
    assert frame["quantity"].tolist() == cdnow_300["quantity"].tolist()
    assert frame["customer_id"].nunique() == 300
    assert set(frame["Stadt"]) == set(CITIES)  # latin-1 umlauts read as written


def test_without_the_separator_the_header_names_it(tmp_path: Path, cdnow_300: pd.DataFrame) -> None:
    options = {k: v for k, v in ALL_OPTIONS.items() if k != "separator"}
    with pytest.raises(DataError) as raised:
        load_dataset(load_dataset_config(write_shop(tmp_path, cdnow_300, **options)), now=NOW)
    message = str(raised.value)
    assert "\n" not in message
    assert message.endswith(
        "the header has one column 'Kunde;Datum;Stadt;Anzahl;Betrag': the file looks separated by ';': "
        "set separator: ';' for this table"
    )
    assert "kasse.csv" in message


def test_without_the_encoding_the_first_undecodable_line_is_named(tmp_path: Path, cdnow_300: pd.DataFrame) -> None:
    options = {k: v for k, v in ALL_OPTIONS.items() if k != "encoding"}
    config = write_shop(tmp_path, cdnow_300, **options)
    raw_lines = (tmp_path / "kasse.csv").read_bytes().split(b"\n")
    first_bad = next(i for i, line in enumerate(raw_lines, start=1) if any(b >= 0x80 for b in line))
    with pytest.raises(DataError) as raised:
        load_dataset(load_dataset_config(config), now=NOW)
    message = str(raised.value)
    assert "\n" not in message
    assert f"kasse.csv: line {first_bad} is not valid utf-8" in message
    assert "set encoding: latin-1" in message and "\ufffd" not in message.split("(byte")[0]


def test_without_a_date_format_ambiguous_dates_stop_the_run(tmp_path: Path, cdnow_300: pd.DataFrame) -> None:
    options = {k: v for k, v in ALL_OPTIONS.items() if k != "date_format"}
    with pytest.raises(AmbiguousDatesError) as raised:
        load_dataset(load_dataset_config(write_shop(tmp_path, cdnow_300, **options)), now=NOW)
    message = str(raised.value)
    assert "\n" not in message
    assert "column 'Datum'" in message and "kasse.csv" in message and "kasse.yaml" in message
    assert "set date_format: day_first" in message
    assert raised.value.examples and all(int(e[:2]) <= 12 and int(e[3:5]) <= 12 for e in raised.value.examples)


def test_without_the_decimal_comma_no_amount_is_guessed(tmp_path: Path, cdnow_300: pd.DataFrame) -> None:
    options = {k: v for k, v in ALL_OPTIONS.items() if k != "decimal"}
    with pytest.raises(NoUsableRowsError) as raised:  # every amount has a comma: none is read as a number
        load_dataset(load_dataset_config(write_shop(tmp_path, cdnow_300, **options)), now=NOW)
    message = str(raised.value)
    assert "\n" not in message
    assert f"column 'Betrag': {len(cdnow_300):,} row(s) are not numbers" in message
    assert "set decimal: ','" in message


def test_finding_2_mueller_and_moeller_stay_two_customers_in_latin1(tmp_path: Path) -> None:
    text = "Kunde,Datum,Betrag\nMüller,2024-01-02,10\nMöller,2024-01-03,20\nMüller,2024-01-04,5\n"
    (tmp_path / "kasse.csv").write_bytes(text.encode("latin-1"))
    config = tmp_path / "kasse.yaml"
    config.write_text(
        "transactions:\n  path: kasse.csv\n  columns: {customer_id: Kunde, timestamp: Datum, amount: Betrag}\n"
        "  encoding: latin-1\n"
    )
    checked = load_dataset(load_dataset_config(config), now=NOW).transactions
    assert checked is not None
    spend = checked.frame.groupby("customer_id", observed=True)["amount"].sum().to_dict()
    assert spend == {"Müller": 15.0, "Möller": 20.0}
    # Read as utf-8 (the default), the file is refused instead of merging both into 'M\ufffdller'.
    config.write_text(config.read_text().replace("  encoding: latin-1\n", ""))
    with pytest.raises(DataError, match=r"line 2 is not valid utf-8.*set encoding: latin-1"):
        load_dataset(load_dataset_config(config), now=NOW)


def test_finding_2_undecodable_lines_can_be_quarantined_instead(tmp_path: Path) -> None:
    body = b"Kunde,Datum,Betrag\na,2024-01-02,10\n" + "Möller,2024-01-03,20\n".encode("latin-1")
    (tmp_path / "kasse.csv").write_bytes(body + b"b,2024-01-04,5\n")
    config = tmp_path / "kasse.yaml"
    config.write_text(
        "transactions:\n  path: kasse.csv\n  columns: {customer_id: Kunde, timestamp: Datum, amount: Betrag}\n"
        "  encoding_errors: quarantine\n"
    )
    checked = load_dataset(load_dataset_config(config), now=NOW).transactions
    assert checked is not None
    assert checked.frame["customer_id"].astype(str).tolist() == ["a", "b"]
    assert checked.frame["_row"].tolist() == [1, 3]
    assert checked.quarantine["row"].tolist() == [2]
    assert checked.quarantine["reason"].iloc[0].startswith("line 3: byte b'\\xf6' is not valid utf-8")
    assert any("have bytes that are not valid utf-8" in p.message() for p in checked.problems)


def test_tab_separated_file_read_as_comma_names_the_tab(tmp_path: Path) -> None:
    (tmp_path / "kasse.csv").write_text("Kunde\tDatum\tBetrag\na\t2024-01-02\t10\n")
    config = tmp_path / "kasse.yaml"
    config.write_text(
        "transactions:\n  path: kasse.csv\n  columns: {customer_id: Kunde, timestamp: Datum, amount: Betrag}\n"
    )
    with pytest.raises(DataError, match=r'looks separated by "\\t": set separator: "\\t" for this table'):
        load_dataset(load_dataset_config(config), now=NOW)
    config.write_text(config.read_text() + '  separator: "\\t"\n')
    checked = load_dataset(load_dataset_config(config), now=NOW).transactions
    assert checked is not None and checked.frame["amount"].tolist() == [10.0]


HEADER = "cust,when,value\n"
PLAIN_YAML = "transactions:\n  path: tx.csv\n  columns: {{customer_id: cust, timestamp: when, amount: value}}\n{extra}"


def load_plain(tmp_path: Path, csv: str, extra: str = ""):  # type: ignore[no-untyped-def]
    (tmp_path / "tx.csv").write_text(csv)
    (tmp_path / "tx.yaml").write_text(PLAIN_YAML.format(extra=extra))
    checked = load_dataset(load_dataset_config(tmp_path / "tx.yaml"), now=NOW).transactions
    assert checked is not None
    return checked


def test_finding_11_a_malformed_line_is_quarantined_while_the_rest_loads(tmp_path: Path) -> None:
    csv = (
        HEADER
        + 'a,2024-01-01,10\nb,2024-01-02,1,234\nc,"2024-01-03",5\nd,2024-01-04\n'
        + 'e,2024-01-05,"7"\n\nf,2024-01-06,8\n'
    )
    checked = load_plain(tmp_path, csv)
    assert checked.frame["customer_id"].astype(str).tolist() == ["a", "c", "e", "f"]
    assert checked.frame["_row"].tolist() == [1, 3, 5, 6]  # the file's own row numbers (blank line skipped)
    assert checked.quarantine["row"].tolist() == [2, 4]
    assert checked.quarantine["reason"].tolist() == [
        "line 3: 4 fields where the header has 3",
        "line 5: 2 fields where the header has 3",
    ]
    [problem] = checked.problems
    assert (problem.count, problem.rows, problem.column) == (2, (2, 4), "(whole line)")


def test_a_long_first_line_is_not_silently_turned_into_an_index(tmp_path: Path) -> None:
    """pandas makes the first column the index when the first data line has one field too many."""
    checked = load_plain(tmp_path, HEADER + "a,2024-01-01,10,extra\nb,2024-01-02,5\n")
    assert checked.frame["customer_id"].astype(str).tolist() == ["b"]
    assert checked.quarantine["row"].tolist() == [1]


def test_quoted_values_spanning_lines_keep_line_numbers_right(tmp_path: Path) -> None:
    csv = 'cust,when,value,note\na,2024-01-01,10,"two\nlines"\nb,2024-01-02,5\nc,2024-01-03,1,x\n'
    checked = load_plain(tmp_path, csv)
    assert checked.frame["note"].tolist() == ["two\nlines", "x"]
    assert checked.quarantine["reason"].tolist() == ["line 4: 3 fields where the header has 4"]


def test_finding_3_non_finite_and_absurd_amounts_are_quarantined(tmp_path: Path) -> None:
    values = ["12.5", "inf", "1e308", "-Infinity", "nan", "NaN", "2e9", "-999999999", "1e9"]
    csv = HEADER + "".join(f"c{i},2024-01-0{i + 1},{v}\n" for i, v in enumerate(values))
    checked = load_plain(tmp_path, csv)
    assert checked.frame["amount"].tolist() == [12.5, -999_999_999.0, 1e9]
    reasons = dict(zip(checked.quarantine["value"], checked.quarantine["reason"], strict=True))
    assert reasons["inf"] == reasons["nan"] == "value: are not finite numbers (nan or inf spelled out)"
    assert reasons["1e308"].startswith("value: are larger than max_abs_amount (1,000,000,000)")
    assert reasons["2e9"] == reasons["1e308"]
    limited = load_plain(tmp_path, csv, "  max_abs_amount: 100\n")
    assert limited.frame["amount"].tolist() == [12.5]


def test_decimal_comma_with_thousands_markers(tmp_path: Path) -> None:
    csv = "cust;when;value\na;2024-01-01;12,50\nb;2024-01-02;1.234,56\nc;2024-01-03;-0,5\nd;2024-01-04;12.5\n"
    checked = load_plain(tmp_path, csv, "  separator: ';'\n  decimal: ','\n")
    assert checked.frame["amount"].tolist() == [12.5, 1234.56, -0.5]
    assert checked.quarantine["value"].tolist() == ["12.5"]  # a dot that is no thousands marker is not a guess


def test_date_format_and_its_older_name_cannot_both_be_set(tmp_path: Path) -> None:
    (tmp_path / "tx.yaml").write_text(
        PLAIN_YAML.format(extra="  date_format: day_first\n  timestamp_format: '%d-%m-%Y'\n")
    )
    with pytest.raises(ConfigError, match=r"same option .*keep only date_format"):
        load_dataset_config(tmp_path / "tx.yaml")
    (tmp_path / "tx.yaml").write_text(PLAIN_YAML.format(extra="  date_format: dayfirst\n"))
    with pytest.raises(ConfigError, match=r"transactions.date_format: 'dayfirst' is neither a strptime format"):
        load_dataset_config(tmp_path / "tx.yaml")


def test_unknown_encoding_and_bad_separator_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "tx.yaml").write_text(PLAIN_YAML.format(extra="  encoding: latin-9x\n  separator: ';;'\n"))
    with pytest.raises(
        ConfigError,
        match=r"separator: String should have at most 1 character; transactions.encoding: unknown encoding 'latin-9x'",
    ):
        load_dataset_config(tmp_path / "tx.yaml")


@pytest.mark.parametrize(
    ("values", "date_format", "expected"),
    [
        (["31-01-2018", "15-02-2018 13:45"], None, ["2018-01-31", "2018-02-15 13:45"]),  # only day-first fits
        (["01-31-2018", "02-15-2018"], None, ["2018-01-31", "2018-02-15"]),  # only month-first fits
        (["05-05-2018", "2018-02-01"], None, ["2018-05-05", "2018-02-01"]),  # same either way; ISO
        (["01-02-2018", "31/12/97", "2018-03-04"], "day_first", ["2018-02-01", "1997-12-31", "2018-03-04"]),
        (["01-02-2018", "31-01-2018"], "month_first", ["2018-01-02", None]),  # never swapped per value
        (["2018/02/01", "5 Jan 2020", "1/2", "yesterday"], None, ["2018-02-01", "2020-01-05", None, None]),
        (["01.02.2018"], "%d.%m.%Y", ["2018-02-01"]),
    ],
)
def test_dates_are_read_in_one_order(values: list[str], date_format: str | None, expected: list[str | None]) -> None:
    parsed = parse_dates(pd.Series(values, dtype="string"), date_format)
    assert parsed.tolist() == [pd.Timestamp(e) if e else pd.NaT for e in expected]


@pytest.mark.parametrize("values", [["01-02-2018", "31-01-2018"], ["31-01-2018", "01-31-2018"]])
def test_dates_that_read_both_ways_are_an_error_without_date_format(values: list[str]) -> None:
    with pytest.raises(AmbiguousDatesError):
        parse_dates(pd.Series(values, dtype="string"))


def test_every_yaml_example_of_the_data_contract_is_a_valid_config() -> None:
    import re

    import yaml

    from features.config import PROJECT_ROOT, DatasetConfig

    text = (PROJECT_ROOT / "docs" / "data-contract.md").read_text()
    examples = [block for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if block.startswith("name:")]
    assert len(examples) >= 3
    for block in examples:
        DatasetConfig.model_validate(yaml.safe_load(block))
