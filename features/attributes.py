"""Customer and lead attributes as model-ready numbers.

Numeric attributes (including text columns whose every value is a number, such as Telco's
``TotalCharges`` with its blanks) pass through as floats, missing values kept for the model to
handle. Other attributes are one-hot encoded by scikit-learn's ``OneHotEncoder``: rare levels are
grouped as infrequent, a missing value is a level of its own, and a level never seen in fitting
encodes as all zeros instead of failing, so new values at scoring time cannot crash a model.

The fitted encoder is a plain picklable object: a trained model keeps it to encode raw inputs the
same way at scoring time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from sklearn.preprocessing import OneHotEncoder

MISSING_LEVEL = "(missing)"


def attribute_slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_") or "blank"


def _as_number(values: pd.Series) -> pd.Series | None:
    """The column as floats if every non-missing value is a number, else None."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("float64")
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype("float64")
    text = values.astype("string").str.strip().replace("", pd.NA)
    parsed = pd.to_numeric(text, errors="coerce")
    if parsed.isna().equals(text.isna()):
        return parsed.astype("float64")
    return None


def _unique(names: list[str]) -> list[str]:
    """Levels that differ only in case or punctuation ('Google', 'google') get numbered names."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


@dataclass
class AttributeEncoder:
    """Fit on one population, then encode any frame with the same attribute columns."""

    max_levels: int = 20
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    encoder: OneHotEncoder | None = None

    def fit(self, frame: pd.DataFrame, columns: list[str]) -> AttributeEncoder:
        self.numeric, self.categorical = [], []
        for column in columns:
            (self.numeric if _as_number(frame[column]) is not None else self.categorical).append(column)
        if self.categorical:
            from sklearn.preprocessing import OneHotEncoder  # imported here: a second off every start

            self.encoder = OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                max_categories=self.max_levels,
                sparse_output=False,
                dtype=np.float64,
            ).fit(self._categories(frame))
        return self

    def _categories(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {c: frame[c].astype("string").fillna(MISSING_LEVEL).to_numpy(dtype=object) for c in self.categorical}
        )

    @property
    def feature_names(self) -> list[str]:
        names = [f"attr_{attribute_slug(c)}" for c in self.numeric]
        if self.encoder is not None:
            for column, levels, infrequent in zip(
                self.categorical,
                self.encoder.categories_,
                self.encoder.infrequent_categories_,
                strict=True,
            ):
                rare = set(infrequent) if infrequent is not None else set()
                names += [f"attr_{attribute_slug(column)}__{attribute_slug(v)}" for v in levels if v not in rare]
                if rare:
                    names.append(f"attr_{attribute_slug(column)}__infrequent")
        return _unique(names)

    @property
    def source_columns(self) -> list[str]:
        """For each name in :attr:`feature_names`, the attribute column it encodes."""
        sources = list(self.numeric)
        if self.encoder is not None:
            for column, levels, infrequent in zip(
                self.categorical, self.encoder.categories_, self.encoder.infrequent_categories_, strict=True
            ):
                rare = set(infrequent) if infrequent is not None else set()
                sources += [column] * (sum(v not in rare for v in levels) + (1 if rare else 0))
        return sources

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Encoded attributes, one row per input row, in the input's order. An attribute the frame
        lacks (an API request that leaves it out) is missing for every row, not an error."""
        absent = [c for c in (*self.numeric, *self.categorical) if c not in frame.columns]
        if absent:
            frame = frame.assign(**{c: pd.Series(pd.NA, index=frame.index, dtype="object") for c in absent})
        parts: dict[str, np.ndarray] = {}
        for column in self.numeric:
            values = _as_number(frame[column])
            if values is None:  # text where fitting saw numbers: unparseable values become missing
                values = pd.to_numeric(frame[column].astype("string").str.strip(), errors="coerce")
            parts[f"attr_{attribute_slug(column)}"] = values.to_numpy(dtype=np.float64, na_value=np.nan)
        encoded = pd.DataFrame(parts, index=frame.index)
        if self.encoder is not None:
            onehot = self.encoder.transform(self._categories(frame))
            names = self.feature_names[len(self.numeric) :]
            encoded = pd.concat([encoded, pd.DataFrame(onehot, columns=names, index=frame.index)], axis=1)
        return encoded
