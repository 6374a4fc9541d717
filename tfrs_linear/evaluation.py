"""Ranking metrics by ``docs/protocol.md``: full ranking, pessimistic ties, HR/NDCG/MRR@K.

* :func:`ranks` — the rank of each target among the catalogue (TensorFlow ops, batched);
  rank = 1 + (#items scoring strictly higher) + (#other items scoring exactly equal),
  so ties count against the model and a constant scorer gets the worst rank. Padding
  (index 0) and OOV (index 1) never compete. A NaN score also counts against the model
  (a NaN target ranks last; a NaN competitor counts as scoring higher).
* :func:`metrics_from_ranks` — HR@K, NDCG@K = 1/log2(rank+1), MRR@K = 1/rank (0 beyond
  K), weighted means over users.
* :func:`evaluate` — scores one batch of users at a time (``user @ itemsᵀ``, never a
  users x items matrix beyond one batch) under protocol ``"full"`` (every catalogue
  item), ``"pop100"`` (100 negatives drawn without replacement with probability
  proportional to training popularity, among catalogue items not in the user's
  sequence — LinRec's code) or ``"uniform100"`` (the same, uniformly — SASRec's paper).
* :func:`most_popular_scores` — the most-popular baseline in the form :func:`evaluate`
  takes.
"""

import numpy as np
import tensorflow as tf

# Also importable from here, as before. Indices below NUM_RESERVED ([PAD], [OOV]) are never ranked.
from tfrs_linear.constants import NUM_RESERVED, PROTOCOLS

KS = (5, 10, 20)


def _competitors(num_items, targets, exclude):
    """Boolean ``[B, V]``: the items a target is ranked against (never itself, 0 or 1)."""
    cols = tf.range(num_items, dtype=tf.int64)[None, :]
    targets = tf.cast(targets, tf.int64)[:, None]
    compete = (cols >= NUM_RESERVED) & tf.not_equal(cols, targets)
    if exclude is not None:
        compete &= tf.logical_not(tf.cast(exclude, tf.bool))
    return compete


def _ranks_tf(scores, targets, exclude=None):
    scores = tf.convert_to_tensor(scores)
    if not scores.dtype.is_floating:
        scores = tf.cast(scores, tf.float32)
    targets = tf.cast(tf.convert_to_tensor(targets), tf.int32)
    target_scores = tf.gather(scores, targets, axis=1, batch_dims=1)[:, None]
    compete = _competitors(tf.shape(scores, out_type=tf.int64)[1], targets, exclude)
    # Pessimistic: every competitor that does not score strictly LOWER beats the target
    # (strictly higher, exactly equal, or NaN); a NaN target beats nobody.
    not_lower = compete & tf.logical_not(scores < target_scores)
    return 1 + tf.reduce_sum(tf.cast(not_lower, tf.int32), axis=1)


def ranks(scores, targets, exclude=None):
    """1-based pessimistic ranks of the targets.

    Args:
      scores: ``float [B, V]`` (NumPy or tensor); column ``i`` scores vocabulary index ``i``.
      targets: ``int [B]`` target indices (in ``2 .. V-1`` for real rows).
      exclude: optional boolean ``[B, V]``: items removed from the ranking (the target
        itself is always ranked, even if marked here).

    Returns:
      ``int32 [B]``: a NumPy array when ``scores`` is a NumPy array (or list), else a
      tensor (usable inside ``tf.function``).
    """
    as_numpy = not tf.is_tensor(scores)
    if as_numpy:
        scores = np.asarray(scores)
        if scores.ndim != 2:
            raise ValueError(f"scores must be [batch, items], got shape {scores.shape}")
        targets = np.asarray(targets)
        if targets.shape != (scores.shape[0],):
            raise ValueError(
                f"targets must be [batch] = [{scores.shape[0]}], got shape {targets.shape}"
            )
        if len(targets) and (targets.min() < 0 or targets.max() >= scores.shape[1]):
            raise ValueError(f"targets must be in [0, {scores.shape[1]}), got {targets}")
        if exclude is not None and np.shape(exclude) != scores.shape:
            raise ValueError(f"exclude must have the shape of scores {scores.shape}, got {np.shape(exclude)}")
    result = _ranks_tf(scores, targets, exclude)
    return result.numpy() if as_numpy else result


