"""The causal dispatcher's recurrent form (:mod:`tfrs_linear.ops.dispatcher_recurrent`): a
history fed step by step (``m`` events per call, rows right-padded) against the full causal
``dispatcher_attention`` on the whole left-padded sequence (with and without the recency
bias ``λ (s − (N − 1))`` and a per-event aggregate bias), and against a float64
recurrence written here from docs/elastic.md."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import DISPATCHER_ARGS
from tests.ops.test_linrec_recurrent import (
    MODES, check_against_full, compiled, event_schedule, left_padded, per_row_events,
    right_and_left, run_schedule, summed_state,
)
from tfrs_linear import ops
from tfrs_linear.ops.dispatcher_recurrent import dispatcher_initial_state, dispatcher_step

SEQUENCE_ARGS = ("query", "key", "value_key", "value_value")
VARIANTS = ("plain", "recency", "recency+bias")


# ------------------------------------------------------------------ float64 oracle
def _log_parts(x):
    with np.errstate(divide="ignore"):
        return np.log(np.maximum(x, 0.0)), np.log(np.maximum(-x, 0.0))


def dispatcher_recurrence(t, slopes=None, bias=None):
    """float64 outputs ``[B, G, T, d_v]`` of one contiguous run of real events per row.

    docs/elastic.md's causal form with the recency decay written as ages: event t weighs
    event s <= t by ``exp(z_s + b_s − λ (t − s))``, normalised over s <= t. The common
    ``exp(−λ t)`` cancels, so the prefix softmax sums are the recurrence
    ``L_t = log(exp(L_{t−1}) + exp(z_t + b_t + λ t))`` (``np.logaddexp.accumulate``), and
    the signed value sums are two such recurrences (positive and negative parts).
    ``t`` maps :data:`DISPATCHER_ARGS` to arrays; ``slopes [H, k]``; ``bias [B, H, k, T]``.
    """
    q2, k1, q1, ik, iv, vk, vv = (np.asarray(t[n], np.float64) for n in DISPATCHER_ARGS)
    dk, n = q2.shape[-1], q2.shape[2]
    w = np.einsum("bhid,bhnd->bhin", q1, k1) / np.sqrt(dk)
    if bias is not None:
        w = w + bias
    if slopes is not None:
        w = w + np.asarray(slopes, np.float64)[None, :, :, None] * np.arange(n)
    log_z = np.logaddexp.accumulate(w, axis=3)  # [B, H, k, T]

    def prefix_mean(values):  # [B, H, T, G, d] -> [B, G, T, k, d], summed over h
        pos, neg = _log_parts(values[:, :, None])  # [B, H, 1, T, G, d]
        ww, lz = w[..., None, None], log_z[..., None, None]
        mean = (np.exp(np.logaddexp.accumulate(ww + pos, axis=3) - lz)
                - np.exp(np.logaddexp.accumulate(ww + neg, axis=3) - lz))
        return np.transpose(mean.sum(axis=1), (0, 3, 2, 1, 4))

    keys = ik[:, :, None] + prefix_mean(vk)
    vals = iv[:, :, None] + prefix_mean(vv)
    s = np.einsum("bgtd,bgtkd->bgtk", q2, keys) / np.sqrt(dk)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bgtk,bgtkd->bgtd", p / p.sum(-1, keepdims=True), vals)


# ------------------------------------------------------------------ cases
def dispatcher_events(rng, batch, heads, n_g, k, total, dk, dv, bias):
    shapes = {"query": [batch, n_g, total, dk], "key": [batch, heads, total, dk],
              "value_key": [batch, heads, total, n_g, dk],
              "value_value": [batch, heads, total, n_g, dv]}
    events = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
    events["key"] *= 2.0  # logits spanning several orders of magnitude of weights
    if bias:
        events["bias"] = rng.normal(size=(batch, heads, total, k)).astype(np.float32)
    static = {"interest_query": [batch, heads, k, dk], "interest_key": [batch, n_g, k, dk],
              "interest_value": [batch, n_g, k, dv]}
    return events, {n: rng.normal(size=s).astype(np.float32) for n, s in static.items()}


def make_step(static, slopes, mode):
    def step(state, x, mask):
        bias = None if "bias" not in x else tf.transpose(x["bias"], [0, 1, 3, 2])
        args = {**static, **{n: x[n] for n in SEQUENCE_ARGS}}
        return dispatcher_step(state, *(args[n] for n in DISPATCHER_ARGS), mask=mask,
                               aggregate_bias=bias, recency_slope=slopes)
    return compiled(step, mode)


def full_op(events, static, slopes, totals):
    """The causal op on the whole left-padded sequences (the recency bias as the op's)."""
    n = int(totals.max())
    padded = {name: left_padded(x, totals, n) for name, x in events.items()}
    mask = np.arange(n)[None, :] >= (n - totals)[:, None]
    bias = None
    if "bias" in padded:
        bias = np.transpose(padded["bias"], (0, 1, 3, 2))
    if slopes is not None:
        recency = slopes[None, :, :, None] * (np.arange(n) - (n - 1))
        bias = recency if bias is None else bias + recency
    args = {**static, **padded}
    return ops.dispatcher_attention(*(args[x] for x in DISPATCHER_ARGS), mask=mask,
                                    causal=True, chunk_size=8, aggregate_bias=bias).numpy()


def dispatcher_case(variant, mode, seed, steps, m, batch=4, heads=2, n_g=3, k=3, dk=3, dv=2):
    rng = np.random.default_rng(seed)
    history, plan, totals = event_schedule(rng, batch, 12, steps, m)
    events, static = dispatcher_events(rng, batch, heads, n_g, k, int(totals.max()), dk, dv,
                                       bias=variant.endswith("bias"))
    slopes = None
    if variant != "plain":  # 0 < λ <= ln 2, as the layer's; one interest without decay
        slopes = rng.uniform(0.0, np.log(2.0), size=(heads, k)).astype(np.float32)
        slopes[0, 0] = 0.0
    state = dispatcher_initial_state(batch, heads, k, n_g, dk, dv)
    shapes = {name: x.shape for name, x in state.items()}
    state, results = run_schedule(rng, make_step(static, slopes, mode), state, events,
                                  history, plan)
    assert {name: x.shape for name, x in state.items()} == shapes
    assert all(x.dtype == tf.float32 for x in state.values())
    check_against_full(results, full_op(events, static, slopes, totals), totals)
    for b, got in enumerate(per_row_events(results, totals)):
        row = {n: x[b:b + 1, :, :totals[b]] for n, x in events.items()}
        row.update({n: x[b:b + 1] for n, x in static.items()})
        bias = None if "bias" not in row else np.transpose(row["bias"], (0, 1, 3, 2))
        want = dispatcher_recurrence(row, slopes, bias)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state["count"].numpy() + state["count_comp"].numpy(), totals)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_steps_equal_the_causal_op(variant, mode):
    # Random history lengths (row 0 empty), 10 calls of 1..5 events, rows adding 0..m.
    dispatcher_case(variant, mode, seed=20 + 3 * VARIANTS.index(variant) + MODES.index(mode),
                    steps=10, m=None)


