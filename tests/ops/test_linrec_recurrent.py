"""Causal LinRec's recurrent form (:mod:`tfrs_linear.ops.linrec_recurrent`): a history fed
step by step (``m`` events per call, rows right-padded) against the full causal op on the
whole left-padded sequence, and against a float64 recurrence written here from
docs/linrec.md (running sums of φ(k)vᵀ, φ(k)² and the count, per real event).

The schedule helpers (:func:`event_schedule`, :func:`run_schedule`) are shared with
``test_dispatcher_recurrent.py``."""

import numpy as np
import pytest
import tensorflow as tf

from tests.oracles import EPS, elu
from tfrs_linear import ops
from tfrs_linear.ops.linrec_recurrent import (
    compensated_add, linrec_advance, linrec_initial_state, linrec_step,
)

MODES = ("eager", "graph", "xla")


# ------------------------------------------------------------------ schedules
def event_schedule(rng, batch, max_history, steps, m=None):
    """Per row a history length (row 0 empty), then per step ``(m_i, real [B])``: how many
    events each row adds (0..m_i; row 1 always m_i). ``m=None``: m_i random in 1..5."""
    history = rng.integers(0, max_history + 1, batch)
    history[0] = 0
    plan = []
    for _ in range(steps):
        m_i = int(rng.integers(1, 6)) if m is None else m
        real = rng.integers(0, m_i + 1, batch)
        real[1 % batch] = m_i
        plan.append((m_i, real))
    totals = history + sum(real for _, real in plan)
    return history, plan, totals


def left_padded(x, totals, n):
    """``x [B, A, T, ...]`` (row b's events first, in order) left-padded to length ``n``."""
    out = np.zeros(x.shape[:2] + (n,) + x.shape[3:], x.dtype)
    for b, t in enumerate(totals):
        out[b, :, n - t:] = x[b, :, :t]
    return out


def step_slice(rng, x, starts, real, m):
    """Row b's events ``starts[b] .. starts[b] + real[b] - 1``, right-padded with noise."""
    out = rng.normal(size=x.shape[:2] + (m,) + x.shape[3:]).astype(x.dtype)
    for b in range(x.shape[0]):
        out[b, :, : real[b]] = x[b, :, starts[b]: starts[b] + real[b]]
    return out


def run_schedule(rng, step, state, events, history, plan):
    """Feeds the history (one call, right-padded) then every step of ``plan``.

    ``step(state, inputs, mask) -> (state, outputs [B, A, m, d])`` with ``inputs`` the
    events' slices by name. Returns ``(state, [(outputs, mask, starts)])`` per call.
    """
    calls = [(int(history.max()), history)] if history.max() > 0 else []
    starts = np.zeros(len(history), int)
    results = []
    for m, real in calls + list(plan):
        inputs = {name: step_slice(rng, x, starts, real, m) for name, x in events.items()}
        mask = np.arange(m)[None, :] < real[:, None]
        state, out = step(state, inputs, mask)
        results.append((out.numpy(), mask, starts.copy()))
        starts = starts + real
    return state, results


def check_against_full(results, full, totals, rtol=1e-5, atol=1e-5):
    """Every call's outputs at its real events equal ``full`` (``[B, A, N, d]``, the whole
    left-padded sequence) at the same events; padded slots are exactly 0."""
    n = full.shape[2]
    for out, mask, starts in results:
        assert np.all(out[~mask[:, None, :].repeat(out.shape[1], 1)] == 0.0)
        for b in range(out.shape[0]):
            real = int(mask[b].sum())
            pos = n - totals[b] + starts[b]
            np.testing.assert_allclose(out[b, :, :real], full[b, :, pos: pos + real],
                                       rtol=rtol, atol=atol)


def per_row_events(results, totals):
    """The calls' outputs at the real events, row by row, in event order."""
    rows = [[] for _ in totals]
    for out, mask, _ in results:
        for b in range(out.shape[0]):
            rows[b].append(out[b, :, : int(mask[b].sum())])
    return [np.concatenate(r, axis=1) for r in rows]


