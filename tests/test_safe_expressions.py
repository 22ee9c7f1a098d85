"""`derived:` expressions come from other people's configs: they are parsed against an allow-list
and computed with numpy, never handed to eval or DataFrame.eval (which reaches os.system)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import ConfigError, DatasetConfig, TableConfig, load_dataset_config
from features.expressions import ExpressionError, evaluate_expression, parse_expression
from features.io import load_dataset
from features.validate import DataError, check_table

NOW = pd.Timestamp("2025-01-01")


def payloads(marker: Path) -> list[str]:
    """Classic ways out of a pandas/numexpr expression, each trying to create ``marker``."""
    return [
        f"__import__('os').system('touch {marker}')",
        f"@pd.io.common.os.system('touch {marker}')",
        f"pd.io.common.os.system('touch {marker}')",
        f"(lambda: __import__('os').system('touch {marker}'))()",
        "q.__class__.__mro__[1].__subclasses__()",
        "[c for c in ().__class__.__base__.__subclasses__()]",
        f"open('{marker}', 'w')",
        f"getattr(q, 'to_csv')('{marker}')",
        f"q.to_csv('{marker}')",
        f"exec('import os; os.system(\"touch {marker}\")')",
        "abs.__self__",
        "__builtins__",
        "'text'",
        "q[0]",
        "q if q else 1",
    ]


def test_finding_4_os_system_payloads_are_refused_at_config_load_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for payload in payloads(marker):
        path = tmp_path / "shop.yaml"
        (tmp_path / "tx.csv").write_text("c,t,q,p\na,2024-01-01,2,1.5\n")
        quoted = payload.replace("'", "''")
        path.write_text(
            f"transactions:\n  path: tx.csv\n  columns: {{customer_id: c, timestamp: t}}\n"
            f"  derived:\n    amount: '{quoted}'\n"
        )
        with pytest.raises(ConfigError) as raised:
            load_dataset_config(path)
        message = str(raised.value)
        assert str(path) in message and "transactions.derived" in message, message
        assert "derived column 'amount'" in message and payload in message, message
    assert not marker.exists()


def test_finding_4_payloads_in_a_config_built_without_validation_are_refused_when_checking(tmp_path: Path) -> None:
    """A config object built in code (model_construct skips validation) is checked again on use."""
    marker = tmp_path / "pwned"
    raw = pd.DataFrame({"c": ["a"], "t": ["2024-01-01"], "q": ["2"], "_row": [1]})
    base = TableConfig(path="x.csv", columns={"customer_id": "c", "timestamp": "t"})
    config = DatasetConfig(name="x", transactions=base)
    for payload in payloads(marker):
        table = base.model_copy(update={"derived": {"amount": payload}})  # no validation on copy
        with pytest.raises(DataError, match=r"derived column 'amount' = .* is refused"):
            check_table(raw, table, config, "transactions", "x.csv")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("a.b.c", "Attribute"),
        ("lambda: 1", "Lambda"),
        ("x[0]", "Subscript"),
        ("'s'", "only numbers"),
        ("f(q)", "calls only"),
        ("min(q)", "takes 2..2"),
        ("round(q, q)", "whole number of digits"),
        ("__q__ + 1", "names starting with '__'"),
        ("`Unit Price * 2", "back tick"),
        ("q +", "not valid arithmetic"),
        ("1" + " + 1" * 300, "longer than"),
        ("1" + "0" * 310, "too large"),
    ],
)
def test_refused_expressions_say_why(expression: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason):
        parse_expression(expression)


def test_allowed_arithmetic_matches_numpy_computed_by_hand() -> None:
    q = np.array([2.0, -3.0, np.nan, 0.0])
    p = np.array([1.5, 2.0, 1.0, 4.0])
    columns = {"q": q, "p": p, "Unit Price": p}

    def run(text: str) -> np.ndarray:
        return evaluate_expression(parse_expression(text), columns)

    np.testing.assert_array_equal(run("q * `Unit Price`"), q * p)
    np.testing.assert_array_equal(run("-q // 2 + q % 2 - p ** 2 / 4"), -q // 2 + q % 2 - p**2 / 4)
    np.testing.assert_array_equal(
        run("abs(q) + log1p(p) + round(p / 3, 2)"), np.abs(q) + np.log1p(p) + np.round(p / 3, 2)
    )
    np.testing.assert_array_equal(run("where(q > 0, q, 0)"), [2.0, 0.0, np.nan, 0.0])
    np.testing.assert_array_equal(run("min(q, p) + max(q, 0)"), np.minimum(q, p) + np.maximum(q, 0))
    # comparisons and logic are 0/1, and a missing input stays missing instead of becoming 0
    np.testing.assert_array_equal(run("q > 0 and not p < 2"), [0.0, 0.0, np.nan, 0.0])
    np.testing.assert_array_equal(run("1 < p <= 2 or q == 0"), [1.0, 1.0, np.nan, 1.0])
    assert np.isinf(run("9 ** 9 ** 9 + q")[0])  # float arithmetic: no hour of big integers


def test_derived_column_the_file_lacks_is_named_at_check_time(tmp_path: Path) -> None:
    (tmp_path / "tx.csv").write_text("c,t,Qty,Price\na,2024-01-01,2,1.5\n")
    path = tmp_path / "shop.yaml"
    path.write_text(
        "transactions:\n  path: tx.csv\n  columns: {customer_id: c, timestamp: t}\n"
        "  derived: {amount: 'Qty * `Unit Price`'}\n"
    )
    with pytest.raises(DataError, match=r"names column\(s\) \['Unit Price'\] that the file does not have.*'Price'"):
        load_dataset(load_dataset_config(path), now=NOW)


def test_division_by_zero_and_overflow_are_quarantined_not_passed_on(tmp_path: Path) -> None:
    (tmp_path / "tx.csv").write_text("c,t,q,p\na,2024-01-01,2,0\nb,2024-01-02,2,4\nc,2024-01-03,1e300,1e300\n")
    path = tmp_path / "shop.yaml"
    path.write_text(
        "transactions:\n  path: tx.csv\n  columns: {customer_id: c, timestamp: t}\n  derived: {amount: 'q / p * q'}\n"
    )
    checked = load_dataset(load_dataset_config(path), now=NOW).transactions
    assert checked is not None
    assert checked.frame["amount"].tolist() == [1.0]
    assert checked.quarantine["row"].tolist() == [1, 3]  # 2 / 0 * 2 is inf; 1e300 is beyond max_abs_amount
    assert checked.quarantine["reason"].str.contains("not finite").tolist() == [True, False]


def test_control_the_payload_is_live_against_dataframe_eval(tmp_path: Path) -> None:
    """What the old ``_evaluate`` did (DataFrame.eval, python engine) runs the payload: the refusal
    above guards a real hole, not a hypothetical one."""
    marker = tmp_path / "pwned"
    pd.DataFrame({"q": [1.0]}).eval(f"@pd.io.common.os.system('touch {marker}')", engine="python")
    assert marker.exists()
