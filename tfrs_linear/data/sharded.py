"""A preprocessed directory read as a stream: training and evaluation without holding the
sequences in memory.

:func:`~tfrs_linear.data.load_preprocessed` materialises every user's sequence in Python
(fine up to tens of millions of events). :class:`ShardedSequences` instead keeps only what
is global and small: the vocabulary and popularity (the pipeline's ``vocab.txt`` and
``item_popularity.txt``), and one int32 length per user (from one counting pass over the
shards, cached), never the events. Its tf.data pipelines read the TFRecord shards again
each epoch:

* training (:meth:`ShardedSequences.training_dataset`): the shards in an order shuffled
  per epoch seed, read interleaved (``cycle_length`` shards at a time), each user's
  record cut into the SAME windows as :func:`tfrs_linear.data.training_dataset` (regime
  ``"all"``: non-overlapping windows of ``max_len`` pairs from the newest end; ``"last"``:
  one example per prefix), with their ``offsets``; a shuffle buffer of
  ``shuffle_buffer`` examples (not the whole epoch), batches, prefetch;
* evaluation (:meth:`ShardedSequences.evaluation_batches`): the batches of
  :func:`tfrs_linear.data.evaluation_batches` (same keys and shapes; ``history`` as wide
  as the largest distinct history of the split), users in shard order.

:func:`tfrs_linear.data.training_dataset` and :func:`~tfrs_linear.data.evaluation_batches`
accept a :class:`ShardedSequences` wherever they take a :class:`SequenceData`, so the
trainer and the evaluator run on either. Memory: O(users) integers plus the buffers,
whatever the number of events.
"""

import copy

import numpy as np
import tensorflow as tf

from tfrs_linear.constants import NUM_RESERVED, REGIMES
from tfrs_linear.data import preprocessed as _pre
from tfrs_linear.data.readers import DataError
from tfrs_linear.data.sequences import check_split

# Examples held by the training shuffle buffer (the in-memory path shuffles the epoch).
DEFAULT_SHUFFLE_BUFFER = 65_536
# Shards read at a time by the interleaved training reader.
CYCLE_LENGTH = 4
_PARSE_BATCH = 1024


