"""Independent dense float64 NumPy references of the Keras 3 layers.

None of the library's code is used: LinRec builds its implicit N x N matrix position by
position (explicit prefix norms in causal mode, after tests/test_linrec.py), ELASTIC
builds every softmax explicitly (per-position prefix weights in causal mode, after
tests/test_elastic.py), the memory searches all n² slots by brute force, and the block
and encoder are composed from these.
"""

import math

import numpy as np

_erf = np.vectorize(math.erf)


def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(z, gamma, beta, eps):
    mean = z.mean(-1, keepdims=True)
    var = ((z - mean) ** 2).mean(-1, keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * gamma + beta


def softmax_rows(logits, valid):
    """Explicit softmax over the last axis restricted to ``valid``; no valid entry -> 0."""
    out = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape[:-1]):
        row, ok = logits[idx], valid[idx]
        if ok.any():
            e = np.exp(row[ok] - row[ok].max())
            out[idx][ok] = e / e.sum()
    return out


def random_mask(rng, batch, length, min_real=1):
    """Rows with random left and right padding (at least ``min_real`` real items)."""
    mask = np.zeros([batch, length], bool)
    for b in range(batch):
        n_real = rng.integers(min_real, length + 1)
        left = rng.integers(0, length - n_real + 1)
        mask[b, left:left + n_real] = True
    return mask


def numeric_gradient(fn, arr, h=1e-6):
    """Central differences of the scalar ``fn`` at ``arr`` (float64)."""
    grad = np.zeros_like(arr)
    for idx in np.ndindex(*arr.shape):
        plus, minus = arr.copy(), arr.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (fn(plus) - fn(minus)) / (2 * h)
    return grad


# ----------------------------------------------------------------------------- LinRec
def linrec_matrix(q, k, key_mask, query_mask, causal, normalization, eps=1e-6):
    """The implicit LinRec matrix ``[B, H, T, S]`` (docs/linrec.md), row by row."""
    b_, h_, t_, d = q.shape
    s_ = k.shape[2]
    m = np.ones((b_, s_)) if key_mask is None else np.asarray(key_mask, np.float64)
    pq, pk = elu(q), elu(k) * m[:, None, :, None]
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
                col = np.maximum(np.linalg.norm(pk[b, h], axis=0), eps)
                kh = pk[b, h] / (np.sqrt(max(m[b].sum(), 1.0)) * col)
                a[b, h] = (qh[b, h] / np.sqrt(d)) @ kh.T
            else:
                for t in range(t_):
                    col_t = np.maximum(np.linalg.norm(pk[b, h, : t + 1], axis=0), eps)
                    kh = pk[b, h, : t + 1] / (np.sqrt(max(m[b, : t + 1].sum(), 1.0)) * col_t)
                    a[b, h, t, : t + 1] = (qh[b, h, t] / np.sqrt(d)) @ kh.T
    if query_mask is not None:
        a = a * np.asarray(query_mask, np.float64)[:, None, :, None]
    return a


def _project(x, kernel, bias):
    """``[B, L, dim]`` by ``[dim, H, e]`` (+ ``[H, e]``) -> ``[B, H, L, e]``."""
    y = np.einsum("bld,dhe->bhle", x, kernel)
    return y if bias is None else y + bias[None, :, None, :]


def mha_weights(layer):
    """The projections of a (LinRec)MultiHeadAttention as float64 arrays."""
    def arr(v):
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float64)

    w = {}
    for name, dense in (("query", layer.query_dense), ("key", layer.key_dense),
                        ("value", layer.value_dense), ("output", layer.output_dense)):
        w[name + "_kernel"] = arr(dense.kernel)
        w[name + "_bias"] = None if dense.bias is None else arr(dense.bias)
    return w


def _mha_projections(w, query, value):
    q = _project(query, w["query_kernel"], w["query_bias"])
    k = _project(value, w["key_kernel"], w["key_bias"])
    v = _project(value, w["value_kernel"], w["value_bias"])
    return q, k, v


def _mha_output(w, heads_out):
    out = np.einsum("bhtv,hvd->btd", heads_out, w["output_kernel"])
    return out if w["output_bias"] is None else out + w["output_bias"]


def linrec_layer(w, query, value, key_mask, query_mask, causal, normalization):
    """LinRecAttention on ``[B, T, dim]`` / ``[B, S, dim]`` (value used as key)."""
    q, k, v = _mha_projections(w, np.asarray(query, np.float64), np.asarray(value, np.float64))
    if key_mask is not None:
        v = v * np.asarray(key_mask, np.float64)[:, None, :, None]
    a = linrec_matrix(q, k, key_mask, query_mask, causal, normalization)
    return _mha_output(w, a @ v), a


