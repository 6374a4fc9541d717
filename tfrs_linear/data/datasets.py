"""The tf.data pipelines: training windows, evaluation batches, and left padding.

The pipelines never loop over examples in Python: each one is a small table of
integer window descriptors (end offset, length, target) built once with NumPy index
arithmetic over one flat array holding every sequence; the table is sliced, shuffled
and batched by tf.data, and each batch is materialized by one vectorized gather. So
even the prefix-augmented regime ("last", one example per prefix) needs memory for the
table only, not ``examples x max_len``.

:func:`pad_left` is the package's one left padding (the newest ``max_len`` items,
0 before them), in NumPy, for callers outside tf.data.
"""

import numpy as np
import tensorflow as tf

from tfrs_linear.constants import REGIMES
from tfrs_linear.data.sequences import check_split
from tfrs_linear.data.sharded import ShardedSequences


def _flatten(sequences):
    """(flat, starts, lengths): flat[0] is a 0 sentinel; sequence r is flat[starts[r]:][:lengths[r]]."""
    lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
    parts = [np.zeros(1, np.int32)] + [np.asarray(s, dtype=np.int32).reshape(-1) for s in sequences]
    flat = np.concatenate(parts)
    starts = 1 + np.cumsum(lengths) - lengths
    return flat, starts, lengths


def _gather_windows_np(flat, ends, lengths, width):
    """Rows ``flat[end - length : end]`` left-padded with 0 to ``width`` (flat[0] == 0)."""
    ends = np.asarray(ends, dtype=np.int64)[:, None]
    lengths = np.asarray(lengths, dtype=np.int64)[:, None]
    cols = np.arange(width, dtype=np.int64)[None, :]
    index = np.where(cols >= width - lengths, ends - width + cols, 0)
    return flat[index].astype(np.int32)


def _gather_windows_tf(flat, ends, lengths, width):
    ends = tf.cast(ends, tf.int64)[:, None]
    lengths = tf.cast(lengths, tf.int64)[:, None]
    cols = tf.range(width, dtype=tf.int64)[None, :]
    index = tf.where(cols >= width - lengths, ends - width + cols, tf.zeros_like(cols))
    return tf.gather(flat, index)


def pad_left(sequences, max_len):
    """``np.int32 [n, max_len]``: the newest ``max_len`` items of each sequence, left-padded with 0."""
    max_len = int(max_len)
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    flat, starts, lengths = _flatten(sequences)
    return _gather_windows_np(flat, starts + lengths, np.minimum(lengths, max_len), max_len)


