"""Warning filters changed on two threads at once leave the process's filters as they were."""

from __future__ import annotations

import threading
import warnings

import numpy as np

from features.quiet import held_warnings
from training.candidates import ClipToRange


def test_blocks_on_two_threads_that_would_overlap_leave_the_filters_as_they_were() -> None:
    """The first block gives the second half a second to start inside it, then ends before it; two
    overlapping ``catch_warnings`` blocks would leave the second one's ``ignore`` behind for good."""
    before = list(warnings.filters)
    first_inside, second_inside, first_done = threading.Event(), threading.Event(), threading.Event()
    overlapped = []

    def first() -> None:
        with held_warnings():
            warnings.simplefilter("ignore")
            first_inside.set()
            overlapped.append(second_inside.wait(0.5))
        first_done.set()

    def second() -> None:
        with held_warnings():
            warnings.simplefilter("ignore")
            second_inside.set()
            first_done.wait(5)

    one = threading.Thread(target=first)
    one.start()
    assert first_inside.wait(10)
    two = threading.Thread(target=second)
    two.start()
    one.join(10)
    two.join(10)
    assert overlapped == [False]
    assert warnings.filters == before


def test_held_blocks_nest_on_one_thread() -> None:
    before = list(warnings.filters)
    with held_warnings():
        warnings.simplefilter("error", UserWarning)
        with held_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.warn("quiet", UserWarning, stacklevel=1)
    assert warnings.filters == before


def test_clip_to_range_leaves_an_all_missing_column_unclipped_without_a_warning() -> None:
    train = np.array([[1.0, np.nan, np.inf], [3.0, np.nan, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip = ClipToRange().fit(train)
    assert clip.low_.tolist() == [1.0, -np.inf, 2.0] and clip.high_.tolist() == [3.0, np.inf, 2.0]
    out = clip.transform(np.array([[0.0, 7.0, 5.0], [np.nan, -7.0, np.nan]]))
    np.testing.assert_array_equal(out, [[1.0, 7.0, 2.0], [np.nan, -7.0, np.nan]])