class ShardedSequences:
    """A ``pipelines/preprocess.py`` output directory, streamed (module docstring).

    The same counts and attributes as :class:`~tfrs_linear.data.SequenceData` where
    training, evaluation and the run directory read them (``vocab``,
    ``item_popularity``, ``num_items``, ``num_users``, ``num_interactions``, ``source``,
    the dropped counts, :meth:`describe`); no ``sequences``.

    Args:
      path: the directory.
      files: optional shard paths instead of the directory's own (see
        :func:`~tfrs_linear.data.load_preprocessed`).
      min_events, keep_duplicates: if given, must equal the pipeline's.
      shuffle_buffer: examples in the training shuffle buffer.

    Raises:
      DataError: as :func:`~tfrs_linear.data.load_preprocessed` (missing or inconsistent
        files, a corrupt shard), before any training.
    """

    def __init__(self, path, files=None, min_events=None, keep_duplicates=None,
                 shuffle_buffer=DEFAULT_SHUFFLE_BUFFER):
        self.source = str(path)
        meta = _pre.read_preprocessed_metadata(self.source)
        _pre.check_pipeline_settings(self.source, meta, min_events, keep_duplicates)
        self.vocab, self.item_popularity = _pre.read_vocabulary_and_popularity(self.source)
        self.shards, self.compression = _pre.shards_to_read(self.source, meta, files)
        self.dropped_users = int(meta.get("dropped_users", 0))
        self.dropped_interactions = int(meta.get("dropped_interactions", 0))
        self.dropped_duplicates = int(meta.get("dropped_duplicates", 0))
        self.keep_duplicates = bool(meta.get("keep_duplicates", False))
        self.min_events = int(meta.get("min_events", 3))
        self.shuffle_buffer = int(shuffle_buffer)
        self._stats = None
        self._meta = meta if files is None else None

    # -- counts ----------------------------------------------------------------------
    @property
    def num_items(self):
        """The vocabulary size (padding and OOV included), as ``SequenceData``'s."""
        return len(self.vocab)

    @property
    def lengths(self):
        """``np.int32 [num_users]``: every user's sequence length, in shard order (one
        counting pass over the shards, then cached)."""
        return self._statistics()["lengths"]

    @property
    def num_users(self):
        return int(len(self.lengths))

    @property
    def num_interactions(self):
        return int(self.lengths.sum(dtype=np.int64))

    def _statistics(self):
        if self._stats is None:
            self._stats = _count_pass(self)
        return self._stats

    def describe(self):
        """One line for logs (as ``SequenceData.describe``), plus the repeated-target
        warning when its share is high."""
        stats = self._statistics()
        lengths = stats["lengths"]
        median, longest = (int(np.median(lengths)), int(lengths.max())) if len(lengths) else (0, 0)
        line = (f"{self.source}: {self.num_users} users, {self.num_items - NUM_RESERVED} items, "
                f"{self.num_interactions} interactions (length median {median}, max "
                f"{longest}); dropped {self.dropped_users} users with "
                f"{self.dropped_interactions} interactions, {self.dropped_duplicates} exact "
                "duplicate events; streamed from "
                f"{len(self.shards)} shard(s)")
        return line

    def num_training_examples(self, max_len, regime="all"):
        """Training examples per epoch (as :func:`~tfrs_linear.data.num_training_examples`)."""
        pairs = np.maximum(self.lengths.astype(np.int64) - 3, 0)
        if regime == "all":
            return int((-(-pairs // int(max_len))).sum())
        return int(pairs.sum())

    def shard(self, num_workers, index):
        """A copy that reads every ``num_workers``-th shard file from the ``index``-th
        (``shards[index::num_workers]``): worker ``index``'s part of the data when
        ``num_workers`` workers each read their own files (multi-worker training). Its
        counts are its own files' (one counting pass when first needed); ``vocab`` and
        ``item_popularity`` stay the whole directory's. Raises ``ValueError`` unless
        ``0 <= index < num_workers <= len(shards)``."""
        num_workers, index = int(num_workers), int(index)
        if not 0 <= index < num_workers <= len(self.shards):
            raise ValueError(f"{self.source}: cannot give shard {index} of {num_workers} from "
                             f"{len(self.shards)} shard file(s)")
        part = copy.copy(self)
        part.shards = list(self.shards)[index::num_workers]
        part._stats = None
        part._meta = None  # the metadata's counts are the whole directory's
        return part

    # -- reading ---------------------------------------------------------------------
    def records(self, shard_seed=None, cycle_length=1):
        """A dataset of every user's sequence (int32 ``[n]``), shard by shard (in an
        order shuffled by ``shard_seed`` when given), ``cycle_length`` shards interleaved."""
        files = tf.data.Dataset.from_tensor_slices(self.shards)
        if shard_seed is not None:
            files = files.shuffle(len(self.shards), seed=shard_seed)
        compression = self.compression
        raw = files.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
            cycle_length=max(1, min(int(cycle_length), len(self.shards))),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        spec = {_pre.ITEMS_FEATURE: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)}
        parsed = raw.batch(_PARSE_BATCH).map(
            lambda b: tf.cast(tf.io.parse_example(b, spec)[_pre.ITEMS_FEATURE], tf.int32),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return parsed.unbatch()

    def training_dataset(self, max_len, batch_size, regime="all", seed=0, shuffle=True,
                         drop_remainder=True):
        """The training batches (see :func:`tfrs_linear.data.training_dataset`): the same
        windows, shuffled by shard order and a buffer of ``shuffle_buffer`` examples."""
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
        max_len, batch_size = int(max_len), int(batch_size)
        n = self.num_training_examples(max_len, regime)
        if n == 0 or (drop_remainder and n < batch_size):
            raise ValueError(f"{self.source}: only {n} training examples (regime {regime!r}, "
                             f"max_len {max_len}), fewer than batch_size={batch_size}; lower "
                             "the batch size")
        ds = self.records(shard_seed=seed if shuffle else None, cycle_length=CYCLE_LENGTH)
        ds = ds.flat_map(lambda seq: tf.data.Dataset.from_tensor_slices(
            _windows(seq[:-2], max_len, regime)))
        if shuffle:
            ds = ds.shuffle(min(self.shuffle_buffer, n), seed=seed,
                            reshuffle_each_iteration=True)
        batches = n // batch_size if drop_remainder else -(-n // batch_size)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.apply(tf.data.experimental.assert_cardinality(batches)) \
            .prefetch(tf.data.AUTOTUNE)

    def evaluation_batches(self, split, max_len, batch_size):
        """The evaluation batches of ``split`` (see
        :func:`tfrs_linear.data.evaluation_batches`; users in shard order)."""
        check_split(split, ("valid", "test"))
        max_len, batch_size = int(max_len), int(batch_size)
        if self.num_users == 0:
            raise ValueError(f"{self.source}: no users to evaluate")
        cut = 1 if split == "test" else 2
        width = max(1, int(self._statistics()[f"distinct_{split}"]))

        def example(index, seq):
            history = seq[:-cut]
            n = tf.shape(history)[0]
            kept = tf.minimum(n, max_len)
            distinct = tf.sort(tf.unique(history)[0])
            return {
                "inputs": _left_pad(history[n - kept:], max_len),
                "targets": seq[-cut],
                "weights": tf.constant(1.0, tf.float32),
                "history": _left_pad(distinct, width),
                "user_index": tf.cast(index, tf.int32),
                "offsets": n - kept,
            }

        ds = self.records().enumerate().map(example, num_parallel_calls=tf.data.AUTOTUNE,
                                            deterministic=True)
        ds = ds.batch(batch_size).map(lambda b: _pad_batch(b, batch_size))
        return ds.prefetch(tf.data.AUTOTUNE)


def _left_pad(values, width):
    """``values [n]`` (n <= width) left-padded with 0 to ``[width]``."""
    padded = tf.pad(values, [[width - tf.shape(values)[0], 0]])
    padded.set_shape([width])
    return padded


def _pad_batch(batch, batch_size):
    """A last, smaller batch padded to ``batch_size`` rows of zeros (weight 0)."""
    missing = batch_size - tf.shape(batch["targets"])[0]
    out = {}
    for name, value in batch.items():
        pad = [[0, missing]] + [[0, 0]] * (value.shape.rank - 1)
        out[name] = tf.pad(value, pad)
        out[name].set_shape([batch_size] + value.shape[1:].as_list())
    return out


def _windows(h, max_len, regime):
    """The training examples of one training part ``h`` (int32 ``[n]``), as tensors with
    a leading example axis: the windows of :func:`tfrs_linear.data.training_dataset`."""
    pairs = tf.maximum(tf.shape(h)[0] - 1, 0)
    if regime == "all":
        count = (pairs + max_len - 1) // max_len
        ends = pairs - tf.range(count) * max_len  # exclusive end of the inputs, newest first
    else:
        ends = tf.range(1, pairs + 1)
    lengths = tf.minimum(ends, max_len)
    starts = ends - lengths
    cols = tf.range(max_len)[tf.newaxis, :]
    real = cols >= max_len - lengths[:, tf.newaxis]
    index = starts[:, tf.newaxis] + cols - (max_len - lengths[:, tf.newaxis])
    last = tf.maximum(tf.shape(h)[0] - 1, 0)

    def take(offset):
        values = tf.gather(h, tf.clip_by_value(index + offset, 0, last))
        return tf.where(real, values, tf.zeros_like(values))

    out = {"inputs": take(0), "offsets": starts}
    out["targets"] = take(1) if regime == "all" else tf.gather(h, ends)
    return out


def _count_pass(data):
    """One pass over the shards: every user's length, the largest distinct history of
    the valid and test splits, and the checks ``load_preprocessed`` makes."""
    def stats(seq):
        n = tf.shape(seq)[0]
        return tf.stack([n, tf.size(tf.unique(seq[:-2])[0]), tf.size(tf.unique(seq[:-1])[0]),
                         tf.reduce_min(seq), tf.reduce_max(seq)])

    rows = []
    try:
        for batch in data.records().map(stats, num_parallel_calls=tf.data.AUTOTUNE) \
                .batch(65_536):
            rows.append(batch.numpy())
    except tf.errors.OpError as e:
        raise DataError(f"{data.source}: corrupt or unreadable TFRecord shard: "
                        f"{type(e).__name__}: {e.message.splitlines()[0]}") from None
    table = np.concatenate(rows) if rows else np.zeros([0, 5], np.int64)
    lengths = table[:, 0].astype(np.int32)
    if len(lengths) and lengths.min() < data.min_events:
        raise DataError(f"{data.source}: a sequence has {int(lengths.min())} events, fewer "
                        f"than min_events={data.min_events}")
    if len(lengths) and (table[:, 3].min() < NUM_RESERVED or table[:, 4].max() >= len(data.vocab)):
        raise DataError(f"{data.source}: item index out of the catalogue range "
                        f"[{NUM_RESERVED}, {len(data.vocab) - 1}] of its vocabulary")
    meta = data._meta
    if meta is not None:
        expected = (int(meta.get("num_users", -1)), int(meta.get("num_interactions", -1)))
        if (len(lengths), int(lengths.sum(dtype=np.int64))) != expected:
            raise DataError(f"{data.source}: the shards hold {len(lengths)} users and "
                            f"{int(lengths.sum(dtype=np.int64))} events, its metadata says "
                            f"{expected[0]} and {expected[1]}")
    return {"lengths": lengths,
            "distinct_valid": int(table[:, 1].max()) if len(table) else 0,
            "distinct_test": int(table[:, 2].max()) if len(table) else 0}


__all__ = ["CYCLE_LENGTH", "DEFAULT_SHUFFLE_BUFFER", "ShardedSequences"]
