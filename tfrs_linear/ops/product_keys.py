"""Product-key lookup: exact top-m search over ``n²`` memory slots (no Keras).

Lample et al., "Large Memory Layers with Product Keys" (2019, arXiv 1907.05242); ELASTIC's
interest memory (:class:`tfrs_linear.layers.InterestMemory`) retrieves its interests with
it. Slot ``(i1, i2)`` of an ``n x n`` memory has the key ``[sub_keys_1[i1],
sub_keys_2[i2]]``, so the ``n²`` slot scores are sums of two sets of ``n`` sub-key scores.

Numerics
--------
* float16/bfloat16 queries are scored in float32 and the scores are cast back; float64
  stays float64.
* The search is exact (the same top-m as scoring every slot), not approximate.
* Only ``tf.matmul``, ``tf.math.top_k`` and ``tf.gather`` are used, all of which XLA
  compiles.
"""

import tensorflow as tf

from tfrs_linear.ops._common import check_rank, compute_dtype


def product_key_lookup(queries, sub_keys_1, sub_keys_2, top_m):
    """Exact top-m search over ``n²`` product keys (Lample et al. 2019).

    Slot ``(i1, i2)`` has the key ``[sub_keys_1[i1], sub_keys_2[i2]]``, so its score is
    ``q1 · sub_keys_1[i1] + q2 · sub_keys_2[i2]`` with ``q = [q1, q2]`` the two halves of
    the query. The best ``m`` slots are among the ``m x m`` pairs of the best ``m`` of
    each half (a slot outside them is beaten by ``m`` slots inside), so top-m on each half
    and top-m of the ``m²`` candidate sums is the exact top-m over all ``n²`` slots at
    cost ``O(n d_q + m²)``. Only ``tf.matmul``, ``tf.math.top_k`` and ``tf.gather`` are
    used: it compiles under ``tf.function(jit_compile=True)``.

    Args:
      queries: ``[..., d_q]`` with ``d_q`` even.
      sub_keys_1: ``[n, d_q / 2]``, the sub-keys of the first half.
      sub_keys_2: ``[n, d_q / 2]``, the sub-keys of the second half.
      top_m: how many slots to return, ``1 <= top_m <= n``.

    Returns:
      ``(scores, indices)``: ``scores [..., top_m]`` in decreasing order (dtype of
      ``queries``; computed in float32 for float16/bfloat16) and ``indices [..., top_m]``
      int32 into the ``n²`` slots, ``index = i1 * n + i2``.
    """
    queries = tf.convert_to_tensor(queries)
    sub_keys_1 = tf.convert_to_tensor(sub_keys_1)
    sub_keys_2 = tf.convert_to_tensor(sub_keys_2)
    for name, keys in (("sub_keys_1", sub_keys_1), ("sub_keys_2", sub_keys_2)):
        check_rank(name, keys, 2, "[num_keys, query_dim / 2]")
    if not sub_keys_1.shape.is_compatible_with(sub_keys_2.shape):
        raise ValueError(
            "`sub_keys_1` and `sub_keys_2` must have the same shape [num_keys, "
            f"query_dim / 2], got {sub_keys_1.shape} and {sub_keys_2.shape}."
        )
    n, half = sub_keys_1.shape[0], sub_keys_1.shape[1]
    if queries.shape.rank is not None and queries.shape.rank < 1:
        raise ValueError(f"`queries` must be shaped [..., query_dim], got {queries.shape}.")
    d_q = queries.shape[-1]
    if d_q is not None and half is not None and d_q != 2 * half:
        raise ValueError(
            f"`queries` have width {d_q} but the sub-keys have width {half}: the query "
            f"width must be twice the sub-key width (queries {queries.shape}, sub-keys "
            f"{sub_keys_1.shape})."
        )
    top_m = int(top_m)
    if top_m < 1 or (n is not None and top_m > n):
        raise ValueError(f"top_m must be in [1, num_keys={n}], got {top_m}.")
    dtype = compute_dtype(queries.dtype)
    q = tf.cast(queries, dtype)
    keys_1 = tf.cast(sub_keys_1, dtype)
    keys_2 = tf.cast(sub_keys_2, dtype)
    half = half if half is not None else tf.shape(keys_1)[1]
    n_keys = n if n is not None else tf.shape(keys_1)[0]
    lead = tf.shape(q)[:-1]
    flat = tf.reshape(q, [-1, 2 * half])
    scores_1 = tf.matmul(flat[:, :half], keys_1, transpose_b=True)  # [R, n]
    scores_2 = tf.matmul(flat[:, half:], keys_2, transpose_b=True)
    best_1, idx_1 = tf.math.top_k(scores_1, k=top_m)  # [R, m]
    best_2, idx_2 = tf.math.top_k(scores_2, k=top_m)
    candidates = best_1[:, :, tf.newaxis] + best_2[:, tf.newaxis, :]  # [R, m, m]
    candidates = tf.reshape(candidates, [-1, top_m * top_m])
    scores, pair = tf.math.top_k(candidates, k=top_m)  # [R, m]
    slot_1 = tf.gather(idx_1, pair // top_m, batch_dims=1)
    slot_2 = tf.gather(idx_2, pair % top_m, batch_dims=1)
    indices = tf.cast(slot_1 * n_keys + slot_2, tf.int32)
    out_shape = tf.concat([lead, [top_m]], axis=0)
    scores = tf.reshape(scores, out_shape)
    indices = tf.reshape(indices, out_shape)
    return tf.cast(scores, queries.dtype), indices


__all__ = ["product_key_lookup"]
