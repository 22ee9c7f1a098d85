"""Integer codes for a large text column, using both cores.

Factorising ten million customer-id strings is the most expensive single step of a feature run.
Arrow's dictionary encoding (what ``pd.factorize`` uses for Arrow-backed text) releases the GIL, so
the column is factorised in two halves on two threads and the halves' distinct values are merged.
The result is identical to ``pd.factorize``: codes in order of first appearance, -1 for missing.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

PARALLEL_FROM_ROWS = 1_000_000


def factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize(values)`` as int32 codes and an Index of the distinct values."""
    parts = min(os.cpu_count() or 1, 4)
    if len(values) < PARALLEL_FROM_ROWS or parts < 2:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        return codes.astype(np.int32), pd.Index(uniques)
    spans = list(itertools.pairwise(np.linspace(0, len(values), parts + 1).astype(int)))
    pieces = [values.iloc[start:end] for start, end in spans]
    with ThreadPoolExecutor(parts) as pool:
        results = list(pool.map(lambda piece: pd.factorize(piece, use_na_sentinel=True), pieces))
    # Merge: factorising the halves' uniques in order keeps first-appearance order overall.
    merged_codes, uniques = pd.factorize(pd.concat([pd.Series(u) for _, u in results], ignore_index=True))
    codes = np.empty(len(values), dtype=np.int32)
    offset = 0
    for (start, end), (piece_codes, piece_uniques) in zip(spans, results, strict=True):
        mapping = merged_codes[offset : offset + len(piece_uniques)].astype(np.int32)
        offset += len(piece_uniques)
        codes[start:end] = np.where(piece_codes >= 0, mapping[np.maximum(piece_codes, 0)], -1)
    return codes, pd.Index(uniques)