def compiled(fn, mode):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"))


# ------------------------------------------------------------------ float64 oracle
def linrec_recurrence(q, k, v, normalization, eps=EPS):
    """float64 outputs ``[B, H, T, d_v]`` of one contiguous run of real events per row.

    The recurrence of docs/linrec.md: after event t, ``S_t = S_{t-1} + K̃_tᵀ V_t``
    (``K̃ = φ(K)`` or, "token", ``φ(K) / ‖φ(K)‖_ε``), ``sq_t = sq_{t-1} + φ(K_t)²``,
    ``n_t = t + 1``; ``O_t = Q̂_t · S_t`` with ``Q̂_t = φ(Q_t) / (√d ‖φ(Q_t)‖_ε)``, and for
    "paper" divided elementwise by ``√n_t · max(√sq_t, ε)``. (The running sums are
    cumulative sums along the event axis.)
    """
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    d = q.shape[-1]
    pq, pk = elu(q), elu(k)
    q_hat = pq / np.maximum(np.linalg.norm(pq, axis=-1, keepdims=True), eps) / np.sqrt(d)
    if normalization == "token":
        pk = pk / np.maximum(np.linalg.norm(pk, axis=-1, keepdims=True), eps)
    else:
        sq = np.cumsum(pk ** 2, axis=2)
        n_t = np.arange(1, q.shape[2] + 1)[None, None, :, None]
        q_hat = q_hat / (np.sqrt(n_t) * np.maximum(np.sqrt(sq), eps))
    s_t = np.cumsum(np.einsum("bhtd,bhte->bhtde", pk, v), axis=2)
    return np.einsum("bhtd,bhtde->bhte", q_hat, s_t)


# ------------------------------------------------------------------ tests
def linrec_events(rng, batch, heads, total, d, dv):
    names_dims = (("query", d), ("key", d), ("value", dv))
    return {name: rng.normal(size=(batch, heads, total, w)).astype(np.float32)
            for name, w in names_dims}


def linrec_case(normalization, mode, seed, steps, m, batch=4, heads=2, d=4, dv=3):
    rng = np.random.default_rng(seed)
    history, plan, totals = event_schedule(rng, batch, 12, steps, m)
    events = linrec_events(rng, batch, heads, int(totals.max()), d, dv)
    step = compiled(lambda s, x, mask: linrec_step(
        s, x["query"], x["key"], x["value"], mask, normalization, chunk_size=4), mode)
    state = linrec_initial_state(batch, heads, d, dv, normalization)
    shapes = {name: x.shape for name, x in state.items()}
    state, results = run_schedule(rng, step, state, events, history, plan)
    assert {name: x.shape for name, x in state.items()} == shapes
    assert all(x.dtype == tf.float32 for x in state.values())
    n = int(totals.max())
    padded = {name: left_padded(x, totals, n) for name, x in events.items()}
    mask = np.arange(n)[None, :] >= (n - totals)[:, None]
    full = ops.linrec_attention(padded["query"], padded["key"], padded["value"], mask=mask,
                                causal=True, normalization=normalization, chunk_size=8)
    check_against_full(results, full.numpy(), totals)
    for b, got in enumerate(per_row_events(results, totals)):
        t = totals[b]
        want = linrec_recurrence(*(events[x][b:b + 1, :, :t] for x in ("query", "key", "value")),
                                 normalization)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state["count"].numpy() + state["count_comp"].numpy(), totals)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalization", ("paper", "token"))
def test_steps_equal_the_causal_op(normalization, mode):
    # Random history lengths (row 0 empty), 12 calls of 1..5 events, rows adding 0..m.
    linrec_case(normalization, mode, seed=1 + MODES.index(mode), steps=12, m=None)


@pytest.mark.parametrize("m", (1, 3, 5))
@pytest.mark.parametrize("normalization", ("paper", "token"))
def test_fifty_steps_of_m_events_in_xla(normalization, m):
    linrec_case(normalization, "xla", seed=10 + m, steps=50, m=m, batch=3, heads=1)


