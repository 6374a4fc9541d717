"""Ranks, metrics and protocols of ``tfrs_linear.evaluation`` against hand-computed values."""

import numpy as np
import pytest

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
import tensorflow as tf
from tfrs_linear import data, evaluation as ev

# Columns 0 and 1 (padding, OOV) score highest on purpose: they must never compete.
SCORES = np.array([[9.0, 8.0, 0.9, 0.5, 0.3, 0.7]], dtype=np.float32)


def test_rank_counts_strictly_higher_items_only_in_the_catalogue():
    # target 4 (0.3): 0.9, 0.5, 0.7 are higher -> rank 4; target 2 (0.9) -> rank 1.
    assert ev.ranks(SCORES, [4]).tolist() == [4]
    assert ev.ranks(SCORES, [2]).tolist() == [1]
    assert ev.ranks(SCORES, [3]).tolist() == [3]


def test_ties_count_against_the_target():
    scores = np.array([[0.0, 0.0, 0.5, 0.5, 0.9, 0.1],
                       [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    # Row 0: 0.9 higher, one other 0.5 ties -> rank 3. Row 1: constant scorer -> the
    # worst rank, 4 = the catalogue size (indices 2..5).
    assert ev.ranks(scores, [2, 3]).tolist() == [3, 4]
    assert ev.ranks(scores, [3, 5]).tolist() == [3, 4]


def test_nan_scores_count_against_the_model():
    scores = np.array([[0.0, 0.0, np.nan, 0.5, 0.9, 0.1],
                       [0.0, 0.0, 0.2, np.nan, 0.9, 0.1]], dtype=np.float32)
    assert ev.ranks(scores, [2, 4]).tolist() == [4, 2]


def test_exclude_removes_items_but_never_the_target():
    exclude = np.array([[False, False, True, False, False, True]])
    # Without 0.9 and 0.7, only 0.5 beats 0.3 -> rank 2.
    assert ev.ranks(SCORES, [4], exclude=exclude).tolist() == [2]
    # The target 2 is marked excluded but still ranked: 0.9 beats 0.5, 0.3 -> rank 1.
    assert ev.ranks(SCORES, [2], exclude=exclude).tolist() == [1]
    exclude_target = np.array([[False, False, False, False, True, False]])
    assert ev.ranks(SCORES, [4], exclude=exclude_target).tolist() == [4]


def test_ranks_tensor_path_and_tf_function():
    got = ev.ranks(tf.constant(SCORES), tf.constant([4]))
    assert tf.is_tensor(got) and got.numpy().tolist() == [4]
    fn = tf.function(lambda s, t: ev.ranks(s, t))
    assert fn(tf.constant(SCORES), tf.constant([3])).numpy().tolist() == [3]
    with pytest.raises(ValueError, match="targets"):
        ev.ranks(SCORES, [1, 2])


def test_metrics_hand_computed():
    m = ev.metrics_from_ranks([1, 3, 7, 15, 30])
    expected = {
        "hr@5": 2 / 5, "hr@10": 3 / 5, "hr@20": 4 / 5,
        # 1/log2(2) = 1, 1/log2(4) = 0.5, 1/log2(8) = 1/3, 1/log2(16) = 0.25.
        "ndcg@5": (1 + 0.5) / 5, "ndcg@10": (1 + 0.5 + 1 / 3) / 5,
        "ndcg@20": (1 + 0.5 + 1 / 3 + 0.25) / 5,
        "mrr@5": (1 + 1 / 3) / 5, "mrr@10": (1 + 1 / 3 + 1 / 7) / 5,
        "mrr@20": (1 + 1 / 3 + 1 / 7 + 1 / 15) / 5,
    }
    assert sorted(m) == sorted(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert m["ndcg@5"] == pytest.approx(0.3)
    assert m["mrr@10"] == pytest.approx(0.2952380952)


def test_metrics_ignore_padding_rows():
    m = ev.metrics_from_ranks([3, 1, 1], weights=[1.0, 0.0, 0.0], ks=(1, 5))
    assert m == pytest.approx({"hr@1": 0.0, "hr@5": 1.0, "ndcg@1": 0.0, "ndcg@5": 0.5,
                               "mrr@1": 0.0, "mrr@5": 1 / 3})
    with pytest.raises(ValueError, match="no users"):
        ev.metrics_from_ranks([1], weights=[0.0])


def identity_model(item_scores):
    """encode_fn/item_embeddings whose scores are item_scores for every user (d=1)."""
    item_scores = np.asarray(item_scores, np.float32).reshape(-1, 1)
    return (lambda inputs: tf.ones([tf.shape(inputs)[0], 1])), item_scores


def test_evaluate_full_hand_computed():
    # V = 6, catalogue 2..5; scores 2:0.9 3:0.5 4:0.3 5:0.7.
    encode, items = identity_model([5.0, 5.0, 0.9, 0.5, 0.3, 0.7])
    batches = [
        {"inputs": np.zeros((2, 3), np.int32), "targets": np.array([4, 5], np.int32),
         "weights": np.array([1, 1], np.float32), "history": np.array([[2, 5], [0, 2]], np.int32)},
        {"inputs": np.zeros((2, 3), np.int32), "targets": np.array([2, 0], np.int32),
         "weights": np.array([1, 0], np.float32), "history": np.zeros((2, 2), np.int32)},
    ]
    m = ev.evaluate(encode, items, batches, ks=(1, 2))
    # ranks 4, 2, 1 (padding row ignored)
    assert m["num_users"] == 3
    assert m["hr@1"] == pytest.approx(1 / 3) and m["hr@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3) + 1) / 3)
    assert m["mrr@2"] == pytest.approx((0.5 + 1) / 3)
    # exclude_history: user 0's history drops 2 (0.9) and 5 (0.7) -> only 0.5 beats 0.3:
    # rank 2; user 1's history [0, 2] drops 0.9 -> rank 1; user 2 stays rank 1.
    m = ev.evaluate(encode, items, batches, exclude_history=True, ks=(1, 2))
    assert m["hr@1"] == pytest.approx(2 / 3) and m["mrr@2"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_most_popular_baseline():
    popularity = np.array([0, 0, 10, 30, 20, 20], np.int64)
    encode, items = ev.most_popular_scores(popularity)
    batch = {"inputs": np.zeros((3, 2), np.int32), "targets": np.array([3, 4, 5], np.int32)}
    m = ev.evaluate(encode, items, [batch], ks=(1, 3))
    # 3 (30) -> rank 1; 4 and 5 (20 each) tie -> rank 3 both.
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["mrr@3"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)


def random_histories(rng, b, v, h):
    hist = rng.integers(2, v, size=(b, h))
    hist[:, : h // 4] = 0  # left padding
    targets = rng.integers(2, v, size=b)
    return hist, targets


@pytest.mark.parametrize("use_popularity", [False, True])
def test_sample_negatives_properties(use_popularity):
    rng = np.random.default_rng(0)
    v, b = 400, 16
    hist, targets = random_histories(rng, b, v, 60)
    popularity = np.zeros(v, np.int64)
    popularity[2:] = rng.integers(0, 50, size=v - 2)
    neg = ev.sample_negatives(hist, targets, v, 100, popularity if use_popularity else None, seed=3)
    assert neg.shape == (b, 100)
    for row in range(b):
        n = neg[row]
        assert len(set(n.tolist())) == 100  # no duplicates
        assert n.min() >= 2 and n.max() < v  # catalogue only
        assert not set(n.tolist()) & set(hist[row].tolist())  # not in the history
        assert targets[row] not in n
        if use_popularity:
            assert np.all(popularity[n] > 0)
    # Seeded per user: the same user gets the same negatives in any batch position.
    again = ev.sample_negatives(hist[5:7], targets[5:7], v, 100,
                                popularity if use_popularity else None, seed=3, user_index=[5, 6])
    assert np.array_equal(again, neg[5:7])
    other = ev.sample_negatives(hist, targets, v, 100, popularity if use_popularity else None, seed=4)
    assert not np.array_equal(other, neg)


def test_pop_sampling_follows_popularity_and_fills_short_rows():
    v = 1002
    popularity = np.ones(v, np.int64)
    popularity[:2] = 0
    popularity[2:102] = 10_000  # 100 very popular items
    hist = np.zeros((200, 1), np.int64)
    targets = np.full(200, 500)
    neg = ev.sample_negatives(hist, targets, v, 100, popularity, seed=0)
    share_popular = np.mean(neg < 102)
    assert share_popular > 0.95  # ~ 100 * 1e4 / (100 * 1e4 + 900) of the mass
    uni = ev.sample_negatives(hist, targets, v, 100, None, seed=0)
    assert 0.05 < np.mean(uni < 102) < 0.15  # ~ 100 / 1000 under uniform sampling
    # Only 3 eligible items (2..6 minus history 3 and target 5) -> the rest is -1.
    short = ev.sample_negatives(np.array([[3]]), [5], 7, 5, None, seed=0)
    assert sorted(short[0][:3].tolist()) == [2, 4, 6] and short[0][3:].tolist() == [-1, -1]


@pytest.mark.parametrize("protocol", ["pop100", "uniform100"])
def test_sampled_protocol_ranks_target_among_itself_and_100_negatives(protocol):
    rng = np.random.default_rng(1)
    v, b = 300, 8
    hist, targets = random_histories(rng, b, v, 30)
    popularity = np.zeros(v, np.int64)
    popularity[2:] = 1 + rng.integers(0, 9, size=v - 2)
    batch = {"inputs": np.zeros((b, 4), np.int32), "targets": targets.astype(np.int32),
             "weights": np.ones(b, np.float32), "history": hist.astype(np.int32),
             "user_index": np.arange(b, dtype=np.int32)}
    # Constant scorer: the target ties with all 100 negatives -> rank 101 for everyone.
    encode, items = identity_model(np.ones(v))
    m = ev.evaluate(encode, items, [batch], protocol=protocol, popularity=popularity, ks=(100, 101))
    assert m["hr@100"] == 0.0 and m["hr@101"] == 1.0
    assert m["mrr@101"] == pytest.approx(1 / 101)
    # User 0's history items score highest but are never its negatives: with its target
    # above every other item, user 0 gets rank 1. For the others, the history items of
    # user 0 and its target (a tie) beat them when drawn as negatives.
    targets[0] = next(i for i in range(2, v) if i not in hist[0])
    batch["targets"] = targets.astype(np.int32)
    item_scores = np.zeros(v)
    item_scores[hist[0][hist[0] > 0]] = 100.0
    item_scores[targets[0]] = 50.0
    encode, items = identity_model(item_scores)
    m = ev.evaluate(encode, items, [batch], protocol=protocol, popularity=popularity, ks=(1, 101))
    expected = []
    for row in range(b):
        neg = ev.sample_negatives(hist[row:row + 1], targets[row:row + 1], v, 100,
                                  popularity if protocol == "pop100" else None, 0, [row])[0]
        assert neg.min() >= 2
        expected.append(1 + int(np.sum(item_scores[neg] >= item_scores[targets[row]])))
    expected = np.array(expected)
    assert expected[0] == 1 and expected[1:].max() > 1
    assert m["hr@1"] == pytest.approx(np.mean(expected == 1))
    assert m["mrr@101"] == pytest.approx(np.mean(1.0 / expected))
    assert m["num_users"] == b


def test_evaluate_end_to_end_on_evaluation_batches():
    inter = data.Interactions(
        ["a"] * 5 + ["b"] * 4 + ["c"] * 3,
        ["1", "2", "3", "1", "2", "3", "2", "3", "1", "2", "1", "4"],
        np.arange(12.0),
    )
    seq = data.build_sequences(inter)
    # train parts: a 1 2 3 | b 3 2 | c 2 -> 2:3, 3:2, 1:1, 4:0 -> vocab 2 3 1 4
    assert seq.vocab == ["[PAD]", "[OOV]", "2", "3", "1", "4"]
    encode, items = ev.most_popular_scores(seq.item_popularity)
    batches = data.evaluation_batches(seq, "test", 3, 2)
    m = ev.evaluate(encode, items, batches, ks=(1, 2, 4))
    # test targets (raw): a 2, b 1, c 4 -> popularity ranks 1, 3, 4
    assert m["num_users"] == 3
    assert m["hr@1"] == pytest.approx(1 / 3) and m["hr@4"] == 1.0
    assert m["mrr@4"] == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)
    # exclude history (raw ids): a's history {1,2,3} (the target 2 stays) -> only 4 (pop
    # 0) competes: rank 1; b's {3,2} -> target 1 (pop 1) vs 4: rank 1; c's {2,1} -> target
    # 4 (pop 0) vs 3 (pop 2): rank 2.
    m = ev.evaluate(encode, items, data.evaluation_batches(seq, "test", 3, 2),
                    exclude_history=True, ks=(1, 2))
    assert m["hr@1"] == pytest.approx(2 / 3) and m["mrr@2"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_evaluate_argument_errors():
    encode, items = identity_model(np.ones(5))
    batch = {"inputs": np.zeros((1, 2), np.int32), "targets": np.array([2], np.int32)}
    with pytest.raises(ValueError, match="protocol"):
        ev.evaluate(encode, items, [batch], protocol="pop50")
    with pytest.raises(ValueError, match="popularity"):
        ev.evaluate(encode, items, [batch], protocol="pop100")
    with pytest.raises(ValueError, match="history"):
        ev.evaluate(encode, items, [batch], exclude_history=True)


def test_protocols_and_reserved_ids_are_the_shared_constants():
    from tfrs_linear import constants

    assert ev.PROTOCOLS is constants.PROTOCOLS and ev.NUM_RESERVED == constants.NUM_RESERVED == 2