@pytest.mark.parametrize("m", (1, 3, 5))
@pytest.mark.parametrize("variant", ("plain", "recency+bias"))
def test_fifty_steps_of_m_events_in_xla(variant, m):
    dispatcher_case(variant, "xla", seed=40 + m, steps=50, m=m, batch=3, heads=1, n_g=2)


def test_empty_steps_change_nothing_and_output_zero():
    rng = np.random.default_rng(3)
    events, static = dispatcher_events(rng, 2, 1, 1, 2, 4, 3, 2, bias=False)
    step = make_step(static, np.full([1, 2], 0.5, np.float32), "eager")
    state, _ = step(dispatcher_initial_state(2, 1, 2, 1, 3, 2), events, np.ones([2, 4], bool))
    after, out = step(state, events, np.zeros([2, 4], bool))
    assert np.all(out.numpy() == 0.0)
    for name in state:
        np.testing.assert_array_equal(after[name].numpy(), state[name].numpy())


def test_bad_states_are_refused():
    rng = np.random.default_rng(4)
    events, static = dispatcher_events(rng, 2, 1, 1, 2, 4, 3, 2, bias=False)
    step = make_step(static, None, "eager")
    with pytest.raises(ValueError, match=r"state\['key_sum'\] has shape"):
        step(dispatcher_initial_state(2, 1, 2, 1, 4, 2), events, None)
    with pytest.raises(ValueError, match="a dispatcher state has the keys"):
        step({"max": tf.zeros([2, 1, 2])}, events, None)


