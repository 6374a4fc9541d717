"""Length buckets (``tfrs_linear.data.buckets``): each batch cut to the narrowest width
that holds it; the same batches by default, or the same rows per epoch regrouped by
length (``window > 1``), fixed by the seed."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tfrs_linear.data import synthetic
from tests.data.common import tiny

MAX_LEN, BATCH = 16, 4


@pytest.fixture(scope="module")
def sequences():
    # Lengths 3..40: short rows, rows of every bucket, and histories cut into windows.
    rows = synthetic.generate(num_users=48, num_items=30, num_interests=4, median_length=10,
                              min_length=3, max_length=40, seed=5)
    return data.build_sequences(rows)


def _rows(batches):
    """Every row of ``batches`` as a hashable tuple, re-padded on the left to MAX_LEN."""
    out = []
    for b in batches:
        width = b["inputs"].shape[1]
        pad = np.zeros([b["inputs"].shape[0], MAX_LEN - width], np.int32)
        inputs = np.concatenate([pad, b["inputs"].numpy()], axis=1)
        targets = b["targets"].numpy()
        if targets.ndim == 2:
            targets = np.concatenate([pad, targets], axis=1)
        for i in range(len(inputs)):
            out.append((tuple(inputs[i]), tuple(np.atleast_1d(targets[i])),
                        int(b["offsets"][i])))
    return out


def _lengths(inputs):
    return (np.asarray(inputs) != 0).sum(axis=1)


@pytest.mark.parametrize("max_len, buckets, widths", [
    (200, 4, [50, 100, 150, 200]),
    (10, 3, [4, 7, 10]),
    (3, 8, [1, 2, 3]),  # more buckets than widths: each width once
    (7, 1, [7]),
])
def test_bucket_widths(max_len, buckets, widths):
    assert data.bucket_widths(max_len, buckets) == widths


@pytest.mark.parametrize("max_len, buckets", [(0, 4), (10, 0), (10, -1)])
def test_bucket_widths_refuse_what_is_not_positive(max_len, buckets):
    with pytest.raises(ValueError, match=f"max_len={max_len} and buckets={buckets}"):
        data.bucket_widths(max_len, buckets)


@pytest.mark.parametrize("regime", ["all", "last"])
def test_an_epoch_holds_the_same_rows_in_as_many_batches(sequences, regime):
    # Not reshuffled between the two passes below.
    plain = data.training_dataset(sequences, MAX_LEN, BATCH, regime=regime, shuffle=False)
    bucketed = list(data.length_bucketed(plain, MAX_LEN, 4, seed=3, window=3))
    plain = list(plain)
    assert len(bucketed) == len(plain) > 6
    assert all(b["inputs"].shape[0] == BATCH for b in bucketed)
    assert collections.Counter(_rows(bucketed)) == collections.Counter(_rows(plain))


def test_each_batch_is_cut_to_the_narrowest_width_that_holds_it(sequences):
    widths = data.bucket_widths(MAX_LEN, 4)  # [4, 8, 12, 16]
    plain = data.training_dataset(sequences, MAX_LEN, BATCH, seed=2)
    seen = set()
    for b in data.length_bucketed(plain, MAX_LEN, 4, seed=1):
        width = b["inputs"].shape[1]
        longest = _lengths(b["inputs"]).max()
        assert width in widths and longest <= width
        assert width == min(w for w in widths if w >= longest)
        assert b["targets"].shape == b["inputs"].shape
        # What was cut is padding: each target sits under its input, as before.
        assert np.array_equal(b["inputs"].numpy() != 0, b["targets"].numpy() != 0)
        seen.add(width)
    assert len(seen) >= 3  # the data has rows of most buckets


def test_rows_are_grouped_by_bucket_within_a_window(sequences):
    widths = np.asarray(data.bucket_widths(MAX_LEN, 4))
    plain = data.training_dataset(sequences, MAX_LEN, BATCH, seed=4)
    window = 4
    batches = list(data.length_bucketed(plain, MAX_LEN, 4, seed=9, window=window))
    mixed_per_window = []
    for start in range(0, len(batches), window):
        extra = 0
        for b in batches[start:start + window]:
            buckets = np.searchsorted(widths, _lengths(b["inputs"]))
            extra += len(set(buckets.tolist())) - 1
        mixed_per_window.append(extra)
    # Sorted by bucket, a window's batches straddle at most (buckets - 1) boundaries;
    # shuffled, 4 random rows of this data would straddle far more.
    assert max(mixed_per_window) <= 3
    shuffled = [len(set(np.searchsorted(widths, _lengths(b["inputs"])).tolist())) - 1
                for b in plain]
    assert sum(shuffled) > sum(mixed_per_window)


def test_the_seed_fixes_the_batches(sequences):
    plain = data.training_dataset(sequences, MAX_LEN, BATCH, shuffle=False)

    def run(seed):
        return [{k: v.numpy().tolist() for k, v in b.items()}
                for b in data.length_bucketed(plain, MAX_LEN, 4, seed=seed, window=4)]

    assert run(tf.constant(5, tf.int64)) == run(5)
    assert run(5) != run(6)  # the batches' order within a window follows the seed


def test_by_default_every_batch_keeps_its_rows_and_is_only_cut(sequences):
    plain = list(data.training_dataset(sequences, MAX_LEN, BATCH, shuffle=False))
    cut = list(data.length_bucketed(
        data.training_dataset(sequences, MAX_LEN, BATCH, shuffle=False), MAX_LEN, 4, seed=0))
    assert len(cut) == len(plain)
    narrower = 0
    for a, b in zip(plain, cut):
        width = b["inputs"].shape[1]
        narrower += width < MAX_LEN
        assert np.array_equal(a["inputs"][:, MAX_LEN - width:], b["inputs"])
        assert np.array_equal(a["targets"][:, MAX_LEN - width:], b["targets"])
        assert np.array_equal(a["offsets"], b["offsets"])
        assert not np.any(a["inputs"][:, :MAX_LEN - width])  # only padding was cut
    assert narrower >= 2


def test_one_bucket_is_the_pipeline_itself(sequences):
    plain = data.training_dataset(sequences, MAX_LEN, BATCH, seed=6)
    assert data.length_bucketed(plain, MAX_LEN, 1, seed=0) is plain
    with pytest.raises(ValueError, match="window must be >= 1"):
        data.length_bucketed(plain, MAX_LEN, 4, seed=0, window=0)


def test_targets_per_example_counts_the_windows_targets():
    seq = data.build_sequences(tiny())  # training pairs: a 3, b 1, d 0
    assert data.targets_per_example(seq, 3) == 4 / 2  # a: one window of 3; b: one of 1
    assert data.targets_per_example(seq, 2) == 4 / 3  # a: windows of 2 and 1
    assert data.targets_per_example(seq, 2, "last") == 1.0
    with pytest.raises(ValueError, match="regime"):
        data.targets_per_example(seq, 2, "first")


def test_targets_per_example_is_the_mean_of_the_pipelines_examples(sequences):
    for max_len in (5, MAX_LEN):
        examples = data.training_examples(sequences, max_len)
        assert data.targets_per_example(sequences, max_len) == pytest.approx(
            (examples["targets"] != 0).sum(axis=1).mean(), rel=1e-12)
