"""xgboost's predictions for the few rows of an API request, without xgboost's cost per call.

``Booster.inplace_predict`` costs 0.2-0.5 ms per call on this project's machines whatever the number
of rows: its Python wrapper checks and converts the input and output, and the library builds a
context for every call (reading the cgroup's CPU quota, parsing the device name with a regular
expression). For one customer that is several times the arithmetic of 300 small trees, and 15% of
an API worker's time (docs/benchmarks.md). Here the same trees are walked in compiled code:

- the inputs are rounded to float32 as xgboost does; a missing value (NaN) goes the split's default
  way, any other value left when it is below the split's threshold;
- the leaf values are added in tree order to the base margin in float32, as xgboost's CPU predictor
  adds them; ``binary:logistic`` then takes xgboost's sigmoid (``1 / (expf(min(-x, 88.7)) + 1 + 1e-16)``
  in float32) and ``reg:tweedie`` ``expf``.

So the floats are xgboost's, bit for bit: a test compares both on real and random rows, missing
values and values on the thresholds included, and every forest is checked against xgboost on probe
rows when it is first used; a booster this module does not know how to walk (another objective,
categorical splits, dart, several outputs) or one whose probe differs is left to xgboost, as is any
batch larger than :data:`MAX_ROWS` (where xgboost's threads win) and any input with an infinity.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

log = logging.getLogger(__name__)

# Batches up to this many rows are walked here, larger ones by xgboost: per row the walk costs about
# twice xgboost's predictor, so xgboost's cost per call is made up at 30-60 rows (300 trees of depth
# 3-4, one thread; docs/benchmarks.md).
MAX_ROWS = 32

IDENTITY, SIGMOID, EXP = 0, 1, 2
_TRANSFORMS = {"reg:squarederror": IDENTITY, "binary:logistic": SIGMOID, "reg:tweedie": EXP}


@dataclass(frozen=True)
class Forest:
    """A booster's trees as flat arrays; tree ``t``'s nodes are ``start[t]`` .. ``start[t + 1] - 1``
    (children numbered within their tree; -1 at a leaf, whose value is in ``threshold``)."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    start: np.ndarray
    base_margin: np.float32
    transform: int
    features: int


@numba.njit(cache=True, nogil=True)
def _walk(
    x: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    default_left: np.ndarray,
    start: np.ndarray,
    base_margin: np.float32,
    transform: int,
) -> np.ndarray:  # pragma: no cover - compiled
    # numba types every number here float32 (as the arguments are), as xgboost computes: the sum in
    # float32, math.exp of a float32 in float32
    out = np.empty(x.shape[0], dtype=np.float32)
    for row in range(x.shape[0]):
        total = base_margin
        for tree in range(start.shape[0] - 1):
            offset = start[tree]
            node = 0
            while left[offset + node] != -1:
                at = offset + node
                value = np.float32(x[row, feature[at]])
                if math.isnan(value):
                    node = left[at] if default_left[at] else right[at]
                elif value < threshold[at]:
                    node = left[at]
                else:
                    node = right[at]
            total = np.float32(total + threshold[offset + node])
        if transform == SIGMOID:
            total = np.float32(1.0) / (math.exp(min(-total, np.float32(88.7))) + np.float32(1.0) + np.float32(1e-16))
        elif transform == EXP:
            total = np.float32(math.exp(total))
        out[row] = total
    return out


@numba.njit(cache=True, nogil=True)
def _base_margin(base_score: np.float32, transform: int) -> np.float32:  # pragma: no cover - compiled
    """xgboost's ``ProbToMargin`` of the base score, in float32: the log-odds for the sigmoid, the log
    for exp."""
    if transform == SIGMOID:
        return np.float32(-math.log(np.float32(1.0) / base_score - np.float32(1.0)))
    if transform == EXP:
        return np.float32(math.log(base_score))
    return base_score