def test_hundred_thousand_steps_stay_finite_and_match_float64():
    steps, batch, heads, n_g, k, dk, dv = 100_000, 2, 1, 1, 3, 2, 2
    rng = np.random.default_rng(8)
    seq = {n: rng.normal(size=(steps, batch) + s).astype(np.float32) for n, s in (
        ("query", (n_g, 1, dk)), ("key", (heads, 1, dk)), ("value_key", (heads, 1, n_g, dk)),
        ("value_value", (heads, 1, n_g, dv)))}
    seq["value_value"] += 1.0  # same-signed sums: where plain float32 drifts most
    static = {"interest_query": rng.normal(size=(batch, heads, k, dk)),
              "interest_key": rng.normal(size=(batch, n_g, k, dk)),
              "interest_value": rng.normal(size=(batch, n_g, k, dv))}
    static = {n: x.astype(np.float32) for n, x in static.items()}
    slopes = np.array([[0.0, 0.01, np.log(2.0)]], np.float32)  # none, slow, fastest decay

    @tf.function(jit_compile=True)
    def run(seq):
        def body(i, state, outs):
            args = {**static, **{n: x[i] for n, x in seq.items()}}
            state, out = dispatcher_step(state, *(args[n] for n in DISPATCHER_ARGS),
                                         recency_slope=slopes)
            return i + 1, state, outs.write(i, out[:, :, 0])
        outs = tf.TensorArray(tf.float32, size=steps)
        init = dispatcher_initial_state(batch, heads, k, n_g, dk, dv)
        _, state, outs = tf.while_loop(lambda i, *_: i < steps, body, (0, init, outs))
        return state, outs.stack()

    state, got = run(seq)
    got = got.numpy()  # [T, B, G, dv]
    assert np.all(np.isfinite(got)) and state["key_sum"].shape == [batch, heads, k, n_g, dk]
    rows = {n: np.moveaxis(x[:, :, :, 0], 0, 2) for n, x in seq.items()}  # [B, A, T, ...]
    want = np.moveaxis(dispatcher_recurrence({**static, **rows}, slopes), 2, 0)
    for part in (slice(None), slice(-1000, None)):
        err = np.abs(got[part] - want[part]).max() / np.abs(want[part]).max()
        assert err < 1e-4, err


def test_unknown_batch_and_event_counts_in_graph_mode():
    # What a serving signature traces: every batch and event axis unknown.
    heads, n_g, k, dk, dv = 2, 3, 3, 3, 2
    init1 = dispatcher_initial_state(1, heads, k, n_g, dk, dv)
    state_spec = {n: tf.TensorSpec((None,) + tuple(x.shape[1:]), tf.float32)
                  for n, x in init1.items()}
    seq_spec = {"query": (None, n_g, None, dk), "key": (None, heads, None, dk),
                "value_key": (None, heads, None, n_g, dk),
                "value_value": (None, heads, None, n_g, dv)}
    rng = np.random.default_rng(9)
    slopes = np.full([heads, k], 0.3, np.float32)
    for batch, m in ((3, 1), (2, 5)):
        events, static = dispatcher_events(rng, batch, heads, n_g, k, m, dk, dv, bias=False)
        step = make_step(static, slopes, "eager")
        graph = tf.function(step, input_signature=[
            state_spec, {n: tf.TensorSpec(s, tf.float32) for n, s in seq_spec.items()},
            tf.TensorSpec([None, None], tf.bool)])
        mask = np.arange(m)[None, :] < rng.integers(0, m + 1, batch)[:, None]
        init = dispatcher_initial_state(batch, heads, k, n_g, dk, dv)
        want_state, want = step(init, events, mask)
        got_state, got = graph(init, events, mask)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
        for name in want_state:
            np.testing.assert_allclose(got_state[name].numpy(), want_state[name].numpy(),
                                       rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant, mode", [("recency+bias", "graph"), ("plain", "xla"),
                                           ("recency", "eager")])
