"""Integer codes for a large text column, using both cores.

Factorising ten million customer-id strings is the most expensive single step of a feature run.
Arrow's dictionary encoding (what ``pd.factorize`` uses for Arrow-backed text) releases the GIL, so
the column is factorised in two halves on two threads and the halves' distinct values are merged.
The result is identical to ``pd.factorize``: codes in order of first appearance, -1 for missing.

Most shops' ids are numbers written as text, often behind a fixed prefix ("C0150051", "17850"). Such
a column is read straight from Arrow's buffers in one compiled pass into integers (the mapping is
one-to-one: same prefix, and either the same width or no leading zeros), and the integers are coded
through a table indexed by value: no string is hashed. Anything else takes the general path.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pandas as pd
import pyarrow as pa

PARALLEL_FROM_ROWS = 1_000_000
NUMERIC_FROM_ROWS = 100_000  # below this the general path is as quick and compiles nothing
MAX_DIGITS = 18  # int64 holds every 18-digit number


def factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """``pd.factorize(values)`` as int32 codes and an Index of the distinct values."""
    if len(values) >= NUMERIC_FROM_ROWS and (numeric := numeric_factorize(values)) is not None:
        return numeric
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


def numeric_factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index] | None:
    """:func:`factorize` of Arrow-backed text whose every value is one prefix followed by 1-18 digits,
    the same width or without leading zeros, and whose numbers span at most a few times the row count;
    None for anything else (missing values included), which then takes the general path."""
    keys = numeric_keys(values)
    if keys is None or len(keys) == 0:
        return None
    low, high = int(keys.min()), int(keys.max())
    if high - low >= max(4 * len(keys), 1 << 20):
        return None  # sparse numbers: a table indexed by value would be mostly empty
    codes, first = _first_appearance(keys, low, high - low + 1)
    return codes, pd.Index(values.array.take(first))


def numeric_keys(values: pd.Series) -> np.ndarray | None:
    """Each value's number when the column qualifies for :func:`numeric_factorize`, else None."""
    dtype = values.dtype
    arrow_text = (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow") or (
        isinstance(dtype, pd.ArrowDtype)
        and (pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(dtype.pyarrow_dtype))
    )
    if not arrow_text:
        return None  # Python strings would have to be converted first: the general path is as quick
    column = values.array.__arrow_array__()  # the Arrow data itself (pyarrow's protocol), no copy
    chunks = [c for c in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]) if len(c)]
    if not chunks or any(c.null_count for c in chunks):
        return None
    first = chunks[0][0].as_py()
    digits = len(first) - len(first.rstrip("0123456789"))
    if digits == 0:
        return None
    prefix = np.frombuffer(first[: len(first) - digits].encode(), dtype=np.uint8)
    keys = np.empty(len(values), dtype=np.int64)
    # [width of the first value's number, the widths differ (0/1), a leading zero was seen (0/1)]
    state = np.array([digits, 0, 0], dtype=np.int64)
    offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32  # every chunk's type
    start = 0
    for chunk in chunks:
        _, offsets_buffer, data_buffer = chunk.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=offset_type, count=chunk.offset + len(chunk) + 1)[chunk.offset :]
        data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
        if not _parse_numbers(offsets, data, prefix, keys[start : start + len(chunk)], state):
            return None
        start += len(chunk)
    if state[1] and state[2]:
        return None  # "007" and "07" would be one number
    return keys


@numba.njit(cache=True, nogil=True)
def _parse_numbers(
    offsets: np.ndarray, data: np.ndarray, prefix: np.ndarray, out: np.ndarray, state: np.ndarray
) -> bool:
    """The number after ``prefix`` in each string, into ``out``; False at the first string that is not
    the prefix followed by 1-18 ASCII digits. ``state`` collects whether widths differ and whether a
    number has a leading zero."""
    p = len(prefix)
    for i in range(len(out)):
        begin, end = offsets[i], offsets[i + 1]
        width = end - begin - p
        if width < 1 or width > MAX_DIGITS:
            return False
        for j in range(p):
            if data[begin + j] != prefix[j]:
                return False
        number = np.int64(0)
        for j in range(begin + p, end):
            digit = np.int64(data[j]) - 48  # numba would compute uint8 - 48 in int64 anyway: say so
            if digit < 0 or digit > 9:
                return False
            number = number * 10 + digit
        out[i] = number
        if width != state[0]:
            state[1] = 1
        if width > 1 and data[begin + p] == 48:
            state[2] = 1
    return True


@numba.njit(cache=True, nogil=True)
def _first_appearance(keys: np.ndarray, low: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes in order of first appearance of each key (a table indexed by ``key - low``), and the row
    where each code first appears."""
    table = np.full(size, -1, dtype=np.int32)
    codes = np.empty(len(keys), dtype=np.int32)
    first = np.empty(len(keys), dtype=np.int64)
    count = 0
    for i in range(len(keys)):
        slot = keys[i] - low
        code = table[slot]
        if code < 0:
            code = count
            table[slot] = code
            first[code] = i
            count += 1
        codes[i] = code
    return codes, first[:count]
