"""The tf.data pipelines and left padding of ``tfrs_linear.data.datasets``, against hand-computed windows."""

import numpy as np
import pytest

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tests.data.common import tiny


# ---------------------------------------------------------------------------- padding


def test_pad_left_keeps_newest():
    out = data.pad_left([np.array([1, 2, 3, 4, 5]), np.array([7]), np.array([], np.int32)], 3)
    assert out.dtype == np.int32
    assert out.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0]]
    assert data.pad_left([], 2).shape == (0, 2)


# ------------------------------------------------------------------------- pipelines


def batches(ds):
    return [{k: v.numpy().tolist() for k, v in b.items()} for b in ds]


def test_training_all_regime_exact():
    seq = data.build_sequences(tiny())
    ex = data.training_examples(seq, 3, "all")
    assert ex["inputs"].tolist() == [[2, 3, 4], [0, 0, 4]]
    assert ex["targets"].tolist() == [[3, 4, 2], [0, 0, 5]]
    # max_len 2: a's 3 pairs become the newest window and an older one of length 1.
    ds = data.training_dataset(seq, 2, 3, regime="all", shuffle=False)
    assert batches(ds) == [
        {"inputs": [[3, 4], [0, 2], [0, 4]], "targets": [[4, 2], [0, 3], [0, 5]],
         "offsets": [1, 0, 0]}  # [3, 4] starts at a's second event
    ]
    ds = data.training_dataset(seq, 2, 2, regime="all", shuffle=False)
    assert ds.element_spec["inputs"].shape.as_list() == [2, 2]
    assert len(batches(ds)) == 1  # the third example is dropped with drop_remainder
    ds = data.training_dataset(seq, 2, 2, regime="all", shuffle=False, drop_remainder=False)
    assert batches(ds)[1] == {"inputs": [[0, 4]], "targets": [[0, 5]], "offsets": [0]}


def test_training_last_regime_exact():
    seq = data.build_sequences(tiny())
    ds = data.training_dataset(seq, 2, 4, regime="last", shuffle=False)
    assert ds.element_spec["targets"].shape.as_list() == [4]
    assert batches(ds) == [
        {"inputs": [[0, 2], [2, 3], [3, 4], [0, 4]], "targets": [3, 4, 2, 5],
         "offsets": [0, 0, 1, 0]}
    ]
    assert data.num_training_examples(seq, 2, "last") == 4
    assert data.num_training_examples(seq, 2, "all") == 3


def test_training_shuffle_is_a_seeded_permutation():
    seqs = [np.arange(2, 40, dtype=np.int32) for _ in range(3)]
    seq = data.SequenceData(["a", "b", "c"], seqs, ["[PAD]", "[OOV]"] + [str(i) for i in range(2, 40)],
                            np.zeros(40, np.int64))
    plain = data.training_examples(seq, 5, "last")
    one = batches(data.training_dataset(seq, 5, 7, regime="last", seed=1))
    two = batches(data.training_dataset(seq, 5, 7, regime="last", seed=1))
    assert one == two
    got = sorted(zip(sum((b["targets"] for b in one), []), map(tuple, sum((b["inputs"] for b in one), []))))
    want = sorted(zip(plain["targets"].tolist(), map(tuple, plain["inputs"].tolist())))
    assert len(got) == 7 * (len(want) // 7)
    assert set(got) <= set(want)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        data.training_dataset(seq, 5, 1000)


def test_evaluation_batches_pad_the_last_batch():
    seq = data.build_sequences(tiny())
    ds = data.evaluation_batches(seq, "test", 2, 2)
    assert ds.element_spec["history"].shape.as_list() == [2, 4]
    assert batches(ds) == [
        {"inputs": [[2, 5], [5, 4]], "targets": [6, 3], "weights": [1.0, 1.0],
         "history": [[2, 3, 4, 5], [0, 0, 4, 5]], "user_index": [0, 1], "offsets": [3, 1]},
        {"inputs": [[3, 3], [0, 0]], "targets": [6, 0], "weights": [1.0, 0.0],
         "history": [[0, 0, 0, 3], [0, 0, 0, 0]], "user_index": [2, 0], "offsets": [0, 0]},
    ]
    valid = batches(data.evaluation_batches(seq, "valid", 3, 8))
    assert len(valid) == 1 and len(valid[0]["targets"]) == 8
    assert valid[0]["inputs"][:3] == [[3, 4, 2], [0, 4, 5], [0, 0, 3]]
    assert valid[0]["targets"] == [5, 4, 3, 0, 0, 0, 0, 0]
    assert valid[0]["weights"] == [1.0] * 3 + [0.0] * 5


def test_training_examples_match_a_naive_implementation():
    rng = np.random.default_rng(7)
    seqs = [rng.integers(2, 30, size=n).astype(np.int32) for n in (3, 4, 5, 9, 12, 13, 30)]
    seq = data.SequenceData([str(i) for i in range(len(seqs))], seqs,
                            ["[PAD]", "[OOV]"] + [str(i) for i in range(2, 30)], np.zeros(30, np.int64))
    m = 4

    def padded(x):
        x = list(x)[-m:]
        return [0] * (m - len(x)) + x

    want_all, want_last = [], []
    for s in seqs:
        h = list(s[:-2])
        end = len(h) - 1  # pairs (h[p], h[p + 1]) for p < end, windows from the newest
        while end > 0:
            start = max(0, end - m)
            want_all.append((padded(h[start:end]), padded(h[start + 1:end + 1]), start))
            end = start
        for j in range(1, len(h)):
            want_last.append((padded(h[:j]), h[j], max(j - m, 0)))
    got = data.training_examples(seq, m, "all")
    assert list(zip(got["inputs"].tolist(), got["targets"].tolist(),
                    got["offsets"].tolist())) == want_all
    got = data.training_examples(seq, m, "last")
    assert list(zip(got["inputs"].tolist(), got["targets"].tolist(),
                    got["offsets"].tolist())) == want_last
    want_last = [w[:2] for w in want_last]
    ds = data.training_dataset(seq, m, len(want_last), regime="last", shuffle=False)
    (only,) = batches(ds)
    assert list(zip(only["inputs"], only["targets"])) == want_last