def softmax_layer(w, x, mask, causal):
    """Softmax MultiHeadAttention self-attention with a padding (and causal) mask."""
    x = np.asarray(x, np.float64)
    q, k, v = _mha_projections(w, x, x)
    n = x.shape[1]
    logits = np.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(q.shape[-1])
    m = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    valid = m[:, None, :, None] & m[:, None, None, :]
    if causal:
        valid = valid & np.tril(np.ones((n, n), bool))
    a = softmax_rows(logits, np.broadcast_to(valid, logits.shape))
    return _mha_output(w, a @ v)


# ----------------------------------------------------------------------------- ELASTIC
def lda_weights(layer):
    names = ("query_1_kernel", "query_1_bias", "key_1_kernel", "key_1_bias",
             "value_1_kernel", "value_1_bias", "output_1_kernel", "query_2_kernel",
             "query_2_bias", "key_2_kernel", "key_2_bias", "value_2_kernel",
             "value_2_bias", "output_2_kernel", "output_2_bias", "interest_tokens")
    w = {}
    for name in names:
        var = getattr(layer, name)
        w[name] = None if var is None else np.asarray(var.numpy(), np.float64)
    if layer.interest_norm is not None:
        w["gamma"] = np.asarray(layer.interest_norm.gamma.numpy(), np.float64)
        w["beta"] = np.asarray(layer.interest_norm.beta.numpy(), np.float64)
        w["eps"] = layer.interest_norm.epsilon
    w["slopes"] = None
    if layer.recency_raw is not None:
        raw = np.asarray(layer.recency_raw.numpy(), np.float64)
        w["slopes"] = math.log(2.0) / (1.0 + np.exp(-raw))
    return w


def _proj1(z, kernel, bias):
    """``[L, d]`` by ``[d, H, e]`` -> ``[H, L, e]``."""
    return np.einsum("ld,dhe->hle", z, kernel) + (0.0 if bias is None else bias[:, None, :])


def lda(w, x, mask, causal, interests=None):
    """Dense LinearDispatcherAttention, one batch row at a time: ``(outputs, interests)``.

    The recency bias is written as what it amounts to: a decay ``exp(-slope · age)`` of
    every aggregate weight, the age of item ``s`` seen from ``t`` being ``t - s``
    (causal) or ``N - 1 - s`` (non-causal).
    """
    x = np.asarray(x, np.float64)
    batch, n, _ = x.shape
    heads, dk = w["query_1_kernel"].shape[1:]
    mask = np.ones((batch, n), bool) if mask is None else np.asarray(mask, bool)
    outs, final = [], []
    for b in range(batch):
        xb, m = x[b], mask[b]
        p = w["interest_tokens"] if interests is None else np.asarray(interests[b], np.float64)
        k_int = p.shape[0]
        q1 = _proj1(p, w["query_1_kernel"], w["query_1_bias"])
        k1 = _proj1(xb, w["key_1_kernel"], w["key_1_bias"])
        v1 = _proj1(xb, w["value_1_kernel"], w["value_1_bias"])
        q2 = _proj1(xb, w["query_2_kernel"], w["query_2_bias"])
        logits = np.einsum("hid,hnd->hin", q1, k1) / np.sqrt(dk)
        lam = np.zeros([heads, k_int]) if w["slopes"] is None else w["slopes"]
        if not causal:
            logits = logits - lam[:, :, None] * (n - 1 - np.arange(n))
            a = softmax_rows(logits, np.broadcast_to(m, logits.shape))
            p_new = p + np.einsum("hin,hnv,hvd->id", a, v1, w["output_1_kernel"])
            p_new = layer_norm(p_new, w["gamma"], w["beta"], w["eps"])
            k2 = _proj1(p_new, w["key_2_kernel"], w["key_2_bias"])
            v2 = _proj1(p_new, w["value_2_kernel"], w["value_2_bias"])
            s = np.einsum("hnd,hid->hni", q2, k2) / np.sqrt(dk)
            y = np.einsum("hni,hiv->hnv", softmax_rows(s, np.ones_like(s, bool)), v2)
            final.append(p_new)
        else:
            valid = np.tril(np.ones([n, n], bool)) & m[None, :]
            age = np.arange(n)[:, None] - np.arange(n)[None, :]
            a = softmax_rows(logits[:, :, None, :] - lam[:, :, None, None] * age,
                             np.broadcast_to(valid, (heads, k_int, n, n)))
            p_t = p[None] + np.einsum("hits,hsv,hvd->tid", a, v1, w["output_1_kernel"])
            y = np.zeros([heads, n, w["value_2_kernel"].shape[-1]])
            for t in range(n):
                k2 = _proj1(p_t[t], w["key_2_kernel"], w["key_2_bias"])
                v2 = _proj1(p_t[t], w["value_2_kernel"], w["value_2_bias"])
                s = np.einsum("hd,hid->hi", q2[:, t], k2) / np.sqrt(dk)
                y[:, t] = np.einsum("hi,hiv->hv", softmax_rows(s, np.ones_like(s, bool)), v2)
            final.append(p_t[-1])
        out = np.einsum("hnv,hvd->nd", y, w["output_2_kernel"])
        if w["output_2_bias"] is not None:
            out = out + w["output_2_bias"]
        outs.append(out * m[:, None])
    return np.stack(outs), np.stack(final)


