"""Helpers shared by the tests of ``tfrs_linear.data``."""

import numpy as np

from tfrs_linear.data import Interactions


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def as_lists(inter):
    return list(inter.users), list(inter.items), list(inter.timestamps)


def tiny():
    """Users a (6 events), b (4), d (3) and c (2: dropped), in shuffled file order."""
    events = [  # (user, item, time)
        ("b", "9", 10), ("a", "5", 1), ("c", "1", 1), ("a", "7", 2), ("d", "7", 5),
        ("a", "9", 3), ("b", "10", 11), ("a", "5", 4), ("c", "2", 2), ("d", "7", 6),
        ("a", "10", 5), ("b", "9", 12), ("a", "3", 6), ("b", "7", 13), ("d", "3", 7),
    ]
    rng = np.random.default_rng(3)
    events = [events[i] for i in rng.permutation(len(events))]
    users, items, times = zip(*events)
    return Interactions(list(users), list(items), np.array(times, float), source="tiny")


def assert_same(got, ref):
    """Two SequenceData hold the same users, sequences (int32), vocabulary, popularity and drops."""
    assert got.users == ref.users
    assert got.vocab == ref.vocab
    assert got.item_popularity.dtype == np.int64
    np.testing.assert_array_equal(got.item_popularity, ref.item_popularity)
    assert len(got.sequences) == len(ref.sequences)
    for g, r in zip(got.sequences, ref.sequences):
        assert g.dtype == np.int32
        np.testing.assert_array_equal(g, r)
    assert (got.dropped_users, got.dropped_interactions) == (ref.dropped_users, ref.dropped_interactions)
