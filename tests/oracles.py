"""Independent float64 NumPy oracles shared by the tests of the ops and the layers.

None of the library's code is used here: the oracles follow docs/linrec.md and
docs/elastic.md literally, build every N x N matrix and every position's prefix weights
explicitly (O(N²)), and are the reference both the efficient ops and
:mod:`tfrs_linear.ops.reference` are tested against (a bug in the library's own dense
references must not hide on both sides of a test).
"""

import numpy as np

EPS = 1e-6


# --------------------------------------------------------------------------- generic
def numeric_gradient(fn, arr, h=1e-6):
    """Central differences of the scalar ``fn`` at ``arr`` (float64)."""
    grad = np.zeros_like(arr)
    for idx in np.ndindex(*arr.shape):
        plus, minus = arr.copy(), arr.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (fn(plus) - fn(minus)) / (2 * h)
    return grad


def random_mask(rng, batch, length, min_real=1):
    """Rows with random left and right padding (at least ``min_real`` real items)."""
    mask = np.zeros([batch, length], bool)
    for b in range(batch):
        n_real = rng.integers(min_real, length + 1)
        left = rng.integers(0, length - n_real + 1)
        mask[b, left:left + n_real] = True
    return mask


def softmax_rows(logits, valid):
    """Explicit softmax over the last axis restricted to ``valid``; no valid entry -> 0."""
    out = np.zeros_like(logits)
    it = np.ndindex(*logits.shape[:-1])
    for idx in it:
        row, ok = logits[idx], valid[idx]
        if ok.any():
            e = np.exp(row[ok] - row[ok].max())
            out[idx][ok] = e / e.sum()
    return out