def memory_weights(layer):
    return {name: np.asarray(getattr(layer, name).numpy(), np.float64)
            for name in ("query_kernel", "query_bias", "sub_keys_1", "sub_keys_2",
                         "memory", "base_tokens")}


def memory(w, x, mask, num_interests, top_m):
    """Brute force over all n² slots: ``(p0 [B, k, dim], indices [B, k, m])``."""
    x = np.asarray(x, np.float64)
    m = np.ones(x.shape[:2]) if mask is None else np.asarray(mask, np.float64)
    mean = (x * m[..., None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1.0)
    q = (mean @ w["query_kernel"] + w["query_bias"]).reshape(x.shape[0], num_interests, -1)
    half = q.shape[-1] // 2
    k1, k2 = w["sub_keys_1"], w["sub_keys_2"]
    full = (q[..., :half] @ k1.T)[..., :, None] + (q[..., half:] @ k2.T)[..., None, :]
    full = full.reshape(x.shape[0], num_interests, -1)  # slot index i1 * n + i2
    best = np.argsort(-full, axis=-1, kind="stable")[..., :top_m]
    top = np.take_along_axis(full, best, -1)
    wts = np.exp(top - top.max(-1, keepdims=True))
    wts /= wts.sum(-1, keepdims=True)
    rows = w["memory"][best]
    return w["base_tokens"][None] + np.einsum("bkm,bkmd->bkd", wts, rows), best


# ----------------------------------------------------------------------- block, encoder
def block_weights(block):
    def arr(v):
        return np.asarray(v.numpy(), np.float64)

    att = block.attention_layer
    w = {"attention": lda_weights(att) if block.attention == "elastic" else mha_weights(att)}
    for name in ("attention_norm", "ffn_norm"):
        norm = getattr(block, name)
        w[name] = (arr(norm.gamma), arr(norm.beta), norm.epsilon)
    for name in ("ffn_inner", "ffn_outer"):
        dense = getattr(block, name)
        w[name] = (arr(dense.kernel), arr(dense.bias))
    return w


def block(w, x, mask, attention, causal, normalization="paper", interests=None):
    """TransformerBlock: ``(outputs, interests or None)``."""
    x = np.asarray(x, np.float64)
    mask = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    if attention == "softmax":
        y = softmax_layer(w["attention"], x, mask, causal)
    elif attention == "linrec":
        y = linrec_layer(w["attention"], x, x, mask, mask, causal, normalization)[0]
    else:
        y, interests = lda(w["attention"], x, mask, causal, interests)
    h = layer_norm(x + y, *w["attention_norm"])
    f = gelu(h @ w["ffn_inner"][0] + w["ffn_inner"][1]) @ w["ffn_outer"][0] + w["ffn_outer"][1]
    out = layer_norm(h + f, *w["ffn_norm"]) * mask[..., None]
    return out, (interests if attention == "elastic" else None)


def encoder(enc, ids):
    """SequenceEncoder from its layers' weights (``enc`` a built Keras 3 encoder)."""
    ids = np.asarray(ids)
    mask = ids != 0
    item = np.asarray(enc.item_embedding.embeddings.numpy(), np.float64)
    x = item[ids]
    if enc.positions != "none":
        # from_end: the last column is row max_len - 1; from_start: a row's i-th real item
        # is row i (clipped at max_len - 1), however wide the input.
        pos = np.asarray(enc.position_embedding.embeddings.numpy(), np.float64)
        rows = (np.arange(enc.max_len - ids.shape[1], enc.max_len)[None]
                if enc.positions == "from_end" else
                np.clip(np.cumsum(mask, axis=1) - 1, 0, enc.max_len - 1))
        x = x + pos[rows]
    norm = enc.input_norm
    x = layer_norm(x, np.asarray(norm.gamma.numpy(), np.float64),
                   np.asarray(norm.beta.numpy(), np.float64), norm.epsilon)
    x = x * mask[..., None]
    interests = None
    if enc.memory is not None:
        interests = memory(memory_weights(enc.memory), x, mask, enc.num_interests,
                           enc.memory_top_m)[0]
    for blk in enc.blocks:
        x, new = block(block_weights(blk), x, mask, enc.attention, enc.causal,
                       enc.normalization, interests)
        if enc.hands_off_interests:
            interests = new
    return x
