"""The byte scan that lets a JSON body skip the per-object duplicate-key hook: it may say "proven"
only when no object has a key twice, and it should say so for ordinary bodies."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from serving.json_keys import MAX_DEPTH, MAX_KEYS, keys_proven_unique

KEY_CHARACTERS = 'abcAB_-. é€"\\/:{}[],'  # quotes, backslashes and brackets come out escaped or inside strings


def repeated_key(body: bytes) -> bool:
    """Whether any object in ``body`` gives a key twice, by Python's own parser."""
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({key for key, _ in items}) != len(items)
        return dict(items)

    json.loads(body, object_pairs_hook=pairs)
    return found


def document(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.random()
    if depth < 4 and kind < 0.35:
        keys = {"".join(rng.choice(KEY_CHARACTERS) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(0, 6))}
        return {key: document(rng, depth + 1) for key in keys}
    if depth < 4 and kind < 0.55:
        return [document(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return rng.choice([1, -2.5e-3, "text", 'a "quoted" {value}', "back\\slash", None, True, "ünï"])


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


@pytest.mark.parametrize("seed", range(3))
def test_a_body_proven_has_no_key_twice_and_ordinary_bodies_are_proven(seed: int) -> None:
    rng = random.Random(seed)
    proven = plain = injected = 0
    for _ in range(400):
        value, ascii_only = document(rng), rng.random() < 0.5
        text = json.dumps(value, ensure_ascii=ascii_only)
        body = text.encode()
        if keys_proven_unique(body):
            proven += 1
            assert not repeated_key(body), text
        if "\\" not in text:  # keys without escapes: an ordinary body must be proven
            plain += 1
            assert keys_proven_unique(body), text
        if objects := non_empty_objects(value):
            twice = with_a_key_twice(value, [0], rng.randint(1, objects), ascii_only).encode()
            assert repeated_key(twice) and not keys_proven_unique(twice), twice
            injected += 1
    assert proven >= plain > 100 and injected > 100


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
