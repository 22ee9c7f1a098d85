"""Feature tables as columns: a pandas DataFrame (batch) or a dict of equal-length numpy arrays (one
API request). The scoring code reads and adds columns through these helpers, so that the same code
scores a million customers from a DataFrame and one customer without building any pandas object,
which costs more than the arithmetic for a single row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd

Columns = TypeVar("Columns", pd.DataFrame, dict[str, np.ndarray])


def values_of(features: Mapping[str, Any] | pd.DataFrame, name: str) -> np.ndarray:
    """One column as float64 (missing values as NaN)."""
    column = features[name]
    if isinstance(column, pd.Series):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(column, dtype=np.float64)


def rows_of(features: Mapping[str, Any] | pd.DataFrame) -> int:
    if isinstance(features, pd.DataFrame):
        return len(features)
    return len(next(iter(features.values()))) if features else 0


def feature_matrix(features: Mapping[str, Any] | pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """The model inputs in a fixed column order as floats; columns the table lacks are missing (NaN)."""
    if isinstance(features, pd.DataFrame):
        return features.reindex(columns=list(columns)).to_numpy(dtype=np.float64, na_value=np.nan)
    n = rows_of(features)
    out = np.full((n, len(columns)), np.nan)
    for position, name in enumerate(columns):
        if name in features:
            out[:, position] = np.asarray(features[name], dtype=np.float64)
    return out


def with_columns(features: Columns, extra: Mapping[str, np.ndarray]) -> Columns:
    """The table with ``extra`` columns added or replaced; the input is not modified."""
    if isinstance(features, pd.DataFrame):
        return features.assign(**extra)
    return {**features, **extra}


def without_columns(features: Columns, names: Sequence[str]) -> Columns:
    if isinstance(features, pd.DataFrame):
        return features.drop(columns=list(names), errors="ignore")
    return {k: v for k, v in features.items() if k not in names}
