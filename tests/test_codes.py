"""The two-thread factorisation must give exactly what pd.factorize gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import codes


@pytest.mark.parametrize("dtype", ["string", "str", object])
def test_same_codes_and_uniques_as_pandas(monkeypatch: pytest.MonkeyPatch, dtype: object) -> None:
    monkeypatch.setattr(codes, "PARALLEL_FROM_ROWS", 10)  # force the threaded path on small data
    rng = np.random.default_rng(0)
    values = pd.Series(rng.choice(["a", "b", "c", "d", None], size=1_001).tolist(), dtype=dtype)  # type: ignore[call-overload]
    expected_codes, expected_uniques = pd.factorize(values, use_na_sentinel=True)
    got_codes, got_uniques = codes.factorize(values)
    np.testing.assert_array_equal(got_codes, expected_codes)
    assert list(got_uniques) == list(expected_uniques)
    assert got_codes.dtype == np.int32


def _arrow_text(texts: list[str | None], chunk: int = 0, large: bool = True) -> pd.Series:
    """Arrow-backed text in chunks of ``chunk`` values (0: one chunk), the first chunk a slice of a
    longer array (a non-zero offset into its buffers)."""
    import pyarrow as pa

    kind = pa.large_string() if large else pa.string()
    spans = [texts[i : i + chunk] for i in range(0, len(texts), chunk)] if chunk else [texts]
    pieces = [pa.array(["ignored", *spans[0]], type=kind).slice(1), *(pa.array(s, type=kind) for s in spans[1:])]
    return pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array(pieces, type=kind)))


def _numeric_cases() -> dict[str, list[str | None]]:
    rng = np.random.default_rng(1)
    fixed = [f"C{n:07d}" for n in rng.integers(0, 500_000, 120_000)]
    plain = [str(n) for n in rng.integers(12_346, 18_288, 120_000)]
    return {"fixed width, prefix": fixed, "plain numbers": plain, "unicode prefix": [f"Kü-{t}" for t in plain]}


@pytest.mark.parametrize("case", list(_numeric_cases()))
@pytest.mark.parametrize(("chunk", "large"), [(0, True), (7_001, True), (50_000, False)])
def test_numeric_ids_are_coded_from_their_numbers_exactly_as_pandas_codes_their_text(
    case: str, chunk: int, large: bool
) -> None:
    """Ids that are one prefix and a number (the synthetic and most shops' ids) take the path that
    reads Arrow's buffers into integers, and give pd.factorize's codes and uniques, dtype included."""
    values = _arrow_text(_numeric_cases()[case], chunk, large)
    assert codes.numeric_keys(values) is not None  # the fast path, not the fallback
    expected_codes, expected_uniques = pd.factorize(values, use_na_sentinel=True)
    got_codes, got_uniques = codes.factorize(values)
    np.testing.assert_array_equal(got_codes, expected_codes)
    assert got_uniques.equals(pd.Index(expected_uniques)) and got_uniques.dtype == pd.Index(expected_uniques).dtype
    assert got_codes.dtype == np.int32
    as_str = values.astype("str")  # pandas 3's default text dtype, Arrow-backed with NaN for missing
    assert codes.numeric_keys(as_str) is not None
    np.testing.assert_array_equal(codes.factorize(as_str)[0], expected_codes)


def test_text_that_is_not_one_prefix_and_a_number_takes_the_general_path() -> None:
    """Where numbers would not stand for the text one-to-one (leading zeros in numbers of different
    widths), or the text is not a prefix and 1-18 digits, or a value is missing, or the numbers are
    too sparse for a table: no shortcut, and the codes are still pd.factorize's."""
    base = [f"C{n:07d}" for n in range(120_000)]
    cases = {
        "leading zeros, widths differ": ["07", "007", *map(str, range(1, 120_000))],
        "another prefix": [*base, "D0000001"],
        "a letter in the number": [*base, "C00000A1"],
        "a byte below '0' in the number": [*base, "C000-001", "C000/001"],
        "a space in the number": [*base, "C000 001"],
        "no number": [*base, "C"],
        "19 digits": [*base, "C" + "1" * 19],
        "a missing value": [*base, None],
        "sparse numbers": [str(n * 10**9) for n in range(1, 120_000)],
        "no digits at all": ["abc", *base],
    }
    for name, texts in cases.items():
        values = _arrow_text(texts, 40_000)
        if name != "sparse numbers":
            assert codes.numeric_keys(values) is None, name
        assert codes.numeric_factorize(values) is None, name
        expected_codes, expected_uniques = pd.factorize(values, use_na_sentinel=True)
        got_codes, got_uniques = codes.factorize(values)
        np.testing.assert_array_equal(got_codes, expected_codes, err_msg=name)
        assert list(got_uniques) == list(expected_uniques), name
    python_strings = pd.Series(base, dtype=object)
    assert codes.numeric_keys(python_strings) is None
