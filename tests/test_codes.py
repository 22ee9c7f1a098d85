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
