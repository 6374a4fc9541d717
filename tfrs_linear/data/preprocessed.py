"""Reading the output directory of ``pipelines/preprocess.py`` (Beam + tf.Transform).

:func:`load_preprocessed` reads it into the same :class:`SequenceData` that
:func:`tfrs_linear.data.build_sequences` gives on the raw files. Layout (the constants
below name its files and features; the pipeline writes them)::

    metadata.json                   counts, sources, shard names; written last
    vocab.txt                       as save_vocabulary writes it (line i = index i)
    item_popularity.txt             line i = training frequency of index i (0 for PAD/OOV)
    sequences-SSSSS-of-NNNNN.tfrecord[.gz]   one tf.train.Example per kept user:
        user_id       bytes        the raw user id
        item_ids      int64 list   vocabulary indices of the whole sequence, oldest first
        item_raw_ids  bytes list   the raw item ids, parallel to item_ids
    transform_fn/, transformed_metadata/     tf.Transform's analyzer outputs

Paths may be local or any file system TensorFlow's ``tf.io.gfile`` knows (``gs://``).
A directory without ``metadata.json`` is unfinished (the pipeline writes it last).
"""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrs_linear.constants import NUM_RESERVED
from tfrs_linear.data.readers import DataError, decode_text, line_error
from tfrs_linear.data.sequences import SequenceData
from tfrs_linear.data.vocabulary import parse_vocabulary

PREPROCESSED_KIND = "tfrs_linear.preprocessed"
PREPROCESSED_VERSION = 1
METADATA_FILE = "metadata.json"
VOCAB_FILE = "vocab.txt"
POPULARITY_FILE = "item_popularity.txt"
USER_FEATURE = "user_id"
ITEMS_FEATURE = "item_ids"
RAW_ITEMS_FEATURE = "item_raw_ids"
_READ_BATCH = 4096


def is_preprocessed_dir(path):
    """Whether ``path`` is a directory holding a ``metadata.json`` (a preprocessed dataset)."""
    path = str(path)
    try:
        return tf.io.gfile.isdir(path) and tf.io.gfile.exists(_join(path, METADATA_FILE))
    except tf.errors.OpError:
        return False


def _join(directory, name):
    return directory.rstrip("/") + "/" + name if "://" in directory else str(Path(directory) / name)


def _read_small(path):
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            raw = f.read()
    except tf.errors.NotFoundError:
        raise DataError(f"{path}: file not found") from None
    except tf.errors.OpError as e:
        raise DataError(f"{path}: cannot read the file: {e.message}") from None
    return decode_text(path, raw)


def read_preprocessed_metadata(path):
    """The ``metadata.json`` of a preprocessed directory, checked (kind and version)."""
    path = str(path)
    meta_path = _join(path, METADATA_FILE)
    if not tf.io.gfile.exists(meta_path):
        raise DataError(
            f"{path}: not a preprocessed directory (no {METADATA_FILE}; it is written last, so "
            "the pipeline may not have finished)"
        )
    try:
        meta = json.loads(_read_small(meta_path))
    except json.JSONDecodeError as e:
        raise line_error(meta_path, e.lineno, f"invalid JSON: {e.msg}") from None
    if not isinstance(meta, dict) or meta.get("kind") != PREPROCESSED_KIND:
        raise DataError(f"{meta_path}: not written by pipelines/preprocess.py (kind is not "
                        f"{PREPROCESSED_KIND!r})")
    if meta.get("format_version") != PREPROCESSED_VERSION:
        raise DataError(f"{meta_path}: format_version {meta.get('format_version')!r}; this "
                        f"tfrs_linear reads version {PREPROCESSED_VERSION}")
    return meta