def layer_norm(z, gamma, beta, eps):
    mean = z.mean(-1, keepdims=True)
    var = ((z - mean) ** 2).mean(-1, keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * gamma + beta


def proj(z, kernel, bias):
    """Per-head projection ``[H, L, e]`` of ``z [L, d]``: ``kernel [d, H, e]``, ``bias [H, e]``."""
    return np.einsum("ld,dhe->hle", z, kernel) + bias[:, None, :]


# --------------------------------------------------------------------------- LinRec
def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def dense_matrix(q, k, mask, causal, normalization, eps=EPS):
    """LinRec's implicit attention matrix A [B, H, T, S], built position by position."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    b_, h_, t_, d = q.shape
    s_ = k.shape[2]
    m = np.ones((b_, s_)) if mask is None else np.asarray(mask, np.float64)
    pq = elu(q)
    pk = elu(k) * m[:, None, :, None]
    qh = pq / np.maximum(np.linalg.norm(pq, axis=-1, keepdims=True), eps)
    a = np.zeros((b_, h_, t_, s_))
    for b in range(b_):
        for h in range(h_):
            if normalization == "token":
                kh = pk[b, h] / np.maximum(np.linalg.norm(pk[b, h], axis=-1, keepdims=True), eps)
                a[b, h] = qh[b, h] @ kh.T / np.sqrt(d)
                if causal:
                    a[b, h] = np.tril(a[b, h])
            elif not causal:
                n = m[b].sum()
                col = np.maximum(np.linalg.norm(pk[b, h], axis=0), eps)
                kh = pk[b, h] / (np.sqrt(max(n, 1.0)) * col)
                a[b, h] = (qh[b, h] / np.sqrt(d)) @ kh.T
            else:
                for t in range(t_):
                    n_t = m[b, : t + 1].sum()
                    col_t = np.maximum(np.linalg.norm(pk[b, h, : t + 1], axis=0), eps)
                    kh = pk[b, h, : t + 1] / (np.sqrt(max(n_t, 1.0)) * col_t)
                    a[b, h, t, : t + 1] = (qh[b, h, t] / np.sqrt(d)) @ kh.T
    if t_ == s_:
        a = a * m[:, None, :, None]  # padded queries output 0
    return a


def dense_attention(q, k, v, mask, causal, normalization, eps=EPS):
    """LinRec attention through :func:`dense_matrix`: ``A @ (masked v)``."""
    v = np.asarray(v, np.float64)
    if mask is not None:
        v = v * np.asarray(mask, np.float64)[:, None, :, None]
    return dense_matrix(q, k, mask, causal, normalization, eps) @ v


def random_padding_mask(rng, batch, length):
    """Rows with left padding, right padding, both, none, and very short sequences."""
    mask = np.zeros((batch, length), bool)
    for b in range(batch):
        n = int(rng.integers(1, length + 1))
        kind = b % 3
        start = 0 if kind == 0 else (length - n if kind == 1 else int(rng.integers(0, length - n + 1)))
        mask[b, start : start + n] = True
    return mask


def qkv(rng, b=3, h=2, n=11, d=4, dv=5, dtype=np.float64):
    return (
        rng.standard_normal((b, h, n, d)).astype(dtype),
        rng.standard_normal((b, h, n, d)).astype(dtype),
        rng.standard_normal((b, h, n, dv)).astype(dtype),
    )


# --------------------------------------------------------------------------- ELASTIC
def lda_reference(w, x, mask, causal, interests=None, slopes=None):
    """Dense float64 LinearDispatcherAttention, one batch row at a time.

    ``w`` are the layer's weights by attribute name (plus ``gamma``, ``beta`` and ``eps``
    of the interest LayerNorm when non-causal). Returns ``(outputs, interests)``.
    ``slopes [H, k]``: the recency bias written as what it should amount to, a decay
    ``exp(-slope · age)`` of every aggregate weight, the age of item ``s`` seen from
    position ``t`` being ``t - s`` (causal) or ``N - 1 - s`` (non-causal).
    """
    x = np.asarray(x, np.float64)
    batch, n, _ = x.shape
    dk = w["query_1_kernel"].shape[-1]
    outs, final = [], []
    for b in range(batch):
        xb, m = x[b], np.asarray(mask[b], bool)
        p = w["interest_tokens"] if interests is None else np.asarray(interests[b], np.float64)
        q1 = proj(p, w["query_1_kernel"], w["query_1_bias"])  # [H, k, dk]
        k1 = proj(xb, w["key_1_kernel"], w["key_1_bias"])  # [H, N, dk]
        v1 = proj(xb, w["value_1_kernel"], w["value_1_bias"])  # [H, N, dv]
        q2 = proj(xb, w["query_2_kernel"], w["query_2_bias"])  # [H, N, dk]
        logits = np.einsum("hid,hnd->hin", q1, k1) / np.sqrt(dk)
        lam = np.zeros(logits.shape[:2]) if slopes is None else np.asarray(slopes, np.float64)
        if not causal:
            logits = logits - lam[:, :, None] * (n - 1 - np.arange(n))
            valid = np.broadcast_to(m, logits.shape)
            a = softmax_rows(logits, valid)  # [H, k, N]
            p_new = p + np.einsum("hin,hnv,hvd->id", a, v1, w["output_1_kernel"])
            p_new = layer_norm(p_new, w["gamma"], w["beta"], w["eps"])
            k2 = proj(p_new, w["key_2_kernel"], w["key_2_bias"])
            v2 = proj(p_new, w["value_2_kernel"], w["value_2_bias"])
            s = np.einsum("hnd,hid->hni", q2, k2) / np.sqrt(dk)
            attn = softmax_rows(s, np.ones_like(s, bool))
            y = np.einsum("hni,hiv->hnv", attn, v2)
            final.append(p_new)
        else:
            # Explicit per-position prefix weights: a[h, i, t, s], s <= t and real.
            valid = np.tril(np.ones([n, n], bool)) & m[None, :]
            age = np.arange(n)[:, None] - np.arange(n)[None, :]  # [t, s]
            a = softmax_rows(
                logits[:, :, None, :] - lam[:, :, None, None] * age,
                np.broadcast_to(valid, logits.shape[:2] + (n, n)),
            )
            p_t = p[None] + np.einsum("hits,hsv,hvd->tid", a, v1, w["output_1_kernel"])
            y = np.zeros([q2.shape[0], n, w["value_2_kernel"].shape[-1]])
            for t in range(n):
                k2 = proj(p_t[t], w["key_2_kernel"], w["key_2_bias"])
                v2 = proj(p_t[t], w["value_2_kernel"], w["value_2_bias"])
                s = np.einsum("hd,hid->hi", q2[:, t], k2) / np.sqrt(dk)
                e = np.exp(s - s.max(-1, keepdims=True))
                y[:, t] = np.einsum("hi,hiv->hv", e / e.sum(-1, keepdims=True), v2)
            final.append(p_t[-1])
        out = np.einsum("hnv,hvd->nd", y, w["output_2_kernel"]) + w["output_2_bias"]
        outs.append(out * m[:, None])
    return np.stack(outs), np.stack(final)


DISPATCHER_ARGS = ("query", "key", "interest_query", "interest_key", "interest_value",
                   "value_key", "value_value")


def dispatcher_op_reference(t, mask, causal=True, bias=None):
    """Dense float64 ``dispatcher_attention`` with explicit (prefix) softmaxes.

    ``t`` maps the names of :data:`DISPATCHER_ARGS` to arrays; ``bias`` (None or
    broadcastable to ``[B, H, k, N]``) is added to the scaled aggregate logits.
    """
    q2, k1, q1, ik, iv, vk, vv = (np.asarray(t[name], np.float64) for name in DISPATCHER_ARGS)
    batch, _, n, dk = q2.shape
    out = np.zeros([batch, q2.shape[1], n, iv.shape[-1]])
    for b in range(batch):
        m = np.asarray(mask[b], bool)
        logits = np.einsum("hid,hnd->hin", q1[b], k1[b]) / np.sqrt(dk)
        if bias is not None:
            full = np.broadcast_to(np.asarray(bias, np.float64), (batch,) + logits.shape)
            logits = logits + full[b]
        pairs = np.tril(np.ones([n, n], bool)) if causal else np.ones([n, n], bool)
        valid = pairs & m[None, :]  # [t, s]
        w = softmax_rows(
            np.broadcast_to(logits[:, :, None, :], logits.shape[:2] + (n, n)).copy(),
            np.broadcast_to(valid, logits.shape[:2] + (n, n)),
        )  # [h, i, t, s]
        keys = ik[b][:, None] + np.einsum("hits,hsgd->gtid", w, vk[b])  # [g, t, i, dk]
        vals = iv[b][:, None] + np.einsum("hits,hsgd->gtid", w, vv[b])
        s = np.einsum("gtd,gtid->gti", q2[b], keys) / np.sqrt(dk)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[b] = np.einsum("gti,gtid->gtd", p, vals) * m[None, :, None]
    return out


def dispatcher_op_inputs(rng, batch=3, heads=2, n=23, k=4, dk=3, dv=5, dtype=np.float64):
    """Random inputs of ``dispatcher_attention`` and a mask with an all-padding row."""
    shapes = {
        "query": [batch, heads, n, dk], "key": [batch, heads, n, dk],
        "interest_query": [batch, heads, k, dk], "interest_key": [batch, heads, k, dk],
        "interest_value": [batch, heads, k, dv], "value_key": [batch, heads, n, heads, dk],
        "value_value": [batch, heads, n, heads, dv],
    }
    t = {name: rng.normal(size=s).astype(dtype) for name, s in shapes.items()}
    mask = random_mask(rng, batch, n)
    mask[0, :] = False  # all padding
    mask[0, 3:7] = True  # a short real stretch between padding
    return t, mask


def counter_keep_mask(size, key, rate):
    """The keep mask of tfrs_linear.ops.counter_hash.keep_mask for ``size`` elements,
    written again in NumPy (the oracle of both CounterDropouts)."""
    with np.errstate(over="ignore"):
        k0, k1 = (np.uint32(int(k) & 0xFFFFFFFF) for k in key)
        x = np.arange(size, dtype=np.uint64).astype(np.uint32)
        x = x * np.uint32(0x9E3779B9) + k0
        x = (x ^ (x >> np.uint32(16))) * np.uint32(0x7FEB352D)
        x = ((x ^ (x >> np.uint32(15))) ^ k1) * np.uint32(0x846CA68B)
        x = x ^ (x >> np.uint32(16))
    return x >= np.uint32(min(round(rate * 2**32), 2**32 - 1))


def _lowbias32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def counter_mixed_key(seed):
    """tfrs_linear.ops.counter_hash.mixed_key in NumPy: ``a = f(k1 + f(k0))``,
    ``b = f(a + 0x9E3779B9)`` with ``f`` the lowbias32 finaliser."""
    with np.errstate(over="ignore"):
        k0, k1 = (np.uint32(int(k) & 0xFFFFFFFF) for k in seed)
        a = _lowbias32(np.uint32(k1 + _lowbias32(k0)))
        return a, _lowbias32(np.uint32(a + np.uint32(0x9E3779B9)))

