"""Keras 3 streaming (``initial_state``/``step``/``advance`` of LinRecAttention,
LinearDispatcherAttention, TransformerBlock and SequenceEncoder) on one backend, against
the float64 NumPy oracles of tests/keras3/oracles.py.

Run by tests/keras3/test_backends.py in a process of its own per backend. The state is
float32 on every backend and for every layer dtype (as in the TensorFlow form), so the
float64 layers here agree with the float64 oracles to float32 precision.
"""

import keras
import numpy as np
import pytest
from keras import ops

from tests.keras3 import oracles as O
from tests.keras3._harness import BACKEND, forward, run, to_numpy
from tfrs_linear.keras3 import (
    LinearDispatcherAttention, LinRecAttention, SequenceEncoder, TransformerBlock,
)

DIM, HEADS, KEY_DIM = 6, 2, 3
TOL32 = dict(rtol=2e-5, atol=2e-5)
VOCAB, MAX_LEN = 30, 8


def _linrec(normalization, seed=0):
    keras.utils.set_random_seed(seed)
    layer = LinRecAttention(HEADS, KEY_DIM, normalization=normalization, chunk_size=3,
                            dtype="float64", bias_initializer="random_normal")
    layer.build((None, None, DIM), (None, None, DIM))
    return layer


def _elastic(recency, seed=0):
    keras.utils.set_random_seed(seed)
    layer = LinearDispatcherAttention(HEADS, KEY_DIM, num_interests=3, causal=True,
                                      recency_bias=recency, chunk_size=3, dtype="float64",
                                      bias_initializer="random_normal")
    layer.build((None, None, DIM))
    if recency:  # slopes far apart, so that the decay per event matters
        layer.recency_raw.assign(np.linspace(-3.0, 3.0, HEADS * 3).reshape(HEADS, 3))
    return layer


# name -> (make the layer, its float64 reference on one [1, n, DIM] history).
LAYERS = {
    "linrec-paper": (lambda s: _linrec("paper", s), lambda layer, h: O.linrec_layer(
        O.mha_weights(layer), h, h, None, None, True, "paper")[0]),
    "linrec-token": (lambda s: _linrec("token", s), lambda layer, h: O.linrec_layer(
        O.mha_weights(layer), h, h, None, None, True, "token")[0]),
    "elastic": (lambda s: _elastic(False, s), lambda layer, h: O.lda(
        O.lda_weights(layer), h, None, True)[0]),
    "elastic-recency": (lambda s: _elastic(True, s), lambda layer, h: O.lda(
        O.lda_weights(layer), h, None, True)[0]),
}


def _padded_output(layer):
    """What a padded slot outputs: LinRec's output projection's bias (a query attending
    nothing, as in a call), ELASTIC's 0."""
    if isinstance(layer, LinRecAttention):
        return np.asarray(ops.convert_to_numpy(layer.output_dense.bias), np.float64)
    return 0.0


def _right_padded(rows, width):
    """``[B, width, ...]`` rows (each ``[n_b, ...]``) right-padded with 0, and their mask."""
    out = np.zeros((len(rows), width) + rows[0].shape[1:], rows[0].dtype)
    mask = np.zeros((len(rows), width), bool)
    for b, row in enumerate(rows):
        out[b, :len(row)], mask[b, :len(row)] = row, True
    return out, mask


# Events each of three users adds per step (0 = a row of padding in that step).
STEPS = [(4, 1, 0), (1, 0, 2), (7, 5, 1)]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_steps_equal_the_causal_reference_on_the_whole_history(name):
    make, reference = LAYERS[name]
    rng = np.random.default_rng(0)
    layer = make(0)
    totals = np.sum(STEPS, axis=0)
    history = [rng.normal(size=(n, DIM)) for n in totals]
    want = [reference(layer, h[None])[0] for h in history]
    state, seen = layer.initial_state(3), [0, 0, 0]
    for counts in STEPS:
        # One width for every step: one compilation on JAX.
        x, mask = _right_padded([h[s:s + n] for h, s, n in zip(history, seen, counts)],
                                np.max(STEPS))
        state, out = run(layer.step, state, x, mask)
        for b, n in enumerate(counts):
            np.testing.assert_allclose(out[b, :n], want[b][seen[b]:seen[b] + n], **TOL32)
            np.testing.assert_allclose(out[b, n:], np.broadcast_to(
                _padded_output(layer), out[b, n:].shape), **TOL32)
            seen[b] += n
    assert state["count"].tolist() == totals.tolist()
    assert all(v.dtype == np.float32 for v in state.values())


