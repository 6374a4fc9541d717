"""Per-user sequences, the vocabulary order and the leave-one-out splits (``tfrs_linear.data.sequences``)."""

import numpy as np
import pytest

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tfrs_linear.data import DataError, Interactions
from tests.data.common import tiny


def test_build_sequences_vocabulary_and_popularity():
    seq = data.build_sequences(tiny())
    # Training parts: a 5 7 9 5 | b 9 10 | d 7  -> 5:2, 7:2, 9:2, 10:1, 3:0.
    # Ties by string order: "5" < "7" < "9"; "3" only appears as a target.
    assert seq.vocab == ["[PAD]", "[OOV]", "5", "7", "9", "10", "3"]
    assert seq.num_items == 7
    assert seq.users == ["a", "b", "d"]
    assert [s.tolist() for s in seq.sequences] == [[2, 3, 4, 2, 5, 6], [4, 5, 4, 3], [3, 3, 6]]
    assert all(s.dtype == np.int32 for s in seq.sequences)
    assert seq.item_popularity.dtype == np.int64
    assert seq.item_popularity.tolist() == [0, 0, 2, 2, 2, 1, 0]
    assert seq.dropped_users == 1 and seq.dropped_interactions == 2
    assert "1" not in seq.vocab and "2" not in seq.vocab  # only in the dropped user c


def test_vocabulary_ties_use_string_order():
    inter = Interactions(
        ["u"] * 7, ["9", "10", "9", "10", "100", "x", "y"], np.arange(7.0), source="t"
    )
    seq = data.build_sequences(inter)
    # training part 9 10 9 10 100: 9:2, 10:2, 100:1; targets x, y have frequency 0.
    assert seq.vocab == ["[PAD]", "[OOV]", "10", "9", "100", "x", "y"]


def test_ties_in_time_keep_file_order():
    inter = Interactions(
        ["x", "x", "x", "x", "y", "y", "y"],
        ["b", "a", "c", "d", "a", "b", "c"],
        [5.0, 5.0, 1.0, 5.0, 2.0, 2.0, 2.0],
    )
    seq = data.build_sequences(inter)
    raw = [[seq.vocab[i] for i in s] for s in seq.sequences]
    assert raw == [["c", "b", "a", "d"], ["a", "b", "c"]]


def test_min_events_drops_and_counts():
    seq = data.build_sequences(tiny(), min_events=4)
    assert seq.users == ["a", "b"]
    assert seq.dropped_users == 2 and seq.dropped_interactions == 5
    with pytest.raises(ValueError, match="min_events"):
        data.build_sequences(tiny(), min_events=2)


def test_reserved_ids_rejected():
    inter = Interactions(["u"] * 3, ["a", "[OOV]", "b"], [1.0, 2.0, 3.0], source="t")
    with pytest.raises(DataError, match="reserved"):
        data.build_sequences(inter)


def test_leave_one_out():
    seq = data.build_sequences(tiny())
    assert [h.tolist() for h in seq.histories("valid")] == [[2, 3, 4, 2], [4, 5], [3]]
    assert [h.tolist() for h in seq.histories("train")] == [[2, 3, 4, 2], [4, 5], [3]]
    assert seq.targets("valid").tolist() == [5, 4, 3]
    assert [h.tolist() for h in seq.histories("test")] == [[2, 3, 4, 2, 5], [4, 5, 4], [3, 3]]
    assert seq.targets("test").tolist() == [6, 3, 6]
    assert seq.history(1, "test").tolist() == [4, 5, 4] and seq.target(1, "valid") == 4
    with pytest.raises(ValueError, match="split"):
        seq.targets("train")
