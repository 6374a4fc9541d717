"""SequenceEncoder's ``output="sequence"|"last"`` and ``padding="left"|"right"`` (issue 16):
inputs of any length <= max_len, both padding sides, the wrong-padding check, and the
configuration. Oracles: hand-set embeddings through a NumPy LayerNorm (no blocks), and the
left-padded computation for the right-padded one."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import layer_norm
from tfrs_linear.layers import SequenceEncoder
from tfrs_linear.layers.encoder import check_padding, find_padding_errors

SMALL = dict(vocab_size=20, max_len=6, d_model=8, num_layers=2, num_heads=2, ffn_dim=16,
             num_interests=3, chunk_size=4, dropout=0.0, attention_dropout=0.0)


def _embeddings_only(**kwargs):
    """An encoder without blocks whose embeddings are set by hand: item i = [i, 0, 0, 0],
    position p = [0, p, 0, p²], so every output is LayerNorm([i, p, 0, p²])."""
    encoder = SequenceEncoder(vocab_size=10, max_len=5, d_model=4, num_layers=0, num_heads=1,
                              dropout=0.0, **kwargs)
    encoder(np.zeros([1, 5], np.int32))
    items = np.zeros([10, 4], np.float32)
    items[:, 0] = np.arange(10)
    positions = np.zeros([5, 4], np.float32)
    positions[:, 1], positions[:, 3] = np.arange(5), np.arange(5) ** 2
    encoder.item_embedding.set_weights([items])
    encoder.position_embedding.set_weights([positions])
    return encoder


def _hand(item, position):
    z = np.array([item, position, 0.0, position ** 2], np.float64)
    return layer_norm(z, 1.0, 0.0, 1e-12)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_any_length_and_both_paddings_against_hand_computed_states(padding):
    encoder = _embeddings_only(padding=padding)
    # Items 3, 4, 5 (oldest first) in an input of length 4 < max_len = 5: the newest item
    # sits at position 4 whatever the padding, so item 3 gets position 2.
    ids = np.array([[0, 3, 4, 5]] if padding == "left" else [[3, 4, 5, 0]], np.int32)
    out = encoder(ids).numpy()
    want = np.zeros([1, 4, 4])
    real_at = [1, 2, 3] if padding == "left" else [0, 1, 2]
    for k, at in enumerate(real_at):
        want[0, at] = _hand(3 + k, 2 + k)
    assert out.shape == (1, 4, 4)
    np.testing.assert_allclose(out, want, atol=1e-5)
    last = SequenceEncoder.from_config({**encoder.get_config(), "output": "last"})
    last(ids)
    last.set_weights(encoder.get_weights())
    np.testing.assert_allclose(last(ids).numpy(), [_hand(5, 4)], atol=1e-5)


@pytest.mark.parametrize("attention,causal", [("linrec", True), ("softmax", False), ("elastic", False)])
def test_right_padding_gives_the_left_padded_states(attention, causal):
    tf.keras.utils.set_random_seed(7)
    left = SequenceEncoder(attention=attention, causal=causal, **SMALL)
    lengths = [6, 3, 1, 0]
    left_ids = np.zeros([4, 6], np.int32)
    right_ids = np.zeros([4, 6], np.int32)
    rng = np.random.default_rng(7)
    for row, n in enumerate(lengths):
        items = rng.integers(2, 20, n)
        left_ids[row, 6 - n:], right_ids[row, :n] = items, items
    want = left(left_ids).numpy()
    right = SequenceEncoder(attention=attention, causal=causal, padding="right", **SMALL)
    right(right_ids)
    right.set_weights(left.get_weights())
    got = right(right_ids).numpy()
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(got[row, :n], want[row, 6 - n:], rtol=1e-5, atol=1e-6)
        assert np.all(got[row, n:] == 0.0)
    last = SequenceEncoder(attention=attention, causal=causal, padding="right", output="last", **SMALL)
    last(right_ids)
    last.set_weights(left.get_weights())
    np.testing.assert_allclose(last(right_ids).numpy(), want[:, -1], rtol=1e-5, atol=1e-5)


def test_find_padding_errors_on_hand_made_rows():
    rows = np.array([[0, 0, 3, 4],   # left-padded
                     [3, 4, 0, 0],   # right-padded
                     [0, 3, 0, 4],   # a hole
                     [0, 0, 0, 0],   # empty: both
                     [3, 4, 5, 6]])  # full: both
    assert find_padding_errors(rows, "left") == [1, 2]
    assert find_padding_errors(rows, "right") == [0, 2]
    with pytest.raises(ValueError, match=r"padding='left'\): item_ids row\(s\) \[1, 2\] .*right-padded"):
        check_padding(rows, "left")
    with pytest.raises(ValueError, match="padding must be one of"):
        check_padding(rows, "middle")


def test_wrong_padding_raises_eagerly_and_in_graph_mode():
    encoder = SequenceEncoder(**SMALL)
    right_padded = np.array([[3, 4, 5, 0, 0, 0], [0, 0, 0, 0, 7, 8]], np.int32)
    # Before: the first row's user embedding was the all-zero padding state, silently.
    with pytest.raises(ValueError, match=r"row\(s\) \[0\] have padding \(0\) after a real item"):
        encoder(right_padded)
    with pytest.raises(tf.errors.InvalidArgumentError, match="look right-padded"):
        tf.function(lambda ids: encoder(ids))(tf.constant(right_padded))
    right = SequenceEncoder(padding="right", **SMALL)
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] have padding \(0\) before a real item"):
        right(right_padded)


def test_lengths_and_options_are_checked():
    encoder = SequenceEncoder(**SMALL)
    with pytest.raises(ValueError, match="7 long, longer than max_len=6"):
        encoder(np.ones([2, 7], np.int32))
    with pytest.raises(ValueError, match="output must be one of"):
        SequenceEncoder(output="first", **SMALL)
    with pytest.raises(ValueError, match="padding must be one of"):
        SequenceEncoder(padding="both", **SMALL)


def test_config_has_the_new_arguments_and_old_configs_load_as_before():
    encoder = SequenceEncoder(output="last", padding="right", **SMALL)
    config = encoder.get_config()
    assert (config["output"], config["padding"]) == ("last", "right")
    clone = SequenceEncoder.from_config(config)
    assert (clone.output_form, clone.padding) == ("last", "right")
    old = {k: v for k, v in SequenceEncoder(**SMALL).get_config().items() if k not in ("output", "padding")}
    before = SequenceEncoder.from_config(old)
    assert (before.output_form, before.padding) == ("sequence", "left")