# The token normalization's sums are those of the steps' test: one LinRec form here.
@pytest.mark.parametrize("name", ["elastic-recency", "linrec-paper"])
def test_advance_is_the_steps_state_on_either_padding(name):
    make, reference = LAYERS[name]
    rng = np.random.default_rng(1)
    layer = make(1)
    x = rng.normal(size=(2, 9, DIM))
    mask = np.ones((2, 9), bool)
    mask[1, :4] = False  # left padding
    right, right_mask = _right_padded([x[0], x[1, 4:]], 9)
    stepped = run(layer.step, layer.initial_state(2), right, right_mask)[0]
    advanced = run(layer.advance, layer.initial_state(2), x, mask)
    for key in stepped:
        if key.endswith("_comp") or key == "max":
            continue
        np.testing.assert_allclose(advanced[key] + advanced.get(key + "_comp", 0.0),
                                   stepped[key] + stepped.get(key + "_comp", 0.0), **TOL32)
    # The next event after the advanced state: the reference at the history's end.
    nxt = rng.normal(size=(2, 1, DIM))
    out = run(layer.step, advanced, nxt)[1]
    for b, h in enumerate((x[0], x[1, 4:])):
        want = reference(layer, np.concatenate([h, nxt[b]])[None])[0, -1]
        np.testing.assert_allclose(out[b, 0], want, **TOL32)


@pytest.mark.parametrize("attention", ["linrec", "elastic"])
def test_block_steps_equal_the_causal_block_reference(attention):
    rng = np.random.default_rng(2)
    keras.utils.set_random_seed(2)
    block = TransformerBlock(HEADS, attention=attention, causal=True, chunk_size=3,
                             ffn_dim=10, num_interests=3, recency_bias=True, dtype="float64")
    block.build((None, 11, DIM))
    x = rng.normal(size=(1, 11, DIM))
    want = O.block(O.block_weights(block), x, None, attention, True)[0][0]
    state = block.initial_state(1)
    state, first = run(block.step, state, x[:, :6])
    state, second = run(block.step, state, x[:, 6:])
    got = np.concatenate([first, second], axis=1)[0]
    np.testing.assert_allclose(got, want, **TOL32)


def _encoder(positions, normalization="paper", seed=3, attention="linrec"):
    keras.utils.set_random_seed(seed)
    enc = SequenceEncoder(VOCAB, MAX_LEN, d_model=6, num_layers=2, num_heads=2, ffn_dim=10,
                          chunk_size=3, positions=positions, normalization=normalization,
                          attention=attention, num_interests=3, recency_bias=True,
                          dtype="float64")
    enc.build((None, MAX_LEN))
    rng = np.random.default_rng(seed)
    for var in enc.weights:  # non-trivial LayerNorms (they start at 1 and 0)
        if var.path.endswith(("gamma", "beta")):
            base = 1.0 if var.path.endswith("gamma") else 0.0
            var.assign(base + 0.2 * rng.normal(size=var.shape))
    return enc


@pytest.mark.parametrize("positions,normalization,attention",
                         [("from_start", "paper", "linrec"), ("none", "token", "linrec"),
                          ("none", "paper", "elastic")])
