"""A fast proof that a JSON body has no object with a key twice, so that it can skip the slow check.

The API refuses an object that gives a key twice (a parser keeps one of them silently, and which one
the sender meant is unknowable). Python's ``json`` checks that through ``object_pairs_hook``, a Python
call per object: 42 ms for a 1,000-customer request of ~1 MB, against 24 ms for the parse alone
(docs/benchmarks.md). :func:`keys_proven_unique` scans the bytes once (numba, ~4 ms per MB) and says
True only when every object's keys are plain (no escapes), at most ``MAX_KEYS`` per object, nesting at
most ``MAX_DEPTH`` deep, and all different within each object. :func:`loads` parses a proven body
without the hook and anything else, including every body that does have a repeated key or is not
UTF-8 JSON, with it (:func:`unique_keys`); so the answer to any body is the same with or without the
scan.
"""

from __future__ import annotations

import json
from typing import Any

import numba
import numpy as np

MAX_KEYS = 32  # keys per object compared pairwise here; an object with more goes through the hook
MAX_DEPTH = 64  # the request models nest a few levels; deeper bodies go through the hook

_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPEN_OBJECT, _CLOSE_OBJECT, _OPEN_ARRAY, _CLOSE_ARRAY = ord("{"), ord("}"), ord("["), ord("]")


@numba.njit(cache=True, nogil=True)
def _scan(body: np.ndarray, max_keys: int, max_depth: int) -> bool:  # pragma: no cover - compiled
    n = len(body)
    is_object = np.zeros(max_depth + 1, dtype=np.bool_)
    expect_key = np.zeros(max_depth + 1, dtype=np.bool_)
    key_count = np.zeros(max_depth + 1, dtype=np.int64)
    key_start = np.zeros((max_depth + 1, max_keys), dtype=np.int64)
    key_end = np.zeros((max_depth + 1, max_keys), dtype=np.int64)
    depth = 0
    i = 0
    while i < n:
        c = body[i]
        if c == 0:
            return False  # UTF-16 or UTF-32 (json.loads accepts them): bytes are not characters here
        if c == _QUOTE:
            start = i + 1
            j = start
            escaped = False
            while j < n and body[j] != _QUOTE:
                if body[j] == _BACKSLASH:
                    escaped = True
                    j += 1
                j += 1
            if j >= n:
                return False  # unterminated: the parser words the error
            if depth > 0 and expect_key[depth]:  # only ever set inside an object
                expect_key[depth] = False
                if escaped or key_count[depth] == max_keys:
                    return False
                length = j - start
                for k in range(key_count[depth]):
                    other = key_start[depth, k]
                    if key_end[depth, k] - other == length:
                        same = True
                        for m in range(length):
                            if body[other + m] != body[start + m]:
                                same = False
                                break
                        if same:
                            return False
                key_start[depth, key_count[depth]] = start
                key_end[depth, key_count[depth]] = j
                key_count[depth] += 1
            i = j + 1
            continue
        if c in (_OPEN_OBJECT, _OPEN_ARRAY):
            depth += 1
            if depth > max_depth:
                return False
            is_object[depth] = c == _OPEN_OBJECT
            expect_key[depth] = c == _OPEN_OBJECT
            key_count[depth] = 0
        elif c in (_CLOSE_OBJECT, _CLOSE_ARRAY):
            depth -= 1
            if depth < 0:
                return False
        elif c == _COMMA and depth > 0 and is_object[depth]:  # in an array a comma leads to a value
            expect_key[depth] = True
        i += 1
    return True


def keys_proven_unique(body: bytes) -> bool:
    """True when no object in ``body`` can have a key twice (see the module docstring); False means
    "not proven", not "repeated"."""
    return bool(_scan(np.frombuffer(body, dtype=np.uint8), MAX_KEYS, MAX_DEPTH))


class RepeatedKeyError(ValueError):
    """An object in a JSON body gives ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the key {key!r} appears twice in one object")
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s ``object_pairs_hook`` that refuses an object with a key twice: a parser keeps one
    of them silently, and which one the sender meant is unknowable."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        raise RepeatedKeyError(next(key for key, _ in pairs if key in seen or seen.add(key)))  # type: ignore[func-returns-value]
    return found


def loads(body: bytes) -> Any:
    """``json.loads(body)`` that raises :class:`RepeatedKeyError` for an object with a key twice;
    other errors are ``json.loads``' own (``ValueError``, ``UnicodeDecodeError``, ``RecursionError``).
    The usual body is proven by the scan and parsed without a Python call per object."""
    if keys_proven_unique(body):
        return json.loads(body)
    return json.loads(body, object_pairs_hook=unique_keys)
