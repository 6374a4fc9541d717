"""The encoder's streaming form (initial_state / encode_state / step) against the full
encoder: ``step`` after ``encode_state(h)`` gives ``encode(h + x)``'s user embedding, for
every streamable variant, in graph mode and under XLA, for up to 50 steps in a row and
1..5 events per step (rows adding different numbers, zero included)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.ops.test_linrec_recurrent import summed_state
from tfrs_linear.layers import SequenceEncoder
from tfrs_linear.layers.encoder import STATE_COUNT

VOCAB, MAX_LEN, D = 40, 96, 16
VARIANTS = {
    "linrec-paper": dict(attention="linrec", normalization="paper"),
    "linrec-token": dict(attention="linrec", normalization="token"),
    "elastic-recency": dict(attention="elastic", recency_bias=True),
    "elastic": dict(attention="elastic", recency_bias=False),
}
# linrec.md's tolerance for the causal form against the dense reference (float32).
TOL = 2e-5


def make_encoder(variant, positions="from_start", seed=0, **kw):
    tf.keras.utils.set_random_seed(seed)
    args = dict(d_model=D, num_layers=2, num_heads=2, ffn_dim=32, causal=True, dropout=0.0,
                attention_dropout=0.0, num_interests=4, chunk_size=8, positions=positions)
    args.update(VARIANTS[variant])
    args.update(kw)
    encoder = SequenceEncoder(VOCAB, MAX_LEN, **args)
    encoder(np.zeros([1, MAX_LEN], np.int32))
    if positions != "none":  # positions large enough to matter
        table = encoder.position_embedding.embeddings
        table.assign(tf.random.normal(table.shape, stddev=0.5))
    return encoder


def random_rows(rng, lengths, width):
    """Right-padded rows of random items with the given real lengths."""
    rows = np.zeros([len(lengths), width], np.int32)
    for i, n in enumerate(lengths):
        rows[i, :n] = rng.integers(2, VOCAB, n)
    return rows


def left_padded(histories):
    rows = np.zeros([len(histories), MAX_LEN], np.int32)
    for i, h in enumerate(histories):
        if len(h):
            rows[i, -len(h):] = h
    return rows


class Full:
    """The dense reference: the full encoder's newest output on whole histories."""

    def __init__(self, encoder):
        self.fn = tf.function(lambda ids: encoder(ids, last_only=True)[:, -1])

    def __call__(self, histories):
        return self.fn(left_padded(histories)).numpy()


def relative_error(got, want):
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)


def run_stream(encoder, rng, steps, events, jit_compile, batch=3, events_per_step=None):
    """encode_state of random histories (0..9 events; in one pass, or steps of
    ``events_per_step``), then ``steps`` steps of random ``events`` per row; returns the
    worst relative error against :class:`Full`."""
    full = Full(encoder)
    histories = [list(r[r > 0]) for r in random_rows(rng, rng.integers(0, 10, batch), 10)]
    encode = tf.function(lambda ids: encoder.encode_state(ids, events_per_step),
                         jit_compile=jit_compile)
    step = tf.function(encoder.step, jit_compile=jit_compile)
    state, user = encode(left_padded(histories)[:, -10:])
    worst = relative_error(user.numpy(), full(histories)) if all(histories) else 0.0
    for s in range(steps):
        m = events[s % len(events)]
        counts = rng.integers(0, m + 1, batch)
        counts[s % batch] = m  # every step has a full row
        new = random_rows(rng, counts, m)
        state, user = step(state, new)
        for h, row in zip(histories, new):
            h.extend(row[row > 0])
        if all(histories):
            worst = max(worst, relative_error(user.numpy(), full(histories)))
    return worst, state


# With the XLA test below, every variant runs once (paper and recency there).
@pytest.mark.parametrize("variant, positions", [("linrec-token", "none"),
                                                ("elastic", "from_start")])
def test_steps_equal_the_full_encoder_in_graph_mode(variant, positions):
    # Steps of 1 and of 5 events (rows add 0..5 of them: every m from 0 to 5).
    encoder = make_encoder(variant, positions)
    worst, state = run_stream(encoder, np.random.default_rng(1), steps=6,
                              events=(1, 5), jit_compile=False)
    assert worst < TOL, worst
    assert all(v.dtype == tf.float32 for v in state.values())
    # The state never grows: the shapes of initial_state.
    shapes = {k: v.shape.as_list() for k, v in encoder.initial_state(3).items()}
    assert {k: v.shape.as_list() for k, v in state.items()} == shapes


@pytest.mark.parametrize("variant, events", [("linrec-paper", (1, 5)),
                                             ("elastic-recency", (1, 5))])
def test_fifty_steps_in_a_row_under_xla(variant, events):
    encoder = make_encoder(variant)
    worst, _ = run_stream(encoder, np.random.default_rng(2), steps=50 // len(events),
                          events=events, jit_compile=True, events_per_step=4)
    assert worst < TOL, worst