def _within(counts):
    """For counts [c0, c1, ...]: [0..c0-1, 0..c1-1, ...]."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def _training_table(data, max_len, regime):
    """Window descriptors of every training example, and the flat array they index."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    max_len = int(max_len)
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    flat, starts, lengths = _flatten(data.histories("train"))
    pairs = np.maximum(lengths - 1, 0)  # (input, next item) pairs in each training part
    if regime == "all":
        # Non-overlapping windows of max_len pairs, cut from the newest end; the oldest
        # window may be shorter (left-padded). Every pair is a target exactly once.
        windows = -(-pairs // max_len)
        user = np.repeat(np.arange(len(pairs)), windows)
        k = _within(windows)
        ends = starts[user] + pairs[user] - k * max_len  # exclusive end of the inputs
        first = starts[user]
        win_len = np.minimum(ends - first, max_len)
        return flat, {"ends": ends, "lengths": win_len, "offsets": ends - win_len - first}
    # "last": one example per prefix h[:j], 1 <= j < len(h); target h[j].
    user = np.repeat(np.arange(len(pairs)), pairs)
    j = _within(pairs) + 1
    ends = starts[user] + j
    return flat, {
        "ends": ends,
        "lengths": np.minimum(j, max_len),
        "offsets": np.maximum(j - max_len, 0),
        "targets": flat[ends].astype(np.int32),
    }


def training_examples(data, max_len, regime="all"):
    """The training examples as NumPy arrays (unshuffled, in user order), for inspection.

    Same content as :func:`training_dataset` (which never materializes them all):
    ``{"inputs": int32 [n, max_len], "targets": int32 [n, max_len] ("all") or [n] ("last"),
    "offsets": int32 [n]}``.
    """
    flat, table = _training_table(data, max_len, regime)
    inputs = _gather_windows_np(flat, table["ends"], table["lengths"], max_len)
    if regime == "all":
        targets = _gather_windows_np(flat, table["ends"] + 1, table["lengths"], max_len)
    else:
        targets = table["targets"]
    return {"inputs": inputs, "targets": targets, "offsets": table["offsets"].astype(np.int32)}


def num_training_examples(data, max_len, regime="all"):
    """How many examples :func:`training_dataset` yields per epoch (before batching)."""
    if isinstance(data, ShardedSequences):
        return data.num_training_examples(max_len, regime)
    return len(_training_table(data, max_len, regime)[1]["ends"])


def targets_per_example(data, max_len, regime="all"):
    """The mean number of targets of a training example of :func:`training_dataset`: in
    regime ``"all"`` the training pairs of every user divided by the windows they are cut
    into (at most ``max_len``); 1.0 in regime ``"last"``. ``data``: a
    :class:`~tfrs_linear.data.SequenceData` or a
    :class:`~tfrs_linear.data.ShardedSequences` (from its counting pass)."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if regime == "last":
        return 1.0
    if isinstance(data, ShardedSequences):
        train_lengths = data.lengths.astype(np.int64) - 2  # the training part, seq[:-2]
    else:
        train_lengths = np.asarray([len(h) for h in data.histories("train")], np.int64)
    pairs = np.maximum(train_lengths - 1, 0)
    windows = int((-(-pairs // int(max_len))).sum())
    return float(pairs.sum()) / max(windows, 1)


def training_dataset(data, max_len, batch_size, regime="all", seed=0, shuffle=True,
                     drop_remainder=True):
    """The training pipeline: a ``tf.data.Dataset`` of ``{"inputs", "targets"}`` batches.

    Regime ``"all"`` (next item at every position, for a causal encoder): from each
    user's training part ``h = seq[:-2]``, ``inputs = h[:-1]`` and ``targets = h[1:]``,
    left-padded to ``max_len`` (0 where padded). A training part longer than
    ``max_len + 1`` is cut into non-overlapping windows of ``max_len`` positions from its
    newest end, each a separate example (the oldest window may be shorter), so every
    training event is a target exactly once and nothing is lost; a window sees only its
    own items as context. ``targets`` is ``int32 [B, max_len]``.

    Regime ``"last"`` (RecBole's prefix augmentation): one example per prefix
    ``h[:j]``, ``1 <= j < len(h)``: ``inputs = pad_left(h[:j])`` (newest ``max_len``),
    ``targets = h[j]``, ``int32 [B]``.

    Every batch also has ``"offsets"`` ``int32 [B]``: how many of the user's events come
    before the row's first item (the window's start in the user's history), which an
    encoder with ``positions="from_start"`` adds to its position indices.

    Users whose training part has a single event give no example. Shuffling (full
    buffer, reshuffled every epoch, seeded) and batching happen in tf.data; with
    ``drop_remainder`` (the default, static shapes for XLA) a last incomplete batch is
    dropped. ``dataset.cardinality()`` is the number of batches per epoch.

    ``data`` may also be a :class:`~tfrs_linear.data.ShardedSequences` (a preprocessed
    directory streamed from its shards): the same windows, shuffled by shard order and
    a bounded buffer instead of the whole epoch.
    """
    if isinstance(data, ShardedSequences):
        return data.training_dataset(max_len, batch_size, regime=regime, seed=seed,
                                     shuffle=shuffle, drop_remainder=drop_remainder)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    flat, table = _training_table(data, max_len, regime)
    n = len(table["ends"])
    if n == 0 or (drop_remainder and n < batch_size):
        raise ValueError(
            f"{data.source or 'data'}: only {n} training examples (regime {regime!r}, max_len "
            f"{max_len}), fewer than batch_size={batch_size}; lower the batch size"
            + (" or pass drop_remainder=False" if n else "")
        )
    flat_t = tf.constant(flat, dtype=tf.int32)
    max_len = int(max_len)
    ds = tf.data.Dataset.from_tensor_slices(table)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def materialize(batch):
        out = {"inputs": _gather_windows_tf(flat_t, batch["ends"], batch["lengths"], max_len),
               "offsets": tf.cast(batch["offsets"], tf.int32)}
        if regime == "all":
            out["targets"] = _gather_windows_tf(flat_t, batch["ends"] + 1, batch["lengths"], max_len)
        else:
            out["targets"] = tf.cast(batch["targets"], tf.int32)
        return out

    return ds.map(materialize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) \
        .prefetch(tf.data.AUTOTUNE)


def _distinct_histories(histories):
    """(flat, ends, counts) of each history's distinct items, ascending (flat[0] == 0)."""
    lengths = np.asarray([len(h) for h in histories], dtype=np.int64)
    if len(histories) == 0 or lengths.sum() == 0:
        return np.zeros(1, np.int32), np.zeros(len(histories), np.int64), np.zeros(len(histories), np.int64)
    items = np.concatenate([np.asarray(h, np.int64) for h in histories])
    owner = np.repeat(np.arange(len(histories), dtype=np.int64), lengths)
    big = int(items.max()) + 1
    keys = np.unique(owner * big + items)
    owner_u, items_u = keys // big, keys % big
    counts = np.bincount(owner_u, minlength=len(histories)).astype(np.int64)
    flat = np.concatenate([[0], items_u]).astype(np.int32)
    return flat, 1 + np.cumsum(counts), counts


def evaluation_batches(data, split, max_len, batch_size):
    """The evaluation pipeline: a ``tf.data.Dataset`` of batches over ALL users, in order.

    Every element is a dict:

    * ``"inputs"``: ``int32 [B, max_len]``, the history (``seq[:-2]`` for "valid",
      ``seq[:-1]`` for "test"), newest ``max_len`` items, left-padded with 0;
    * ``"targets"``: ``int32 [B]``, the leave-one-out target;
    * ``"weights"``: ``float32 [B]``, 1 for a real user, 0 for a padding row;
    * ``"history"``: ``int32 [B, H]``, the DISTINCT items of the whole history (not only
      the newest ``max_len``), ascending, left-padded with 0, for ``--exclude-history`` and
      the sampled protocols; ``H`` = the largest number of distinct history items of any
      user (at most the catalogue size, so memory stays ``users x min(len, items)``);
    * ``"user_index"``: ``int32 [B]``, the user's position in ``data.users`` (0 in
      padding rows);
    * ``"offsets"``: ``int32 [B]``, the history's events before the newest ``max_len``
      (for ``positions="from_start"``).

    The last batch is padded to the full ``batch_size`` with rows of weight 0 (all
    zeros), so every batch has the same static shape and no user is dropped. A
    :class:`~tfrs_linear.data.ShardedSequences` gives the same batches, users in shard
    order, without holding the sequences in memory.
    """
    if isinstance(data, ShardedSequences):
        return data.evaluation_batches(split, max_len, batch_size)
    check_split(split, ("valid", "test"))
    batch_size = int(batch_size)
    max_len = int(max_len)
    if batch_size < 1 or max_len < 1:
        raise ValueError(f"batch_size and max_len must be >= 1, got {batch_size} and {max_len}")
    histories = data.histories(split)
    n = len(histories)
    if n == 0:
        raise ValueError(f"{data.source or 'data'}: no users to evaluate")
    flat, starts, lengths = _flatten(histories)
    dflat, dends, dcounts = _distinct_histories(histories)
    width = max(1, int(dcounts.max()))
    padded = -(-n // batch_size) * batch_size
    extra = padded - n

    def pad(x, value=0):
        return np.concatenate([x, np.full(extra, value, dtype=x.dtype)])

    table = {
        "ends": pad(starts + lengths),
        "lengths": pad(np.minimum(lengths, max_len)),
        "targets": pad(data.targets(split).astype(np.int32)),
        "weights": pad(np.ones(n, np.float32)),
        "hist_ends": pad(dends),
        "hist_counts": pad(dcounts),
        "user_index": pad(np.arange(n, dtype=np.int32)),
        "offsets": pad(np.maximum(lengths - max_len, 0).astype(np.int32)),
    }
    flat_t = tf.constant(flat, dtype=tf.int32)
    dflat_t = tf.constant(dflat, dtype=tf.int32)

    def materialize(b):
        return {
            "inputs": _gather_windows_tf(flat_t, b["ends"], b["lengths"], max_len),
            "targets": b["targets"],
            "weights": b["weights"],
            "history": _gather_windows_tf(dflat_t, b["hist_ends"], b["hist_counts"], width),
            "user_index": b["user_index"],
            "offsets": b["offsets"],
        }

    return tf.data.Dataset.from_tensor_slices(table).batch(batch_size, drop_remainder=True) \
        .map(materialize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) \
        .prefetch(tf.data.AUTOTUNE)