def _forest(booster: Any) -> Forest | None:
    """The booster's trees, or None where this module does not walk them as xgboost does."""
    learner = json.loads(booster.save_raw("json"))["learner"]
    objective = learner["objective"]["name"]
    params = learner["learner_model_param"]
    gbm = learner["gradient_booster"]
    if objective not in _TRANSFORMS or gbm["name"] != "gbtree" or params.get("num_class", "0") not in ("0", "1"):
        return None
    if params.get("num_target", "1") != "1":
        return None
    base = json.loads(params["base_score"]) if params["base_score"].startswith("[") else [float(params["base_score"])]
    if len(base) != 1:
        return None
    trees = gbm["model"]["trees"]
    if not trees or any(
        any(tree["split_type"]) or tree["tree_param"].get("size_leaf_vector", "1") not in ("0", "1") for tree in trees
    ):
        return None
    transform = _TRANSFORMS[objective]
    return Forest(
        left=np.concatenate([np.asarray(t["left_children"], dtype=np.int32) for t in trees]),
        right=np.concatenate([np.asarray(t["right_children"], dtype=np.int32) for t in trees]),
        feature=np.concatenate([np.asarray(t["split_indices"], dtype=np.int32) for t in trees]),
        threshold=np.concatenate([np.asarray(t["split_conditions"], dtype=np.float32) for t in trees]),
        default_left=np.concatenate([np.asarray(t["default_left"], dtype=np.bool_) for t in trees]),
        start=np.cumsum([0, *(len(t["left_children"]) for t in trees)]).astype(np.int64),
        base_margin=np.float32(_base_margin(np.float32(base[0]), transform)),
        transform=transform,
        features=int(booster.num_features()),
    )


def walk(forest: Forest, x: np.ndarray) -> np.ndarray:
    """The forest's predictions for the rows of ``x`` (float32, as xgboost returns them)."""
    return _walk(
        np.ascontiguousarray(x, dtype=np.float64),
        forest.left,
        forest.right,
        forest.feature,
        forest.threshold,
        forest.default_left,
        forest.start,
        forest.base_margin,
        forest.transform,
    )


def _probe_rows(forest: Forest) -> np.ndarray:
    """Rows with each feature on some of its thresholds or just below them (where a walk that compared
    the other way, or in float64, would go wrong), one of zeros and one missing everywhere; the forest
    must give xgboost's floats on them before it is used."""
    rng = np.random.default_rng(0)
    inner = forest.left != -1
    rows = np.full((8, forest.features), np.nan)
    for column in range(forest.features):
        cuts = forest.threshold[inner & (forest.feature == column)]
        if len(cuts):
            picked = rng.choice(cuts, size=6).astype(np.float64)
            rows[:6, column] = np.where(rng.random(6) < 0.5, picked, np.nextafter(picked, -np.inf))
    rows[6] = 0.0
    return rows


_forests: weakref.WeakKeyDictionary[Any, Forest | None] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def forest_of(booster: Any) -> Forest | None:
    """The booster's :class:`Forest`, built once per booster and checked against xgboost on probe
    rows; None where xgboost must predict itself."""
    try:
        return _forests[booster]
    except KeyError:
        pass
    forest = _forest(booster)
    if forest is not None:
        probe = _probe_rows(forest)
        if not np.array_equal(walk(forest, probe), booster.inplace_predict(probe), equal_nan=True):
            log.warning("xgboost's predictions differ from the compiled walk of its trees: xgboost predicts")
            forest = None
    with _lock:
        _forests[booster] = forest
    return forest


def predict(booster: Any, x: np.ndarray) -> np.ndarray:
    """``booster.inplace_predict(x)`` for a 2-D array of features (NaN: missing): the same floats;
    walked here for a few rows, by xgboost otherwise."""
    if 0 < len(x) <= MAX_ROWS and x.ndim == 2:
        forest = forest_of(booster)
        if forest is not None and x.shape[1] == forest.features:
            with np.errstate(over="ignore"):
                rounded = x.astype(np.float32)
            if not np.isinf(rounded).any():
                return walk(forest, x)
    return booster.inplace_predict(x)
