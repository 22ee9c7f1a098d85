"""The API's answers are encoded by pydantic-core (serving.api.FastJSONResponse): the same JSON as
Starlette's JSONResponse once parsed, and a value JSON cannot hold is refused as before."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fastapi.responses import JSONResponse

from serving.api import FastJSONResponse


def test_same_json_as_json_dumps() -> None:
    rng = np.random.default_rng(0)
    floats = [
        *rng.gamma(0.3, 50.0, 500).tolist(),
        *rng.random(200).tolist(),
        0.0,
        -0.0,
        1e-05,
        1e16,
        2.5e-300,
        1.7976931348623157e308,
        0.1 + 0.2,
        123456789.123456789,
    ]
    content = {
        "dataset": "cdnow",
        "customers": [
            {"customer_id": f"c-{i}", "clv": v, "tier": "A", "suppressed": i % 2 == 0, "reason": None, "n": i}
            for i, v in enumerate(floats)
        ],
        "text": 'quotes " and \\ backslashes, ünïcödé, emoji \U0001f600, control \x01',
        "models": {"churn": "3"},
    }
    fast = FastJSONResponse(content).body
    slow = JSONResponse(content).body
    assert json.loads(fast) == json.loads(slow)
    assert list(json.loads(fast)["customers"][0]) == ["customer_id", "clv", "tier", "suppressed", "reason", "n"]
    parsed = [c["clv"] for c in json.loads(fast)["customers"]]
    assert all(a == b and math.copysign(1, a) == math.copysign(1, b) for a, b in zip(parsed, floats, strict=True))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.int64(3), object()])
def test_values_json_cannot_hold_are_refused_as_before(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        JSONResponse({"value": bad})
    with pytest.raises((ValueError, TypeError)):
        FastJSONResponse({"value": bad})


def test_text_naming_nan_is_still_text() -> None:
    content = {"customer_id": "NaN", "segment": "Infinity and beyond"}
    assert json.loads(FastJSONResponse(content).body) == content