def test_a_row_without_new_events_keeps_its_state_and_embedding():
    encoder = make_encoder("elastic-recency")
    state, user = encoder.encode_state(random_rows(np.random.default_rng(4), [5, 3], 5),
                                       padding="right")
    new_state, new_user = encoder.step(state, np.array([[7, 8], [0, 0]], np.int32))
    np.testing.assert_array_equal(new_user[1], user[1])
    for name in state:
        np.testing.assert_array_equal(new_state[name][1], state[name][1])
    assert np.abs(new_user[0] - user[0]).max() > 1e-3


def test_from_start_positions_count_from_the_first_event():
    """A window cut from a longer history with ``position_offsets`` = the events before
    it: position of its k-th item = offset + k (clipped to the table), against the
    embedding computed by hand."""
    encoder = make_encoder("linrec-paper", num_layers=1)
    table = encoder.position_embedding.embeddings.numpy()
    ids = np.zeros([2, MAX_LEN], np.int32)
    ids[:, -3:] = [[5, 6, 7], [8, 9, 10]]
    offsets = np.array([2, MAX_LEN + 5], np.int32)
    x = encoder.item_embedding(ids).numpy()
    positions = np.array([[2, 3, 4], [MAX_LEN - 1] * 3])
    want = x[:, -3:] + table[positions]
    mean = want.mean(-1, keepdims=True)
    want = (want - mean) / np.sqrt(((want - mean) ** 2).mean(-1, keepdims=True) + 1e-12)
    got = encoder._embed(tf.constant(ids), tf.constant(ids > 0), False, offsets).numpy()
    np.testing.assert_allclose(got[:, -3:], want, atol=1e-5)
    np.testing.assert_array_equal(got[:, :-3], 0.0)


def test_a_long_stream_stays_finite_and_agrees_with_chunked_feeding():
    """100,000 events one at a time in one compiled loop, past max_len: finite, and the
    same user embedding (within 1e-4 relative) as feeding them 64 at a time: plain float32
    sums in different orders would drift apart; the compensated state does not."""
    encoder = make_encoder("elastic-recency", num_layers=1)
    n = 100_000
    events = tf.constant(np.random.default_rng(5).integers(2, VOCAB, [1, n]), tf.int32)

    @tf.function(jit_compile=True)
    def one_at_a_time():
        def body(i, state):
            return i + 1, encoder.step(state, tf.gather(events, [i], axis=1))[0]
        _, state = tf.while_loop(lambda i, _: i < n, body,
                                 (tf.constant(0), encoder.initial_state(1)))
        return state

    state = one_at_a_time()
    assert all(np.isfinite(v.numpy()).all() for v in state.values())
    assert state["count"].numpy()[0] == n
    chunked = tf.function(lambda ids: encoder.encode_state(ids, 64, "right")[1],
                          jit_compile=True)(events).numpy()
    assert relative_error(state["newest_output"].numpy(), chunked) < 1e-4


@pytest.mark.parametrize("kw, match", [
    (dict(attention="softmax"), "grows with the history"),
    (dict(causal=False), "non-causal"),
    (dict(positions="from_end"), "from_end"),
])
def test_encoders_without_a_constant_state_say_why(kw, match):
    args = dict(d_model=D, num_layers=1, num_heads=2, ffn_dim=32, positions="from_start")
    args.update(kw)
    encoder = SequenceEncoder(VOCAB, 8, **args)
    encoder(np.zeros([1, 8], np.int32))
    assert not encoder.streamable
    for call in (lambda: encoder.initial_state(1),
                 lambda: encoder.encode_state(np.ones([1, 3], np.int32))):
        with pytest.raises(ValueError, match=match):
            call()


def test_step_refuses_left_padded_new_events():
    encoder = make_encoder("linrec-paper")
    state = encoder.initial_state(1)
    with pytest.raises(ValueError, match="padding"):
        encoder.step(state, np.array([[0, 5]], np.int32))


@pytest.mark.parametrize("variant, jit_compile", [("linrec-paper", False),
                                                  ("elastic-recency", True)])
