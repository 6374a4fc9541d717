"""Per-user sequences, the vocabulary order and the leave-one-out splits (``tfrs_linear.data.sequences``)."""

import numpy as np
import pytest

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tfrs_linear.data import DataError, Interactions
from tests.data.common import assert_same, tiny, write


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


# --- exact duplicates, the repeated-target warning, no user with enough events (issue 14) ---


def inter_file(tmp_path, name, events):
    """A RecBole .inter file of (user, item, time) rows, in the given order."""
    lines = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{i}\t{t}" for u, i, t in events]
    return write(tmp_path, name, "\n".join(lines) + "\n")


def tiny_events():
    t = tiny()
    return list(zip(t.users.tolist(), t.items.tolist(), t.timestamps.tolist()))


def test_doubled_file_makes_every_test_target_the_previous_item_unless_duplicates_are_dropped(tmp_path):
    rows = tiny_events()
    single = inter_file(tmp_path, "single.inter", rows)
    doubled = inter_file(tmp_path, "doubled.inter", rows + rows)  # every row written twice
    # The bug, reproduced with duplicates kept: each test target is the last history item.
    kept = data.load_dataset(doubled, keep_duplicates=True)
    assert kept.dropped_duplicates == 0 and kept.num_interactions == 2 * 15
    assert kept.users == ["a", "b", "c", "d"]  # c's 2 events, doubled, pass min_events too
    for user in range(kept.num_users):
        assert kept.target(user, "test") == int(kept.history(user, "test")[-1])
    assert kept.repeated_target_share("test") == 1.0
    assert "warning: 100% of the test targets equal the item just before them" in kept.describe()
    # The default drops them (all but the first of every user/item/time) and counts them.
    got = data.load_dataset(doubled)
    ref = data.load_dataset(single)
    assert_same(got, ref)
    assert got.dropped_duplicates == len(rows) and ref.dropped_duplicates == 0
    assert "15 exact duplicate events" in got.describe()
    assert got.repeated_target_share("test") == 0.0  # d's validation target 7 follows a 7
    assert got.repeated_target_share("valid") == ref.repeated_target_share("valid") == 1 / 3


def test_duplicates_keep_the_first_occurrence_and_count_before_min_events():
    inter = Interactions(
        ["x", "x", "x", "x", "y", "y", "y", "y"],
        ["a", "b", "a", "c", "p", "q", "p", "q"],
        [1.0, 1.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0],  # x: a@1 twice; y: p@1, q@2 twice each
        source="t",
    )
    seq = data.build_sequences(inter)
    assert seq.users == ["x"]
    assert [[seq.vocab[i] for i in s] for s in seq.sequences] == [["a", "b", "c"]]  # not b, a
    assert seq.dropped_duplicates == 3
    assert (seq.dropped_users, seq.dropped_interactions) == (1, 2)  # y: 2 distinct events
    both = data.build_sequences(inter, keep_duplicates=True)
    assert [[both.vocab[i] for i in s] for s in both.sequences] == [list("abac"), list("ppqq")]
    assert both.dropped_duplicates == 0
    # Same item at another time, or another user, is not a duplicate; -0.0 and 0.0 are.
    inter = Interactions(["u", "u", "v", "u", "u"], ["a", "a", "a", "b", "b"],
                         [1.0, 2.0, 1.0, 0.0, -0.0], source="t")
    assert data.build_sequences(inter).dropped_duplicates == 1


def test_repeated_target_share_and_warning_threshold():
    # Sequences (raw): u: a b b (test target b = previous), v: c c d (valid target c = previous),
    # w: e f g, z: h i j.
    users = ["u"] * 3 + ["v"] * 3 + ["w"] * 3 + ["z"] * 3
    items = list("abbccdefghij")
    seq = data.build_sequences(Interactions(users, items, np.tile([1.0, 2.0, 3.0], 4), source="t"))
    assert seq.repeated_target_share("test") == 0.25
    assert seq.repeated_target_share("valid") == 0.25
    assert seq.warning() is None  # 25% is not above REPEATED_TARGET_WARNING
    assert data.sequences.REPEATED_TARGET_WARNING == 0.25
    users, items = users + ["y"] * 3, items + list("kll")
    seq = data.build_sequences(Interactions(users, items, np.tile([1.0, 2.0, 3.0], 5), source="t"))
    assert seq.repeated_target_share("test") == 0.4
    assert seq.warning().startswith(
        "warning: 40% of the test targets equal the item just before them (validation 20%, test 40%)")
    with pytest.raises(ValueError, match="split"):
        seq.repeated_target_share("train")


def test_no_user_with_enough_events_is_a_data_error_saying_so(tmp_path):
    path = inter_file(tmp_path, "short.inter", [("a", "1", 1), ("a", "2", 2), ("b", "1", 1),
                                                ("b", "3", 2), ("b", "3", 2)])
    with pytest.raises(DataError) as info:
        data.load_dataset(path)
    assert str(info.value) == (
        f"{path}: no user has 3 or more events (2 users, 5 events read, 1 exact duplicates "
        "dropped); leave-one-out needs a training event, a validation and a test target per user")
    with pytest.raises(DataError, match=r"no user has 4 or more events \(1 users, 3 events read\)"):
        data.build_sequences(Interactions(["a"] * 3, ["1", "2", "3"], [1.0, 2.0, 3.0], source="s"),
                             min_events=4)