def test_state_is_float32_and_outputs_keep_the_input_dtype():
    rng = np.random.default_rng(5)
    q, k, v = (rng.normal(size=(2, 1, 3, 4)) for _ in range(3))
    want = ops.linrec_attention(q, k, v, causal=True).numpy()
    for dtype, tol in ((tf.float64, 1e-6), (tf.float16, 2e-3), (tf.bfloat16, 2e-2)):
        state = linrec_initial_state(2, 1, 4, 4)
        state, out = linrec_step(state, *(tf.cast(x, dtype) for x in (q, k, v)))
        assert out.dtype == dtype
        assert all(x.dtype == tf.float32 for x in state.values())
        np.testing.assert_allclose(tf.cast(out, tf.float64).numpy(), want, rtol=tol, atol=tol)


def test_bad_states_and_arguments_are_refused():
    x = tf.zeros([2, 1, 3, 4])
    with pytest.raises(ValueError, match="'token' state has the keys"):
        linrec_step(linrec_initial_state(2, 1, 4, 4, "paper"), x, x, x, normalization="token")
    with pytest.raises(ValueError, match=r"state\['kv_sum'\] has shape"):
        linrec_step(linrec_initial_state(2, 1, 4, 5), x, x, x)
    with pytest.raises(ValueError, match="must be float32"):
        state = {n: tf.cast(s, tf.float64) for n, s in linrec_initial_state(2, 1, 4, 4).items()}
        linrec_step(state, x, x, x)
    with pytest.raises(ValueError, match="normalization must be one of"):
        linrec_initial_state(2, 1, 4, 4, "row")
    with pytest.raises(ValueError, match="query"):
        linrec_step(linrec_initial_state(2, 1, 4, 4), x[0], x, x)


def test_compensated_add_keeps_the_low_digits_under_xla():
    # 1e8 + 1 + 1 + ... in float32: a plain sum never moves (ulp(1e8) = 8); the
    # compensated one is exact. Under XLA too (no reassociation of (t - s) - y).
    @tf.function(jit_compile=True)
    def run(total):
        def body(i, total, comp, plain):
            total, comp = compensated_add(total, comp, tf.ones_like(total))
            return i + 1, total, comp, plain + 1.0
        zero = tf.zeros_like(total)
        return tf.while_loop(lambda i, *_: i < 1000, body, (0, total, zero, total))[1:]

    total, comp, plain = run(tf.constant([1e8], tf.float32))
    assert plain.numpy()[0] == np.float32(1e8)
    assert float(total.numpy()[0]) + float(comp.numpy()[0]) == 1e8 + 1000


@pytest.mark.parametrize("normalization", ("paper", "token"))
def test_hundred_thousand_steps_stay_finite_and_match_float64(normalization):
    steps, batch, heads, d, dv = 100_000, 2, 1, 3, 2
    rng = np.random.default_rng(7)
    q, k = (rng.normal(size=(steps, batch, heads, 1, d)).astype(np.float32) for _ in range(2))
    v = (1.0 + 0.5 * rng.normal(size=(steps, batch, heads, 1, dv))).astype(np.float32)

    @tf.function(jit_compile=True)
    def run(q, k, v):
        def body(i, state, outs):
            state, out = linrec_step(state, q[i], k[i], v[i], normalization=normalization)
            return i + 1, state, outs.write(i, out[:, :, 0])
        outs = tf.TensorArray(tf.float32, size=steps)
        init = linrec_initial_state(batch, heads, d, dv, normalization)
        _, state, outs = tf.while_loop(lambda i, *_: i < steps, body, (0, init, outs))
        return state, outs.stack()

    state, got = run(q, k, v)
    got = got.numpy()  # [T, B, H, dv]
    assert np.all(np.isfinite(got))
    assert state["kv_sum"].shape == [batch, heads, d, dv]
    to_seq = lambda x: np.transpose(x[..., 0, :], (1, 2, 0, 3))  # noqa: E731  [B, H, T, .]
    want = np.transpose(linrec_recurrence(to_seq(q), to_seq(k), to_seq(v), normalization),
                        (2, 0, 1, 3))
    for part in (slice(None), slice(-1000, None)):
        err = np.abs(got[part] - want[part]).max() / np.abs(want[part]).max()
        assert err < 1e-4, err