def test_encode_state_tiers_equal_the_full_encoder(variant, jit_compile):
    # Tiers (8, 3) on 23 events: two steps of 8, then two of 3 (the last padded); rows of
    # different lengths (0 included) and a dynamic width (no XLA) or a static one (XLA).
    encoder = make_encoder(variant)
    rng = np.random.default_rng(4)
    lengths = [23, 17, 0, 9]
    rows = random_rows(rng, lengths, 23)
    histories = [list(r[r > 0]) for r in rows]
    signature = None if jit_compile else [tf.TensorSpec([None, None], tf.int32)]
    tiers = tf.function(lambda ids: encoder.encode_state(ids, (8, 3), padding="right"),
                        jit_compile=jit_compile, input_signature=signature)
    ones = tf.function(lambda ids: encoder.encode_state(ids, 1, padding="right"))
    state, user = tiers(rows)
    state_1, user_1 = ones(rows)
    full = Full(encoder)([h if h else [0] for h in histories])
    real = [i for i, n in enumerate(lengths) if n]
    assert relative_error(user.numpy()[real], full[real]) < TOL
    for name in state:  # the same state as one event at a time, up to float rounding
        np.testing.assert_allclose(state[name].numpy(), state_1[name].numpy(),
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(state[STATE_COUNT].numpy(), lengths)


@pytest.mark.parametrize("variant, jit_compile, padding", [
    ("linrec-paper", True, "right"), ("linrec-token", False, "left"),
    ("elastic-recency", False, "right"), ("elastic", True, "left")])
def test_encode_state_in_one_pass_equals_one_event_at_a_time(variant, jit_compile, padding):
    # Histories longer than max_len (130 > 96: the positions past the table share its
    # last row), shorter, empty; a dynamic width (no XLA) or a static one (XLA). The
    # oracle, one step per event, is checked against the full encoder above.
    encoder = make_encoder(variant)
    lengths = [130, 57, 0, 9]
    right = random_rows(np.random.default_rng(6), lengths, 130)
    rows = right if padding == "right" else np.stack(
        [np.roll(r, len(r) - n) for r, n in zip(right, lengths)])
    signature = None if jit_compile else [tf.TensorSpec([None, None], tf.int32)]
    one_pass = tf.function(lambda ids: encoder.encode_state(ids, padding=padding),
                           jit_compile=jit_compile, input_signature=signature)
    ones = tf.function(lambda ids: encoder.encode_state(ids, 1, padding="right"))
    state, user = one_pass(rows)
    state_1, user_1 = ones(right)
    assert set(state) == set(state_1)
    assert relative_error(user.numpy(), user_1.numpy()) < TOL
    # Each running sum as sum + compensation: two orders of adding the same terms split
    # them differently.
    want = summed_state(state_1)
    for name, got in summed_state(state).items():
        np.testing.assert_allclose(got, want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(state[STATE_COUNT].numpy(), lengths)
    np.testing.assert_array_equal(user.numpy()[2], 0.0)  # no events: the initial state's
    # Shapes never grow: those of initial_state, whatever the history's length.
    shapes = {k: v.shape.as_list() for k, v in encoder.initial_state(4).items()}
    assert {k: v.shape.as_list() for k, v in state.items()} == shapes


@pytest.mark.parametrize("budget, path", [(40, "groups"), (20, "loop"), (90, "one pass")])
def test_batches_above_max_parallel_events_go_in_groups_or_steps(budget, path):
    # 3 rows x 30 = 90 events. At most 40 at once: one pass per row (groups of 40 // 30
    # = 1 row); at most 20: rows of 30 do not fit, the step loop; 90: one pass. The same
    # state every way; decided at trace time for a static shape and at run time for a
    # dynamic one. Each one pass is marked (+1000 on its count) to count the passes.
    encoder = make_encoder("elastic-recency")
    rows = random_rows(np.random.default_rng(8), [30, 12, 0], 30)
    want_state, want_user = encoder.encode_state(rows, padding="right")
    one_pass = encoder._encode_state_parallel

    def marked(*args):
        state, user = one_pass(*args)
        return {**state, STATE_COUNT: state[STATE_COUNT] + 1000.0}, user

    encoder._encode_state_parallel = marked
    encoder.max_parallel_events = budget
    marks = {"groups": 1000.0, "loop": 0.0, "one pass": 1000.0}[path]
    for signature in (None, [tf.TensorSpec([None, None], tf.int32)]):
        state, user = tf.function(lambda ids: encoder.encode_state(ids, padding="right"),
                                  input_signature=signature)(rows)
        np.testing.assert_array_equal(state[STATE_COUNT].numpy(),
                                      want_state[STATE_COUNT].numpy() + marks)
        assert relative_error(user.numpy(), want_user.numpy()) < TOL
        for name in want_state:
            if name != STATE_COUNT:
                np.testing.assert_allclose(state[name].numpy(), want_state[name].numpy(),
                                           rtol=1e-4, atol=1e-5, err_msg=name)


def test_encode_state_refuses_bad_step_sizes():
    encoder = make_encoder("linrec-token")
    ids = np.ones([1, 5], np.int32)
    for bad in (0, (3, 8), (8, 8), (), (4, 0), 2.5, True):
        with pytest.raises(ValueError, match="events_per_step"):
            encoder.encode_state(ids, bad)
    # NumPy ints are ints.
    state, _ = encoder.encode_state(ids, (np.int64(4), 2))
    assert float(state[STATE_COUNT][0]) == 5


@pytest.mark.parametrize("variant", ["linrec-paper", "elastic-recency"])
def test_streaming_under_mixed_bfloat16_matches_the_full_encoder(variant):
    """Under a mixed_bfloat16 policy the state stays float32 and step (one event, then
    two) gives the full encoder's embedding within bfloat16's precision (ELASTIC's step
    used to fail there: its weights, float32 variables, were used without the cast that
    the layer's own call applies)."""
    policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        encoder = make_encoder(variant)
        assert encoder.compute_dtype == "bfloat16"
        worst, state = run_stream(encoder, np.random.default_rng(8), steps=4, events=[1, 2],
                                  jit_compile=False)
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)
    assert all(v.dtype == tf.float32 for v in state.values())
    assert worst < 0.05, worst