def test_advance_gives_the_steps_state_without_outputs(variant, mode):
    # From a state mid-stream, 7 events per row (4, 0, 7 and 2 of them real), right- or
    # left-padded: dispatcher_advance's state is dispatcher_step's.
    rng = np.random.default_rng(50 + VARIANTS.index(variant))
    batch, heads, n_g, k, dk, dv = 4, 2, 3, 3, 3, 2
    events, static = dispatcher_events(rng, batch, heads, n_g, k, 12, dk, dv,
                                       bias=variant.endswith("bias"))
    slopes = None if variant == "plain" else rng.uniform(
        0.0, np.log(2.0), size=(heads, k)).astype(np.float32)
    step = make_step(static, slopes, mode)
    first = {n: x[:, :, :5] for n, x in events.items()}
    state, _ = step(dispatcher_initial_state(batch, heads, k, n_g, dk, dv), first, None)
    counts = [4, 0, 7, 2]
    new = {n: right_and_left(x[:, :, 5:], counts, 2) for n, x in events.items()}
    mask_r, mask_l = right_and_left(np.ones([batch, 7], bool), counts, 1)
    want = summed_state(step(state, {n: r for n, (r, _) in new.items()}, mask_r)[0])

    def advance(state, x, mask):
        bias = None if "bias" not in x else tf.transpose(x["bias"], [0, 1, 3, 2])
        return ops.dispatcher_advance(state, x["key"], static["interest_query"],
                                      x["value_key"], x["value_value"], mask=mask,
                                      aggregate_bias=bias, recency_slope=slopes)

    advance = compiled(advance, mode)
    for side, mask in ((0, mask_r), (1, mask_l)):
        got = summed_state(advance(state, {n: pair[side] for n, pair in new.items()}, mask))
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}, {('right', 'left')[side]}")


@pytest.mark.parametrize("mode", ("graph", "xla"))
def test_advance_from_values_equals_advance_on_the_folded_values(mode):
    rng = np.random.default_rng(70)
    batch, heads, n_g, k, d, dk, dv, m = 3, 2, 2, 3, 5, 3, 4, 9
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    key, q1, values = normal(batch, heads, m, dk) * 2.0, normal(batch, heads, k, dk), normal(
        batch, heads, m, d)
    fold_k, fold_v = normal(heads, d, n_g, dk), normal(heads, d, n_g, dv)
    slopes = rng.uniform(0.0, 0.7, size=(heads, k)).astype(np.float32)
    state = dispatcher_initial_state(batch, heads, k, n_g, dk, dv)
    state = ops.dispatcher_advance(state, key, q1, *ops.fold_values(values, fold_k, fold_v),
                                   recency_slope=slopes)  # a state mid-stream
    mask = np.arange(m)[None, :] < np.array([9, 0, 4])[:, None]
    want = summed_state(ops.dispatcher_advance(
        state, key, q1, *ops.fold_values(values, fold_k, fold_v), mask=mask,
        recency_slope=slopes))
    got = summed_state(compiled(ops.dispatcher_advance_from_values, mode)(
        state, key, q1, values, fold_k, fold_v, mask=mask, recency_slope=slopes))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