@pytest.mark.parametrize("normalization", ("paper", "token"))
def test_unknown_batch_and_event_counts_in_graph_mode(normalization):
    # What a serving signature traces: [None, H, None, d] inputs, [None, ...] state.
    heads, d, dv = 2, 4, 3
    spec = lambda *s: tf.TensorSpec(s, tf.float32)  # noqa: E731
    state_spec = {n: spec(None, *x.shape[1:])
                  for n, x in linrec_initial_state(1, heads, d, dv, normalization).items()}
    step = tf.function(
        lambda s, q, k, v, mask: linrec_step(s, q, k, v, mask, normalization),
        input_signature=[state_spec, spec(None, heads, None, d), spec(None, heads, None, d),
                         spec(None, heads, None, dv), tf.TensorSpec([None, None], tf.bool)])
    rng = np.random.default_rng(6)
    for batch, m in ((3, 1), (2, 5)):
        q, k = (rng.normal(size=(batch, heads, m, d)).astype(np.float32) for _ in range(2))
        v = rng.normal(size=(batch, heads, m, dv)).astype(np.float32)
        mask = np.arange(m)[None, :] < rng.integers(0, m + 1, batch)[:, None]
        init = linrec_initial_state(batch, heads, d, dv, normalization)
        want_state, want = linrec_step(init, q, k, v, mask, normalization)
        got_state, got = step(init, q, k, v, mask)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
        for name in want_state:
            np.testing.assert_allclose(got_state[name].numpy(), want_state[name].numpy(),
                                       rtol=1e-6, atol=1e-6)


def right_and_left(x, counts, axis):
    """``x`` with each row's first ``counts`` events kept (right-padded, zeros after) and
    the same events left-padded, along the events ``axis``."""
    right, left = np.zeros_like(x), np.zeros_like(x)
    for b, n in enumerate(counts):
        take = [slice(None)] * x.ndim
        take[0], take[axis] = b, slice(0, n)
        put = list(take)
        put[axis] = slice(x.shape[axis] - n, x.shape[axis])
        right[tuple(take)] = x[tuple(take)]
        left[tuple(put)] = x[tuple(take)]
    return right, left


def summed_state(state):
    """Each running sum as ``sum + compensation``; ``max`` as it is."""
    return {n: state[n].numpy() + (state[n + "_comp"].numpy() if n + "_comp" in state else 0)
            for n in state if not n.endswith("_comp")}


@pytest.mark.parametrize("normalization, mode", [("paper", "graph"), ("token", "xla"),
                                                 ("paper", "eager")])
def test_advance_gives_the_steps_state_without_outputs(normalization, mode):
    # From a state mid-stream, 7 events per row (4, 0, 7 and 2 of them real), right- or
    # left-padded (the sums do not depend on the order): linrec_advance's state is
    # linrec_step's.
    rng = np.random.default_rng(60)
    events = linrec_events(rng, 4, 2, 12, 4, 3)
    state = linrec_initial_state(4, 2, 4, 3, normalization)
    state, _ = linrec_step(state, *(events[n][:, :, :5] for n in ("query", "key", "value")),
                           normalization=normalization)
    counts = [4, 0, 7, 2]
    new = {n: right_and_left(x[:, :, 5:], counts, 2) for n, x in events.items()}
    mask_r, mask_l = right_and_left(np.ones([4, 7], bool), counts, 1)
    want = summed_state(linrec_step(state, *(new[n][0] for n in ("query", "key", "value")),
                                    mask=mask_r, normalization=normalization)[0])
    advance = compiled(lambda s, k, v, mask: linrec_advance(
        s, k, v, mask=mask, normalization=normalization), mode)
    for side, mask in ((0, mask_r), (1, mask_l)):
        got = summed_state(advance(state, new["key"][side], new["value"][side], mask))
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}, {('right', 'left')[side]}")
