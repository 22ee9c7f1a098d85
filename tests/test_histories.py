"""The column reading of the usual score request (serving.histories.plain_request) against the full
validation: what it accepts gives exactly the arrays the full way gives; everything else it leaves
to the full validation (None), which reports the problem with its path."""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serving.api import EARLIEST, LATEST, ScoreRequest
from serving.histories import Histories, histories_of, iso_times, plain_request


def body_of(*rows: dict[str, Any], **customer: Any) -> dict[str, Any]:
    return {"as_of": "1998-07-01", "customers": [{"customer_id": "a", "transactions": list(rows), **customer}]}


def assert_same(got: Histories | None, expected: Histories | None) -> None:
    assert (got is None) == (expected is None)
    if got is None or expected is None:
        return
    assert got.ids == expected.ids
    for name in ("code", "ts", "amount"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
        assert getattr(got, name).dtype == getattr(expected, name).dtype, name
    assert got.attributes == expected.attributes
    if expected.category is None:
        assert got.category is None
    else:
        assert got.category is not None and got.category_names is not None
        assert list(got.category_names[got.category]) == list(expected.category_names[expected.category])  # type: ignore[index]


ACCEPTED = [
    body_of({"timestamp": "1998-01-05", "amount": 29.97}),
    body_of({"timestamp": "1998-01-05T10:30", "amount": 3}, {"timestamp": "1998-01-05 10:30:07", "amount": -12}),
    body_of(
        {"timestamp": "2000-02-29T23:59:59.999999", "amount": 0.1},
        {"timestamp": "1998-01-05T10:30:00.5", "amount": 1e11},
        {"timestamp": "1900-01-01", "amount": -1e12},
        {"timestamp": "2100-12-31T23:59:59", "amount": 1e12},
    ),
    body_of(
        {"timestamp": "1998-01-05", "amount": 30.0, "category": "Rock"},
        {"timestamp": "1998-02-05", "amount": 7.5, "category": "NA"},  # the missing-value marker below
        {"timestamp": "1998-03-05", "amount": 7.5, "category": None},
        {"timestamp": "1998-04-05", "amount": 7.5},
        attributes={"opted_out": "Yes", "last_contacted": "1998-06-25", "tier": 3},
    ),
    {
        "dataset": "cdnow_sample",
        "customers": [
            {"customer_id": 7, "transactions": [{"timestamp": "1998-01-05", "amount": 1}]},
            {"customer_id": " b ", "attributes": {"do_not_contact": True}},
            {"customer_id": "c", "transactions": []},
        ],
    },
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_what_the_columns_accept_reads_as_the_full_validation_reads_it(body: dict[str, Any]) -> None:
    sent = copy.deepcopy(body)
    read = plain_request(body)
    assert read is not None
    skeleton, plain = read
    assert body == sent  # the body is not changed
    full = ScoreRequest.model_validate(body)
    assert skeleton.model_dump(exclude={"customers"}) == full.model_dump(exclude={"customers"})
    for reserved, with_categories in ((set(), True), (set(), False), ({"tier"}, True)):
        expected = histories_of(full, reserved, ["NA"], with_categories=with_categories)
        assert_same(plain.purchases.histories(skeleton, reserved, ["NA"], with_categories=with_categories), expected)
    assert plain.request() == full


LEFT_TO_THE_FULL_WAY = {
    "a zone": body_of({"timestamp": "1998-01-05T10:30:00+02:00", "amount": 1}),
    "UTC's Z": body_of({"timestamp": "1998-01-05T10:30:00Z", "amount": 1}),
    "no such day": body_of({"timestamp": "1998-02-30", "amount": 1}),
    "hour 24": body_of({"timestamp": "1998-01-05T24:00", "amount": 1}),
    "a 60th second": body_of({"timestamp": "1998-01-05T23:59:60", "amount": 1}),
    "seven decimals": body_of({"timestamp": "1998-01-05T10:30:00.1234567", "amount": 1}),
    "digits only": body_of({"timestamp": "19980105", "amount": 1}),
    "a year only": body_of({"timestamp": "1998", "amount": 1}),
    "a number": body_of({"timestamp": 883958400, "amount": 1}),
    "a NUL at the end": body_of({"timestamp": "1998-01-05\x00", "amount": 1}),
    "a blank at the end": body_of({"timestamp": "1998-01-05 ", "amount": 1}),
    "before 1900": body_of({"timestamp": "1899-12-31", "amount": 1}),
    "after 2100": body_of({"timestamp": "2101-01-01", "amount": 1}),
    "true as amount": body_of({"timestamp": "1998-01-05", "amount": True}),
    "text as amount": body_of({"timestamp": "1998-01-05", "amount": "12.5"}),
    "infinite amount": body_of({"timestamp": "1998-01-05", "amount": float("inf")}),
    "huge amount": body_of({"timestamp": "1998-01-05", "amount": 5e12}),
    "huge integer amount": body_of({"timestamp": "1998-01-05", "amount": 10**30}),
    "no amount": body_of({"timestamp": "1998-01-05"}),
    "an order id": body_of({"timestamp": "1998-01-05", "amount": 1, "order_id": "o1"}),
    "an unknown field": body_of({"timestamp": "1998-01-05", "amount": 1, "colour": "red"}),
    "a number as category": body_of({"timestamp": "1998-01-05", "amount": 1, "category": 5}),
    "a lone surrogate": body_of({"timestamp": "1998-01-05", "amount": 1, "category": "\ud800"}),
    "a long category": body_of({"timestamp": "1998-01-05", "amount": 1, "category": "x" * 1001}),
    "a row that is a list": body_of(["1998-01-05", 1]),  # type: ignore[arg-type]
    "events": body_of({"timestamp": "1998-01-05", "amount": 1}, events=[]),
    "an id twice": {"customers": [{"customer_id": "a"}, {"customer_id": "a"}]},
    "an attribute named amount": body_of(attributes={"amount": 3}),
    "no customers": {"customers": []},
    "not an object": [],
}


@pytest.mark.parametrize("name", LEFT_TO_THE_FULL_WAY)
def test_everything_else_is_left_to_the_full_validation(name: str) -> None:
    body = LEFT_TO_THE_FULL_WAY[name]
    assert plain_request(body) is None
    if name not in ("a zone", "UTC's Z", "seven decimals", "an order id", "events"):
        with pytest.raises(ValidationError):
            ScoreRequest.model_validate(body)


def test_categories_that_are_all_missing_value_markers_are_no_categories() -> None:
    """As the row checks see them: a request whose every category is the dataset's missing-value
    marker has no categories, on both ways in."""
    body = body_of({"timestamp": "1998-01-05", "amount": 3, "category": "NA"}, {"timestamp": "1998-02-05", "amount": 4})
    read = plain_request(body)
    assert read is not None
    for histories in (
        read[1].purchases.histories(read[0], set(), ["NA"]),
        histories_of(ScoreRequest.model_validate(body), set(), ["NA"]),
    ):
        assert histories is not None and histories.category is None and histories.category_names is None
    with_marker = read[1].purchases.histories(read[0], set(), [])  # not a marker there: a category
    assert with_marker is not None and with_marker.category_names is not None
    assert list(with_marker.category_names) == ["NA", "(none)"]


ISO_FORM = re.compile(r"\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d{1,6})?)?)?", re.ASCII)


def numpy_reading(stamps: list[str]) -> np.ndarray | None:
    """The reference: numpy's ``datetime64[us]`` reading of stamps in the accepted forms, within the
    API's range, as nanoseconds."""
    if not all(ISO_FORM.fullmatch(s) for s in stamps):
        return None
    try:
        values = np.array(stamps, dtype="datetime64[us]")
    except ValueError:
        return None
    if values.min() < np.datetime64(EARLIEST, "us") or values.max() > np.datetime64(LATEST, "us"):
        return None
    return values.astype(np.int64) * 1000


@st.composite
def stamps(draw: st.DrawFn) -> str:
    """Dates and times near every edge: month 0 and 13, day 0 and 32, 29 February in leap and other
    years, hour 24, a 60th minute and second, 1-7 decimals, the range's ends; sometimes a character
    replaced or the text cut short."""
    year = draw(st.sampled_from([1899, 1900, 1970, 1998, 2000, 2024, 2100, 2101]) | st.integers(1000, 9999))
    month = draw(st.sampled_from([0, 1, 2, 12, 13]) | st.integers(1, 12))
    day = draw(st.sampled_from([0, 1, 28, 29, 30, 31, 32]) | st.integers(1, 31))
    text = f"{year:04d}-{month:02d}-{day:02d}"
    parts = draw(st.integers(0, 3))
    if parts >= 1:
        hour, minute = draw(st.sampled_from([0, 23, 24]) | st.integers(0, 23)), draw(st.sampled_from([0, 59, 60]))
        text += draw(st.sampled_from("T ")) + f"{hour:02d}:{minute:02d}"
    if parts >= 2:
        text += f":{draw(st.sampled_from([0, 59, 60]) | st.integers(0, 59)):02d}"
    if parts >= 3:
        text += "." + draw(st.text(alphabet="0123456789", min_size=1, max_size=7))
    if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from("x-:T .Z+0\x00é")) + text[at + 1 :]
    if draw(st.integers(0, 15)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


@settings(max_examples=1500, deadline=None)
@given(st.lists(stamps(), min_size=1, max_size=3))
@example(["1998-02-29"]).via("no 29 February outside leap years")
@example(["2000-02-29"]).via("a century that is a leap year")
@example(["1900-02-29"]).via("a century that is not")
@example(["1998-11-31", "1998-04-30 23:59:59.999999"]).via("30-day months")
def test_the_compiled_stamp_reading_is_numpys(texts: list[str]) -> None:
    got, expected = iso_times(texts), numpy_reading(texts)
    assert (got is None) == (expected is None)
    if got is not None:
        np.testing.assert_array_equal(got, expected)