def test_encoder_steps_give_the_newest_output_of_the_whole_history(positions, normalization,
                                                                    attention):
    """Histories of 13, 5 and 0 events (longer than max_len = 8: positions from_start
    share the last row past it) fed in uneven right-padded steps; the user embedding after
    each step is the reference encoder's newest output on the history so far (ELASTIC with
    its recency bias: the slopes' decay per event)."""
    rng = np.random.default_rng(4)
    enc = _encoder(positions, normalization, attention=attention)
    history = [rng.integers(1, VOCAB, size=n).astype("int32") for n in (13, 5, 0)]
    state, seen = enc.initial_state(3), [0, 0, 0]
    for counts in [(3, 2, 0), (1, 0, 0), (9, 3, 0)]:
        ids = _right_padded([h[s:s + n] for h, s, n in zip(history, seen, counts)], 9)[0]
        state, user = run(enc.step, state, ids)
        seen = [s + n for s, n in zip(seen, counts)]
        for b, n in enumerate(seen):
            want = (O.encoder(enc, history[b][:n][None])[0, -1] if n else np.zeros(6))
            np.testing.assert_allclose(to_numpy(user)[b], want, **TOL32)
    assert state["count"].tolist() == [13.0, 5.0, 0.0]
    # Within max_len the step's embedding is the encoder's own last-only call, and the
    # whole call (left-padded rows) is the reference with the same positions.
    ids = np.zeros((2, MAX_LEN), "int32")
    ids[0, -5:], ids[1, -2:] = history[1], history[0][:2]
    np.testing.assert_allclose(forward(enc, ids, last_only=True)[0, 0], to_numpy(user)[1],
                               **TOL32)
    np.testing.assert_allclose(forward(enc, ids), O.encoder(enc, ids), **TOL32)


@pytest.mark.parametrize("attention,positions", [("linrec", "from_start"),
                                                  ("elastic", "none")])
def test_encode_state_in_one_pass_is_the_steps_state(attention, positions):
    """Left-padded histories of 13, 5 and 0 events (wider than max_len = 8) in one
    parallel pass give the state and embedding of feeding them by steps, and the next
    step from it continues the reference."""
    rng = np.random.default_rng(6)
    enc = _encoder(positions, attention=attention, seed=6)
    history = [rng.integers(1, VOCAB, size=n).astype("int32") for n in (13, 5, 0)]
    left = np.zeros((3, 13), "int32")
    for b, h in enumerate(history):
        left[b, 13 - len(h):] = h
    state, user = run(enc.encode_state, left)
    right = _right_padded([h[:, None] for h in history], 13)[0][..., 0]
    stepped, stepped_user = run(enc.step, enc.initial_state(3), right)
    np.testing.assert_allclose(user, stepped_user, **TOL32)
    for key in stepped:
        if not key.endswith("_comp"):
            np.testing.assert_allclose(state[key] + state.get(key + "_comp", 0.0),
                                       stepped[key] + stepped.get(key + "_comp", 0.0),
                                       **TOL32)
    nxt = rng.integers(1, VOCAB, size=(3, 1)).astype("int32")
    after = run(enc.step, state, nxt)[1]
    for b, h in enumerate(history):
        want = O.encoder(enc, np.concatenate([h, nxt[b]])[None])[0, -1]
        np.testing.assert_allclose(after[b], want, **TOL32)


def test_encoder_steps_compiled_one_event_at_a_time():
    """Twelve single-event steps in a ``keras.ops.fori_loop`` inside one compiled function
    (jax.jit on JAX, an XLA tf.function on TensorFlow; eagerly on PyTorch), past
    ``max_len``, give the reference's newest outputs."""
    enc = _encoder("from_start", seed=5)
    steps = 12
    ids = np.random.default_rng(5).integers(1, VOCAB, size=(2, steps)).astype("int32")

    def stream(ids):
        def body(t, carry):
            state, users = carry
            state, user = enc.step(state, ops.slice(ids, (0, t), (2, 1)))
            return state, ops.slice_update(users, (0, t, 0), user[:, None, :])

        init = (enc.initial_state(2), ops.zeros((2, steps, 6), "float32"))
        return ops.fori_loop(0, steps, body, init)[1]

    if BACKEND == "jax":
        import jax
        got = to_numpy(jax.jit(stream)(ids))
    elif BACKEND == "tensorflow":
        import tensorflow as tf
        got = to_numpy(tf.function(stream, jit_compile=True)(tf.constant(ids)))
    else:
        got = to_numpy(stream(ids))
    for t in (0, 7, 8, steps - 1):
        want = O.encoder(enc, ids[:, :t + 1])[:, -1]
        np.testing.assert_allclose(got[:, t], want, **TOL32)