def metrics_from_ranks(ranks, weights=None, ks=KS):
    """``{"hr@K", "ndcg@K", "mrr@K"}`` for every K in ``ks``: weighted means over users.

    HR@K = 1[rank <= K]; NDCG@K = 1/log2(rank + 1) if rank <= K else 0; MRR@K = 1/rank if
    rank <= K else 0. Rows of weight 0 (batch padding) are ignored.
    """
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    w = np.ones_like(r) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != r.shape:
        raise ValueError(f"weights must match ranks, got shapes {w.shape} and {r.shape}")
    total = w.sum()
    if total <= 0:
        raise ValueError("no users to average over (all weights are 0)")
    real = w > 0
    if np.any(r[real] < 1):
        raise ValueError(f"ranks are 1-based, got {r[real].min()}")
    out = {}
    for k in ks:
        hit = r <= k
        values = {
            "hr": hit.astype(np.float64),
            "ndcg": np.where(hit, 1.0 / np.log2(r + 1.0), 0.0),
            "mrr": np.where(hit, 1.0 / np.maximum(r, 1.0), 0.0),
        }
        for name, v in values.items():
            out[f"{name}@{k}"] = float(np.sum(w * v) / total)
    return {key: out[key] for name in ("hr", "ndcg", "mrr") for key in (f"{name}@{k}" for k in ks)}


