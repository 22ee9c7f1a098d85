"""Safe arithmetic for ``derived:`` columns (``amount: "Quantity * UnitPrice"``).

Dataset configs come from other people, so an expression is parsed with Python's ``ast`` module and
every node is checked against a short allow-list before anything is computed; evaluation then
walks the checked tree with numpy. Nothing is ever handed to ``eval``, ``DataFrame.eval`` or
``numexpr`` (pandas' python engine resolves attribute chains such as ``@pd.io.common.os.system``).

Allowed: numbers; file column names, bare (``UnitPrice``) or in back ticks (```Unit Price```);
``+ - * / // % **``; unary ``-`` and ``+``; comparisons; ``and``, ``or``, ``not``; and the functions
in :data:`FUNCTIONS`. Everything else (strings, attributes, subscripts, lambdas, other calls, names
starting with ``__``) is refused with the reason.

Values are float64. A missing input gives a missing result, also through comparisons and logic,
so a row with an unparseable factor is quarantined instead of silently becoming 0 or 1.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_LENGTH = 500
MAX_NODES = 200
_PLACEHOLDER = "_vc_quoted_{}_"
_QUOTED = re.compile(r"`([^`]*)`")

# name -> (smallest and largest number of arguments, numpy implementation)
FUNCTIONS: dict[str, tuple[int, int, Callable[..., Any]]] = {
    "abs": (1, 1, np.abs),
    "log1p": (1, 1, np.log1p),
    "round": (1, 2, lambda x, digits=0.0: np.round(x, int(digits))),
    "min": (2, 2, np.minimum),
    "max": (2, 2, np.maximum),
    "where": (3, 3, lambda condition, a, b: np.where(np.isnan(condition), np.nan, np.where(condition != 0, a, b))),
}
_BINARY: dict[type[ast.operator], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
}
_COMPARE: dict[type[ast.cmpop], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class ExpressionError(ValueError):
    """An expression outside the allowed arithmetic; the message says which part and why."""


@dataclass(frozen=True)
class Expression:
    """A checked expression: its text, its tree, and the file columns it names (in order)."""

    text: str
    tree: ast.Expression
    names: dict[str, str]  # identifier in the tree -> file column name
    columns: tuple[str, ...]


def parse_expression(text: str) -> Expression:
    """Parse and check an expression; raises :class:`ExpressionError` for anything not allowed."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters")
    quoted: dict[str, str] = {}

    def placeholder(match: re.Match[str]) -> str:
        name = _PLACEHOLDER.format(len(quoted))
        quoted[name] = match.group(1)
        return name

    source = _QUOTED.sub(placeholder, text)
    if "`" in source:
        raise ExpressionError("a back tick without its closing back tick")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not valid arithmetic ({exc.msg})") from exc
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ExpressionError(f"more than {MAX_NODES} parts")
    functions = {id(node.func) for node in nodes if isinstance(node, ast.Call)}
    names: dict[str, str] = {}
    for node in nodes:
        if id(node) not in functions:  # a called function's own name is checked with its call
            _check_node(node, quoted, names)
    return Expression(text, tree, names, tuple(dict.fromkeys(names.values())))


def _check_node(node: ast.AST, quoted: Mapping[str, str], names: dict[str, str]) -> None:
    """Accept one node of the allow-list (recording column names) or raise naming what it is."""
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise ExpressionError(f"calls only {sorted(FUNCTIONS)}, not '{ast.unparse(node.func)}'")
        low, high, _ = FUNCTIONS[node.func.id]
        if node.keywords or not low <= len(node.args) <= high or any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError(f"{node.func.id}() takes {low}..{high} plain arguments")
        if node.func.id == "round" and len(node.args) == 2 and not _whole_number(node.args[1]):
            raise ExpressionError("round(x, digits) takes a whole number of digits such as 2")
        return
    if isinstance(node, ast.Name):
        if node.id.startswith("__"):
            raise ExpressionError(f"names starting with '__' are not allowed ('{node.id}')")
        if not isinstance(node.ctx, ast.Load):
            raise ExpressionError(f"'{node.id}' is assigned to")
        names.setdefault(node.id, quoted.get(node.id, node.id))
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ExpressionError(f"only numbers are allowed as constants, not {node.value!r}")
        if abs(node.value) > 1e300:
            raise ExpressionError(f"the number {node.value} is too large")
        return
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Load)
    allowed_ops = (*_BINARY, *_COMPARE, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or)
    if not isinstance(node, allowed + allowed_ops):
        raise ExpressionError(f"'{type(node).__name__}' is not allowed ({_describe(node)})")


def _whole_number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) <= 15


def _describe(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # operator nodes have no text of their own
        return type(node).__name__


def evaluate_expression(expression: Expression, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Compute a checked expression over float64 columns (file column name -> values)."""
    values = {identifier: np.asarray(columns[name], dtype=np.float64) for identifier, name in expression.names.items()}
    with np.errstate(all="ignore"):  # x/0 and overflow give inf/nan, which the checks then quarantine
        result = _value(expression.tree.body, values)
    return np.asarray(result, dtype=np.float64)


def _value(node: ast.AST, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """The value of one checked node; missing inputs stay missing through comparisons and logic."""
    if isinstance(node, ast.Constant):  # numpy floats: 9**9**9 is inf, not an hour of big-integer arithmetic
        assert isinstance(node.value, int | float)  # parse_expression let only numbers through
        return np.asarray(float(node.value), dtype=np.float64)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_value(node.left, values), _value(node.right, values))
    if isinstance(node, ast.UnaryOp):
        operand = _value(node.operand, values)
        if isinstance(node.op, ast.Not):
            return _keep_missing(operand == 0, operand)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BoolOp):
        parts = [_value(v, values) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        result = parts[0] != 0
        for part in parts[1:]:
            result = combine(result, part != 0)
        return _keep_missing(result, *parts)
    if isinstance(node, ast.Compare):
        left = _value(node.left, values)
        result, seen = np.True_, [left]
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _value(right_node, values)
            result = np.logical_and(result, _COMPARE[type(op)](left, right))
            seen.append(right)
            left = right
        return _keep_missing(result, *seen)
    if isinstance(node, ast.Call):
        _, _, function = FUNCTIONS[node.func.id]  # type: ignore[attr-defined]
        return np.asarray(function(*(_value(a, values) for a in node.args)), dtype=np.float64)
    raise ExpressionError(f"'{type(node).__name__}' is not allowed")  # unreachable after parse_expression


def _keep_missing(result: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
    missing = np.zeros(np.shape(result), dtype=bool)
    for part in inputs:
        missing = missing | np.isnan(part)
    return np.where(missing, np.nan, np.asarray(result, dtype=np.float64))