def test_streaming_errors_name_what_is_wrong():
    enc = _encoder("from_start")
    with pytest.raises(ValueError, match="right-padded.*rows \\[1\\] are not"):
        enc.step(enc.initial_state(2), np.array([[1, 2], [0, 3]], "int32"))
    with pytest.raises(ValueError, match="the state has the keys"):
        enc.step({"count": np.zeros(1, "float32")}, np.ones((1, 1), "int32"))
    with pytest.raises(ValueError, match="item_ids must be left-padded.*rows \\[0\\]"):
        enc.encode_state(np.array([[1, 0], [0, 3]], "int32"))
    with pytest.raises(ValueError, match="int \\[batch, events\\]"):
        enc.step(enc.initial_state(1), np.ones((1, 2, 3), "int32"))
    for kw, match in [(dict(positions="from_end"), "positions='from_start' or 'none'"),
                      (dict(positions="none", attention="softmax"), "key/value cache"),
                      (dict(positions="none", attention="elastic", causal=False),
                       "non-causal"),
                      (dict(positions="none", causal=False), "non-causal")]:
        other = SequenceEncoder(VOCAB, MAX_LEN, d_model=4, num_layers=1, num_interests=2, **kw)
        other.build((None, MAX_LEN))
        with pytest.raises(ValueError, match=match):
            other.initial_state(1)
    layer = _linrec("paper")
    state = layer.initial_state(2)
    with pytest.raises(ValueError, match="has the keys"):
        layer.step({k: v for k, v in state.items() if k != "count"}, np.zeros((2, 1, DIM)))
    with pytest.raises(ValueError, match="'paper' state has the keys"):
        layer.step(_linrec("token").initial_state(2), np.zeros((2, 1, DIM)))
    with pytest.raises(ValueError, match=r"state\['kv_sum'\] has shape"):
        layer.step(state, np.zeros((3, 1, DIM)))
    with pytest.raises(ValueError, match="width of query, key and value"):
        layer.step(state, np.zeros((2, 1, DIM + 1)))
    with pytest.raises(ValueError, match="mask must be"):
        layer.step(state, np.zeros((2, 2, DIM)), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="needs a built layer"):
        LinRecAttention(HEADS, KEY_DIM).initial_state(1)
    lda = _elastic(True)
    with pytest.raises(ValueError, match="ELASTIC dispatcher state has the keys"):
        lda.step(state, np.zeros((2, 1, DIM)))
    with pytest.raises(ValueError, match=r"state\['max'\] has shape"):
        lda.step(_elastic(False).initial_state(3), np.zeros((2, 1, DIM)))
    with pytest.raises(ValueError, match="only the causal form"):
        LinearDispatcherAttention(HEADS, KEY_DIM, 3).initial_state(1)


@pytest.mark.parametrize("name", ["elastic-recency", "linrec-paper"])
def test_a_step_of_any_width_and_in_a_graph_of_unknown_width(name):
    """Five events in one step equal three then two (jit-compiled per width on JAX). On
    TensorFlow also as a served ``step`` is traced: a graph whose number of new events
    is unknown (a signature of ``[None, None, dim]``)."""
    layer = LAYERS[name][0](7)
    state = layer.initial_state(2)
    x = np.random.default_rng(7).normal(size=(2, 5, DIM))
    mask = np.arange(5)[None] < np.array([[5], [2]])
    want_state, want = run(layer.step, state, x, mask)
    mid, first = run(layer.step, state, x[:, :3], mask[:, :3])
    got_state, second = run(layer.step, mid, x[:, 3:], mask[:, 3:])
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), want, **TOL32)
    for key in want_state:
        np.testing.assert_allclose(got_state[key], want_state[key], **TOL32)
    if BACKEND != "tensorflow":
        return
    import tensorflow as tf

    specs = [{k: tf.TensorSpec((None,) + tuple(v.shape[1:]), tf.float32)
              for k, v in state.items()},
             tf.TensorSpec((None, None, DIM), tf.float64), tf.TensorSpec((None, None), tf.bool)]
    graph = tf.function(layer.step, input_signature=specs)
    got_state, got = graph(state, x, mask)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-6, atol=1e-6)
    for key in want_state:
        np.testing.assert_allclose(to_numpy(got_state[key]), want_state[key], rtol=1e-6,
                                   atol=1e-6)