def sample_negatives(sequence_items, targets, num_items, num_negatives=100, popularity=None,
                     seed=0, user_index=None):
    """Negatives for the sampled protocols, drawn without replacement per user.

    Candidates are the catalogue items ``2 .. num_items-1`` that are not in the user's
    sequence (``sequence_items`` — the history — and the target). With ``popularity``
    (``[num_items]`` training counts) items are drawn with probability proportional to
    it (items of popularity 0 are never drawn: the ``pop100`` protocol); without it,
    uniformly (``uniform100``). Sampling without replacement is Gumbel-top-k
    (equivalent to drawing one item at a time and renormalizing).

    Each user's draw depends only on ``(seed, user_index[row])`` (default: the row
    number), not on the batch it is in.

    Args:
      sequence_items: ``int [B, H]`` history items (0 = padding, ignored).
      targets: ``int [B]``.

    Returns:
      ``int64 [B, num_negatives]``: distinct negatives per row; ``-1`` fills a row whose
      user has fewer eligible items than ``num_negatives``.
    """
    history = np.asarray(sequence_items, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    b = len(targets)
    if history.ndim != 2 or history.shape[0] != b:
        raise ValueError(f"sequence_items must be [batch={b}, H], got shape {history.shape}")
    num_negatives = int(num_negatives)
    user_index = np.arange(b) if user_index is None else np.asarray(user_index, np.int64).reshape(-1)
    eligible = np.ones((b, num_items), dtype=bool)
    eligible[:, :NUM_RESERVED] = False
    rows = np.arange(b)[:, None]
    eligible[rows, np.clip(history, 0, num_items - 1)] = False
    eligible[np.arange(b), targets] = False
    if popularity is not None:
        popularity = np.asarray(popularity, dtype=np.float64).reshape(-1)
        if popularity.shape != (num_items,):
            raise ValueError(f"popularity must have {num_items} entries, got {popularity.shape}")
        eligible &= (popularity > 0)[None, :]
        with np.errstate(divide="ignore"):
            log_weight = np.log(popularity)
    else:
        log_weight = np.zeros(num_items)
    gumbel = np.stack([
        np.random.default_rng([int(seed), int(u)]).gumbel(size=num_items) for u in user_index
    ]) if b else np.zeros((0, num_items))
    keys = np.where(eligible, log_weight[None, :] + gumbel, -np.inf)
    k = min(num_negatives, num_items)
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((b, 0), np.int64)
    top_keys = np.take_along_axis(keys, top, axis=1)
    order = np.argsort(-top_keys, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    top = np.where(np.isfinite(np.take_along_axis(top_keys, order, axis=1)), top, -1)
    if k < num_negatives:
        top = np.concatenate([top, np.full((b, num_negatives - k), -1)], axis=1)
    return top.astype(np.int64)


def history_mask(history, num_items):
    """Boolean ``[B, V]``: True at every item of the ``[B, H]`` history (padding 0 included:
    index 0 is never ranked anyway). The exclusion of ``evaluate(exclude_history=True)``."""
    history = tf.cast(history, tf.int64)
    shape = tf.shape(history, out_type=tf.int64)
    rows = tf.broadcast_to(tf.range(shape[0])[:, None], shape)
    index = tf.reshape(tf.stack([rows, history], axis=-1), [-1, 2])
    hits = tf.scatter_nd(index, tf.ones([shape[0] * shape[1]], tf.int32),
                         tf.stack([shape[0], tf.cast(num_items, tf.int64)]))
    return hits > 0


def _scores_fn(item_embeddings):
    """``users [B, d] -> user @ itemsᵀ [B, V]`` (float32, or float64 for float64 items)."""
    items = tf.convert_to_tensor(item_embeddings)
    items = tf.cast(items, tf.float32) if items.dtype != tf.float64 else items

    def score(users):
        return tf.matmul(tf.cast(users, items.dtype), items, transpose_b=True)

    return score


def evaluate(encode_fn, item_embeddings, batches, protocol="full", exclude_history=False,
             popularity=None, num_negatives=100, seed=0, ks=KS, with_offsets=False):
    """Ranks every user's target and averages the metrics (``docs/protocol.md``).

    Args:
      encode_fn: ``int32 inputs [B, max_len] -> user embeddings [B, d]`` (a model's
        query tower, or :func:`most_popular_scores`' first element).
      item_embeddings: ``[V, d]``; row ``i`` embeds vocabulary index ``i``.
      batches: an iterable of dicts with ``"inputs"``, ``"targets"``, ``"weights"`` and
        (for ``exclude_history`` and the sampled protocols) ``"history"``, optionally
        ``"user_index"`` — :func:`tfrs_linear.data.evaluation_batches`.
      protocol: ``"full"``, ``"pop100"`` or ``"uniform100"`` (module docstring).
      exclude_history: full protocol only: remove the user's history items from the
        ranking (the target itself always stays). The sampled protocols exclude the
        user's sequence from the negatives anyway, so it changes nothing there.
      popularity: ``[V]`` training counts, required by ``"pop100"``.
      num_negatives: negatives per user in the sampled protocols (100).
      seed: seed of the sampled protocols.
      with_offsets: call ``encode_fn(inputs, offsets)`` with each batch's ``"offsets"``
        (a query tower whose positions count from the user's first event).

    Returns:
      The metrics dict of :func:`metrics_from_ranks` plus ``"num_users"`` (real rows).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "pop100" and popularity is None:
        raise ValueError("protocol 'pop100' needs the training popularity (popularity=...)")
    score = _scores_fn(item_embeddings)
    num_items = int(tf.convert_to_tensor(item_embeddings).shape[0])
    all_ranks, all_weights = [], []
    row = 0
    for batch in batches:
        inputs = batch["inputs"]
        targets = np.asarray(batch["targets"]).astype(np.int64)
        b = len(targets)
        weights = np.ones(b, np.float32) if "weights" not in batch else np.asarray(batch["weights"])
        users = encode_fn(inputs, batch["offsets"]) if with_offsets else encode_fn(inputs)
        scores = score(users)
        exclude = None
        if protocol == "full":
            if exclude_history:
                if "history" not in batch:
                    raise ValueError("exclude_history needs a 'history' entry in every batch")
                exclude = history_mask(batch["history"], num_items)
        else:
            if "history" not in batch:
                raise ValueError(f"protocol {protocol!r} needs a 'history' entry in every batch")
            user_index = (np.asarray(batch["user_index"]) if "user_index" in batch
                          else np.arange(row, row + b))
            negatives = sample_negatives(
                np.asarray(batch["history"]), targets, num_items, num_negatives,
                popularity=popularity if protocol == "pop100" else None,
                seed=seed, user_index=user_index,
            )
            candidate = np.zeros((b, num_items), dtype=bool)
            r_idx, c_idx = np.nonzero(negatives >= 0)
            candidate[r_idx, negatives[r_idx, c_idx]] = True
            exclude = tf.constant(~candidate)
        all_ranks.append(np.asarray(_ranks_tf(scores, targets, exclude)))
        all_weights.append(weights.astype(np.float64))
        row += b
    if not all_ranks:
        raise ValueError("no evaluation batches")
    ranks_ = np.concatenate(all_ranks)
    weights_ = np.concatenate(all_weights)
    metrics = metrics_from_ranks(ranks_, weights_, ks=ks)
    metrics["num_users"] = int(round(weights_.sum()))
    return metrics


def most_popular_scores(popularity):
    """The most-popular baseline as ``(encode_fn, item_embeddings)`` for :func:`evaluate`.

    Every user gets the embedding ``[1.0]`` and item ``i`` the embedding
    ``[popularity[i]]``, so the score of item ``i`` is its training popularity for
    everybody (equal counts tie, and ties count against the baseline).
    """
    popularity = np.asarray(popularity, dtype=np.float64).reshape(-1, 1)

    def encode_fn(inputs):
        return tf.ones([tf.shape(inputs)[0], 1], tf.float64)

    return encode_fn, tf.constant(popularity, tf.float64)
