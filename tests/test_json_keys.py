"""The byte scan that lets a JSON body skip the per-object duplicate-key hook: it may say "proven"
only when the hook would find no object with a key twice, and it should say so for ordinary bodies;
``loads`` answers every body as the hooked parse does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.json_keys import MAX_DEPTH, MAX_KEYS, RepeatedKeyError, keys_proven_unique, loads, unique_keys

# keys with quotes, backslashes, brackets and non-ASCII (written escaped or not), values of every kind
KEYS = st.text(alphabet='abcAB_-. é€"\\/:{}[],', max_size=4)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=40,
)


def hooked(body: bytes) -> Any:
    """What the API answered before the scan: Python's parser with the duplicate-key hook."""
    try:
        return json.loads(body, object_pairs_hook=unique_keys)
    except RepeatedKeyError as exc:
        return ("repeated", exc.key)


def repeated_key(body: bytes) -> bool:
    return isinstance(answer := hooked(body), tuple) and answer[0] == "repeated"


def loaded(body: bytes) -> Any:
    try:
        return loads(body)
    except RepeatedKeyError as exc:
        return ("repeated", exc.key)


def with_a_key_twice(value: Any, objects: list[int], chosen: int, ascii_only: bool) -> str:
    """``value`` as JSON text where the ``chosen``-th non-empty object (in writing order) ends with
    its first key given again (``objects`` counts them as they are written)."""
    if isinstance(value, dict):
        members = [
            f"{json.dumps(k, ensure_ascii=ascii_only)}: {with_a_key_twice(v, objects, chosen, ascii_only)}"
            for k, v in value.items()
        ]
        if value:
            objects[0] += 1
            if objects[0] == chosen:
                members.append(f"{json.dumps(next(iter(value)), ensure_ascii=ascii_only)}: 0")
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(with_a_key_twice(v, objects, chosen, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def non_empty_objects(value: Any) -> int:
    if isinstance(value, dict):
        return (1 if value else 0) + sum(non_empty_objects(v) for v in value.values())
    if isinstance(value, list):
        return sum(non_empty_objects(v) for v in value)
    return 0


@settings(max_examples=400, deadline=None)
@given(VALUES, st.booleans(), st.data())
def test_a_body_proven_has_no_key_twice_and_ordinary_bodies_are_proven(
    value: Any, ascii_only: bool, data: st.DataObject
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    body = text.encode()
    if keys_proven_unique(body):
        assert not repeated_key(body)
    assert loaded(body) == hooked(body)
    if "\\" not in text:  # no escapes anywhere: an ordinary body must be proven, or the scan is useless
        assert keys_proven_unique(body)
    if objects := non_empty_objects(value):
        twice = with_a_key_twice(value, [0], data.draw(st.integers(1, objects)), ascii_only).encode()
        assert repeated_key(twice) and not keys_proven_unique(twice)
        assert loaded(twice) == hooked(twice)


@pytest.mark.parametrize(
    ("body", "proven"),
    [
        (b'{"a": 1, "a": 2}', False),
        (b'{"a": {"a": 1}, "b": 1}', True),  # the same key in two objects
        (b'{"a": 1, "b": {"c": 1}, "a": 2}', False),  # after a nested object, the outer keys still count
        (b'[{"a": 1}, {"a": 1}]', True),
        (b'{"ab": 1, "a\\u0062": 2}', False),  # an escape in a key: not compared here, the hook decides
        (b'{"k": "x\\"y", "k2": {"k": "}"}}', True),  # quotes and brackets inside values
        (b'{"\xc3\xa9": 1, "e": 2}', True),
        ('{"a": 1}'.encode("utf-16"), False),  # json.loads reads UTF-16 too: not scanned
        (b'{"a": 1', True),  # no key twice (the parser then refuses the body)
        (b'{"a', False),
        (b"}}", False),
        (b'{"": 1, "": 2}', False),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), False),
        (json.dumps({f"k{i}": i for i in range(MAX_KEYS)}).encode(), True),
        (json.dumps({f"k{i}": i for i in range(MAX_KEYS + 1)}).encode(), False),
    ],
)
def test_cases(body: bytes, proven: bool) -> None:
    assert keys_proven_unique(body) is proven


def test_loads_names_the_repeated_key_and_leaves_other_errors_to_json() -> None:
    with pytest.raises(RepeatedKeyError) as raised:
        loads(b'{"x": [{"ab": 1, "a\\u0062": 2}]}')
    assert raised.value.key == "ab"
    with pytest.raises(json.JSONDecodeError):
        loads(b'{"a": 1')
    assert loads('{"é": [1, {"a": null}]}'.encode("utf-16")) == {"é": [1, {"a": None}]}