def _read_shard(shard, compression):
    """(user ids: bytes object array, row lengths: int64, flat item indices: int64) of a shard."""
    spec = {
        USER_FEATURE: tf.io.FixedLenFeature([], tf.string),
        ITEMS_FEATURE: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
    }
    ds = tf.data.TFRecordDataset(shard, compression_type=compression) \
        .batch(_READ_BATCH).map(lambda b: tf.io.parse_example(b, spec))
    users, lengths, items = [], [], []
    try:
        for batch in ds:
            ragged = batch[ITEMS_FEATURE]
            users.append(batch[USER_FEATURE].numpy())
            lengths.append(ragged.row_lengths().numpy())
            items.append(ragged.flat_values.numpy())
    except tf.errors.OpError as e:
        raise DataError(f"{shard}: corrupt or unreadable TFRecord shard: "
                        f"{type(e).__name__}: {e.message.splitlines()[0]}") from None
    if not users:
        return np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(users), np.concatenate(lengths), np.concatenate(items)


def load_preprocessed(path, files=None, min_events=None, keep_duplicates=None):
    """Loads the output directory of ``pipelines/preprocess.py`` as :class:`SequenceData`.

    The result equals :func:`build_sequences` on the raw files (users in string order,
    sequences, vocabulary, ``item_popularity`` and the dropped counts). Steps: the
    metadata, the vocabulary and popularity, the shards, the per-user sequences, then
    (for the whole directory) the consistency checks against the metadata.

    Args:
      path: the directory (``metadata.json``, ``vocab.txt``, ``item_popularity.txt``,
        the TFRecord shards).
      files: optional shard paths to read instead of all of the directory's shards (a
        subset of its users, or copies of the shards elsewhere, under the whole dataset's
        vocabulary, popularity and dropped counts; a ``.gz`` suffix means GZIP); the
        whole-dataset consistency checks then do not apply.
      min_events: if given, must equal the ``min_events`` the pipeline used.
      keep_duplicates: if given, must equal the pipeline's ``--keep-duplicates`` (a
        directory written before that flag existed has no record of it and is accepted).

    Raises:
      DataError: missing or inconsistent files, or a corrupt shard (naming the file).
    """
    path = str(path)
    meta = read_preprocessed_metadata(path)
    check_pipeline_settings(path, meta, min_events, keep_duplicates)
    vocab, popularity = read_vocabulary_and_popularity(path)
    whole = files is None
    shards, compression = shards_to_read(path, meta, files)
    users, lengths, flat = _read_shards(path, shards, compression, whole)
    data = _sequence_data(path, meta, int(meta.get("min_events", 3)), vocab, popularity,
                          users, lengths, flat)
    if whole:
        _check_whole_directory(path, meta, data, lengths, flat)
    return data


def check_pipeline_settings(path, meta, min_events=None, keep_duplicates=None):
    """Raises ``DataError`` when ``min_events`` or ``keep_duplicates`` (None: any) differ
    from what the pipeline that wrote ``path`` (its metadata ``meta``) used."""
    used = int(meta.get("min_events", 3))
    if min_events is not None and int(min_events) != used:
        raise DataError(f"{path}: preprocessed with min_events={used}, asked for {min_events}; "
                        "run the pipeline again with --min-events")
    kept = meta.get("keep_duplicates")
    if keep_duplicates is not None and kept is not None and bool(kept) != bool(keep_duplicates):
        how = "kept" if kept else "dropped"
        raise DataError(f"{path}: preprocessed with exact duplicate events {how} "
                        f"(keep_duplicates={bool(kept)}), asked for "
                        f"keep_duplicates={bool(keep_duplicates)}; pass the same setting "
                        "(--keep-duplicates) or run the pipeline again")


def read_vocabulary_and_popularity(path):
    """``vocab.txt`` and ``item_popularity.txt`` of the directory, checked against each other."""
    vocab_path = _join(path, VOCAB_FILE)
    vocab = parse_vocabulary(vocab_path, _read_small(vocab_path))
    pop_path = _join(path, POPULARITY_FILE)
    try:
        popularity = np.asarray([int(x) for x in _read_small(pop_path).split()], dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{pop_path}: not a list of integers: {e}") from None
    if len(popularity) != len(vocab):
        raise DataError(f"{pop_path}: {len(popularity)} counts for {len(vocab)} vocabulary entries "
                        f"in {vocab_path}")
    return vocab, popularity


def shards_to_read(path, meta, files=None):
    """The shard paths (the metadata's, or ``files``) and the metadata's compression."""
    meta_path = _join(path, METADATA_FILE)
    whole = files is None
    shards = [_join(path, name) for name in meta.get("shards", [])] if whole else [str(f) for f in files]
    if not shards:
        raise DataError(f"{meta_path}: lists no TFRecord shards" if whole else f"{path}: no shard files given")
    compression = {"none": "", "gzip": "GZIP"}.get(str(meta.get("compression", "none")).lower())
    if compression is None:
        raise DataError(f"{meta_path}: unknown compression {meta.get('compression')!r}")
    return shards, compression


def _read_shards(path, shards, compression, whole):
    """The users of every shard, in shard order: (users: str array, lengths, flat item indices)."""
    meta_path = _join(path, METADATA_FILE)
    parts = []
    for shard in shards:
        if not tf.io.gfile.exists(shard):
            raise DataError(f"{shard}: shard not found (listed in {meta_path})" if whole
                            else f"{shard}: shard not found")
        # Shards given explicitly may be copies (e.g. a TFX ExampleGen's): by their suffix.
        gzip = compression if whole else ("GZIP" if shard.endswith(".gz") else "")
        parts.append(_read_shard(shard, gzip))
    user_bytes = np.concatenate([p[0] for p in parts])
    lengths = np.concatenate([p[1] for p in parts])
    flat = np.concatenate([p[2] for p in parts])
    try:
        users = np.char.decode(user_bytes.astype(bytes), "utf-8") if len(user_bytes) else \
            np.zeros(0, dtype=str)
    except UnicodeDecodeError:
        raise DataError(f"{path}: a {USER_FEATURE!r} is not valid UTF-8") from None
    return users, lengths, flat


def _sequence_data(path, meta, min_events, vocab, popularity, users, lengths, flat):
    """The :class:`SequenceData` of the records read, users in string order, checked."""
    order = np.argsort(users, kind="stable")
    users = users[order]
    if len(users) > 1 and np.any(users[1:] == users[:-1]):
        dup = users[1:][users[1:] == users[:-1]][0]
        raise DataError(f"{path}: user {str(dup)!r} occurs in more than one record")
    if len(lengths) and lengths.min() < min_events:
        raise DataError(f"{path}: a sequence has {int(lengths.min())} events, fewer than "
                        f"min_events={min_events}")
    if len(flat) and (flat.min() < NUM_RESERVED or flat.max() >= len(vocab)):
        raise DataError(f"{path}: item index out of the catalogue range [{NUM_RESERVED}, "
                        f"{len(vocab) - 1}] of {_join(path, VOCAB_FILE)}")
    pieces = np.split(flat.astype(np.int32), np.cumsum(lengths)[:-1]) if len(lengths) else []
    sequences = [pieces[i] for i in order]
    return SequenceData(
        users=users.tolist(),
        sequences=sequences,
        vocab=vocab,
        item_popularity=popularity,
        dropped_users=int(meta.get("dropped_users", 0)),
        dropped_interactions=int(meta.get("dropped_interactions", 0)),
        source=path,
        dropped_duplicates=int(meta.get("dropped_duplicates", 0)),
        keep_duplicates=bool(meta.get("keep_duplicates", False)),
    )


def _check_whole_directory(path, meta, data, lengths, flat):
    """The users and events the metadata counts, and the popularity of the training part."""
    meta_path = _join(path, METADATA_FILE)
    expected = (int(meta.get("num_users", -1)), int(meta.get("num_interactions", -1)))
    if (data.num_users, int(lengths.sum())) != expected:
        raise DataError(
            f"{path}: the shards hold {data.num_users} users and {int(lengths.sum())} events, "
            f"{meta_path} says {expected[0]} and {expected[1]}"
        )
    train = flat[(np.repeat(np.cumsum(lengths), lengths) - np.arange(len(flat)) - 1) >= 2]
    if not np.array_equal(np.bincount(train, minlength=data.num_items), data.item_popularity):
        raise DataError(f"{_join(path, POPULARITY_FILE)}: does not match the training part of "
                        "the sequences")
