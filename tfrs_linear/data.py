"""Interaction files, per-user sequences, the item vocabulary and the tf.data pipelines.

Everything here follows ``shared/docs/protocol.md``.

Reading
-------
:func:`load_interactions` reads one interaction file into :class:`Interactions`
(parallel arrays of raw user ids, raw item ids and timestamps, in file order). Formats:

``recbole``
    RecBole atomic ``.inter``: tab-separated, a header of ``name:type`` fields (for
    example ``user_id:token item_id:token rating:float timestamp:float``); the columns
    are found by the name before the colon (``user_id``, ``item_id``, ``timestamp``).
``movielens``
    MovieLens ``ratings.dat`` (ML-1M, ML-10M): ``user::item::rating::timestamp``.
``udata``
    MovieLens-100K ``u.data``: tab-separated ``user item rating timestamp``, no header.
``sasrec``
    SASRec's text format: ``user item`` per line, whitespace-separated, already in time
    order; the timestamp of an event is its 1-based line number.
``csv``
    Comma-separated with a header naming the columns (case-insensitive): the user is
    ``user_id``/``user``/``userid``/``uid``, the item ``item_id``/``item``/``itemid``/
    ``iid``/``movie_id``/``movieid``, the time ``timestamp``/``time``/``ts``.
``auto``
    Guessed from the file name (``*.inter``, ``*.csv``, ``u.data``, ``*.dat``), else from
    the first line.
``preprocessed``
    Not a file: the output directory of ``pipelines/preprocess.py`` (Beam +
    tf.Transform), read by :func:`load_preprocessed` (TFRecord shards of per-user
    sequences, ``vocab.txt``, ``item_popularity.txt``, ``metadata.json``) into the same
    :class:`SequenceData` that :func:`build_sequences` gives on the raw files.
    :func:`load_dataset` also picks it with ``auto`` for a directory holding
    ``metadata.json``.

:func:`parse_interactions` parses the content of one file (bytes read elsewhere, as
the Beam pipeline does) with the same rules and errors, and returns line numbers too.

Files are UTF-8 (a leading byte-order mark is ignored; ``\\r\\n`` line ends are fine).
Blank lines are skipped; every other line must be a complete, valid record: a wrong
number of fields, an empty id or a timestamp that is not a finite number raises
:class:`DataError` naming the file and the 1-based line number. Nothing is silently
dropped or truncated. Timestamps must be numbers (for example Unix seconds).

Sequences and vocabulary
------------------------
:func:`build_sequences` sorts each user's events by timestamp, ties kept in file order
(a stable sort on the line order), drops users with fewer than ``min_events`` events
(counted), and indexes the items: 0 = ``[PAD]``, 1 = ``[OOV]``, then every item that
occurs in the kept users' sequences, by descending frequency in the training part
(each sequence without its last 2 events), ties by the raw id's string order (``"10"``
before ``"9"``). Items seen only as validation/test targets have frequency 0 and come
last in that same tie order, so every target has an index; the catalogue is
``2 .. len(vocab) - 1``. Items that occur only in the events of dropped users are not
part of the vocabulary (as in RecBole, which re-indexes after filtering).

Leave-one-out: the last event is the test target, the second-to-last the validation
target; the validation history is ``seq[:-2]`` (the training part), the test history
``seq[:-1]`` (it includes the validation item).

Pipelines
---------
The tf.data pipelines never loop over examples in Python: each one is a small table of
integer window descriptors (end offset, length, target) built once with NumPy index
arithmetic over one flat array holding every sequence; the table is sliced, shuffled
and batched by tf.data, and each batch is materialized by one vectorized gather. So
even the prefix-augmented regime ("last", one example per prefix) needs memory for the
table only, not ``examples x max_len``.
"""

import csv
import dataclasses
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

PREPROCESSED = "preprocessed"
# The interaction file formats (what parse_interactions reads).
FILE_FORMATS = ("recbole", "movielens", "udata", "sasrec", "csv")
FORMATS = ("auto",) + FILE_FORMATS + (PREPROCESSED,)
REGIMES = ("all", "last")
SPLITS = ("train", "valid", "test")
PAD = "[PAD]"
OOV = "[OOV]"
PAD_INDEX = 0
OOV_INDEX = 1
NUM_RESERVED = 2

_CSV_COLUMNS = {
    "user": ("user_id", "user", "userid", "uid"),
    "item": ("item_id", "item", "itemid", "iid", "movie_id", "movieid"),
    "timestamp": ("timestamp", "time", "ts"),
}


class DataError(ValueError):
    """Bad input data: the message names the file (and line) and what is wrong."""


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Interactions:
    """Raw interactions in file order: parallel arrays, one entry per event.

    Attributes:
      users: raw user ids (NumPy unicode array).
      items: raw item ids (NumPy unicode array; always strings, e.g. ``"242"``).
      timestamps: float64 timestamps.
      source: where the events came from (a path, or a description).
      format: the format they were read with.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    source: str = ""
    format: str = ""

    def __post_init__(self):
        self.users = _as_str_array(self.users)
        self.items = _as_str_array(self.items)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64).reshape(-1)
        n = len(self.users)
        if len(self.items) != n or len(self.timestamps) != n:
            raise DataError(
                f"{self.source or 'interactions'}: users, items and timestamps must have the "
                f"same length, got {n}, {len(self.items)} and {len(self.timestamps)}"
            )

    def __len__(self):
        return len(self.users)


def _as_str_array(values):
    values = np.asarray(values)
    if values.dtype.kind != "U":
        values = np.asarray([str(v) for v in values.reshape(-1)], dtype=str)
    return values.reshape(-1)


def _fail(path, lineno, message):
    where = f"{path}: line {lineno}" if lineno is not None else f"{path}"
    return DataError(f"{where}: {message}")


def _read_text(path):
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file: {e.strerror or e}") from None
    return _decode_text(path, raw)


def _decode_text(path, raw):
    if isinstance(raw, str):
        return raw[1:] if raw.startswith("\ufeff") else raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise _fail(path, line, f"not valid UTF-8 (byte {e.start} of the file)") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def _lines(text):
    """(1-based line number, line without its end) for every non-blank line."""
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line.strip():
            yield lineno, line


def _timestamp(path, lineno, value):
    try:
        t = float(value)
    except ValueError:
        raise _fail(path, lineno, f"timestamp {value!r} is not a number") from None
    if not math.isfinite(t):
        raise _fail(path, lineno, f"timestamp {value!r} is not a finite number")
    return t


def _record(path, lineno, user, item, ts, out):
    user = user.strip()
    item = item.strip()
    if not user:
        raise _fail(path, lineno, "empty user id")
    if not item:
        raise _fail(path, lineno, "empty item id")
    out[0].append(user)
    out[1].append(item)
    out[2].append(ts if isinstance(ts, float) else _timestamp(path, lineno, ts.strip()))
    out[3].append(lineno)


def _read_delimited(path, text, sep, expected, describe, positions):
    out = ([], [], [], [])  # users, items, timestamps, line numbers
    u, i, t = positions
    for lineno, line in _lines(text):
        fields = line.split(sep)
        if len(fields) != expected:
            raise _fail(
                path, lineno,
                f"expected {expected} fields ({describe}), got {len(fields)}: {line[:80]!r}",
            )
        _record(path, lineno, fields[u], fields[i], fields[t], out)
    return out


def _read_recbole(path, text):
    lines = _lines(text)
    try:
        header_line, header = next(lines)
    except StopIteration:
        raise DataError(f"{path}: empty file (expected a RecBole header)") from None
    fields = header.split("\t")
    names = []
    for f in fields:
        if ":" not in f:
            raise _fail(
                path, header_line,
                f"not a RecBole header: field {f!r} is not 'name:type' "
                "(expected e.g. 'user_id:token<TAB>item_id:token<TAB>timestamp:float')",
            )
        names.append(f.split(":", 1)[0].strip())
    cols = []
    for name in ("user_id", "item_id", "timestamp"):
        if name not in names:
            raise _fail(path, header_line, f"the header has no {name!r} column (columns: {names})")
        cols.append(names.index(name))
    out = ([], [], [], [])  # users, items, timestamps, line numbers
    u, i, t = cols
    for lineno, line in lines:
        parts = line.split("\t")
        if len(parts) != len(names):
            raise _fail(
                path, lineno,
                f"expected {len(names)} tab-separated fields as in the header, got "
                f"{len(parts)}: {line[:80]!r}",
            )
        _record(path, lineno, parts[u], parts[i], parts[t], out)
    return out


def _read_sasrec(path, text):
    out = ([], [], [], [])  # users, items, timestamps, line numbers
    for lineno, line in _lines(text):
        parts = line.split()
        if len(parts) != 2:
            raise _fail(
                path, lineno,
                f"expected 2 whitespace-separated fields (user item), got {len(parts)}: "
                f"{line[:80]!r}",
            )
        _record(path, lineno, parts[0], parts[1], float(lineno), out)
    return out


def _csv_column(names, role, path, lineno):
    for candidate in _CSV_COLUMNS[role]:
        if candidate in names:
            return names.index(candidate)
    raise _fail(
        path, lineno,
        f"the CSV header has no {role} column (one of {list(_CSV_COLUMNS[role])}); "
        f"columns: {names}",
    )


def _read_csv(path, text):
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    out = ([], [], [], [])  # users, items, timestamps, line numbers
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            if header is None:
                header = [c.strip().split(":", 1)[0].lower() for c in row]
                cols = [_csv_column(header, r, path, lineno) for r in ("user", "item", "timestamp")]
                continue
            if len(row) != len(header):
                raise _fail(
                    path, lineno,
                    f"expected {len(header)} comma-separated fields as in the header, got "
                    f"{len(row)}: {','.join(row)[:80]!r}",
                )
            _record(path, lineno, row[cols[0]], row[cols[1]], row[cols[2]], out)
    except csv.Error as e:
        raise _fail(path, reader.line_num, f"malformed CSV: {e}") from None
    if header is None:
        raise DataError(f"{path}: empty file (expected a CSV header)")
    return out


def _is_number(s):
    try:
        float(s)
    except ValueError:
        return False
    return True


def guess_format(path, first_line=None):
    """The format ``auto`` picks for ``path`` (from its name, else its first line)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith(".csv"):
        return "csv"
    if re.fullmatch(r"u\d?\.(data|base|test)|ua\.(base|test)|ub\.(base|test)", name):
        return "udata"
    if name.endswith(".dat"):
        return "movielens"
    if first_line is None:
        text = _read_text(path)
        first_line = next((line for _, line in _lines(text)), "")
    line = first_line
    tabbed = line.split("\t")
    if "::" in line:
        return "movielens"
    if len(tabbed) > 1 and all(":" in f for f in tabbed):
        return "recbole"
    if len(tabbed) == 4 and all(_is_number(f) for f in tabbed[2:]):
        return "udata"
    if "," in line:
        return "csv"
    if len(line.split()) == 2:
        return "sasrec"
    raise DataError(
        f"{path}: cannot guess the format from the name or the first line {line[:80]!r}; "
        f"pass format= one of {FILE_FORMATS}"
    )


def load_interactions(path, format="auto"):
    """Reads an interaction file into :class:`Interactions` (events in file order).

    Args:
      path: the file.
      format: one of :data:`FORMATS` (see the module docstring); ``"auto"`` guesses.

    Raises:
      DataError: missing file, unknown format, or a bad line (the message names the file
        and the 1-based line number).
    """
    path = Path(path)
    if format not in FORMATS:
        raise DataError(f"{path}: unknown format {format!r}; expected one of {FORMATS}")
    if format == PREPROCESSED:
        raise DataError(
            f"{path}: a {PREPROCESSED!r} directory holds sequences, not interactions; "
            "read it with load_dataset(path) or load_preprocessed(path)"
        )
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an interaction file")
    return _parse(path, _read_text(path), format)[0]


def parse_interactions(content, source, format="auto"):
    """Parses the content of ONE interaction file, exactly as :func:`load_interactions`.

    For readers that fetch the bytes themselves (``pipelines/preprocess.py`` reads them
    through Beam's file systems, one whole file per worker). Errors are the same
    :class:`DataError` s, naming ``source`` and the 1-based line.

    Args:
      content: the file's bytes (decoded as UTF-8, a leading byte-order mark ignored)
        or its text.
      source: the file's name, used in error messages, in ``Interactions.source`` and, for
        ``format="auto"``, to guess the format (as :func:`guess_format`).
      format: one of :data:`FORMATS` except ``"preprocessed"``.

    Returns:
      ``(interactions, lines)``: :class:`Interactions` in file order and ``np.int64``
      1-based line numbers of its events (the last line of a multi-line CSV record).
    """
    if format != "auto" and format not in FILE_FORMATS:
        raise DataError(
            f"{source}: unknown format {format!r}; expected one of {('auto',) + FILE_FORMATS}"
        )
    return _parse(source, _decode_text(source, content), format)


def _parse(path, text, format):
    if format == "auto":
        first = next((line for _, line in _lines(text)), None)
        if first is None:
            raise DataError(f"{path}: empty file, no interactions")
        format = guess_format(path, first)
    if format == "recbole":
        out = _read_recbole(path, text)
    elif format == "movielens":
        out = _read_delimited(path, text, "::", 4, "user::item::rating::timestamp", (0, 1, 3))
    elif format == "udata":
        out = _read_delimited(path, text, "\t", 4, "tab-separated user item rating timestamp", (0, 1, 3))
    elif format == "sasrec":
        out = _read_sasrec(path, text)
    else:
        out = _read_csv(path, text)
    if not out[0]:
        raise DataError(f"{path}: no interactions in the file ({format} format)")
    interactions = Interactions(
        users=np.asarray(out[0], dtype=str),
        items=np.asarray(out[1], dtype=str),
        timestamps=np.asarray(out[2], dtype=np.float64),
        source=str(path),
        format=format,
    )
    return interactions, np.asarray(out[3], dtype=np.int64)


# ------------------------------------------------------------------ sequences, vocabulary


@dataclasses.dataclass
class SequenceData:
    """Per-user, time-ordered item sequences under one vocabulary.

    Attributes:
      users: raw user ids of the kept users, in string order.
      sequences: one ``np.int32`` array of vocabulary indices per user (whole history,
        oldest first), parallel to ``users``.
      vocab: ``vocab[i]`` = raw id of index ``i``; ``vocab[0] = "[PAD]"``,
        ``vocab[1] = "[OOV]"``.
      item_popularity: ``np.int64 [len(vocab)]`` counts over the training part.
      dropped_users: users dropped for having fewer than ``min_events`` events.
      dropped_interactions: the events of those users.
      source: where the data came from.
    """

    users: list
    sequences: list
    vocab: list
    item_popularity: np.ndarray
    dropped_users: int = 0
    dropped_interactions: int = 0
    source: str = ""

    @property
    def num_items(self):
        """The vocabulary size, ``len(vocab)`` (padding and OOV included)."""
        return len(self.vocab)

    @property
    def num_users(self):
        return len(self.users)

    @property
    def num_interactions(self):
        return int(sum(len(s) for s in self.sequences))

    @property
    def lengths(self):
        """``np.int64 [num_users]``: the length of every whole sequence."""
        return np.asarray([len(s) for s in self.sequences], dtype=np.int64)

    def history(self, user, split):
        """The history of user number ``user`` for ``split`` (see :meth:`histories`)."""
        seq = self.sequences[user]
        _check_split(split)
        return seq[:-1] if split == "test" else seq[:-2]

    def target(self, user, split):
        """The leave-one-out target of user number ``user``: ``seq[-2]``/``seq[-1]``."""
        _check_split(split, ("valid", "test"))
        seq = self.sequences[user]
        return int(seq[-1] if split == "test" else seq[-2])

    def histories(self, split):
        """Per-user histories: ``seq[:-2]`` for "train" and "valid", ``seq[:-1]`` for "test"."""
        _check_split(split)
        cut = 1 if split == "test" else 2
        return [s[:-cut] for s in self.sequences]

    def targets(self, split):
        """``np.int32 [num_users]``: ``seq[-2]`` for "valid", ``seq[-1]`` for "test"."""
        _check_split(split, ("valid", "test"))
        pos = -1 if split == "test" else -2
        return np.asarray([s[pos] for s in self.sequences], dtype=np.int32)

    def describe(self):
        lengths = self.lengths
        return (
            f"{self.source or 'data'}: {self.num_users} users, {self.num_items - NUM_RESERVED} items, "
            f"{int(lengths.sum())} interactions (length median {int(np.median(lengths)) if len(lengths) else 0}, "
            f"max {int(lengths.max()) if len(lengths) else 0}); dropped {self.dropped_users} users "
            f"with {self.dropped_interactions} interactions"
        )


def _check_split(split, allowed=SPLITS):
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def build_sequences(interactions, min_events=3):
    """Groups events into per-user sequences and builds the vocabulary (module docstring).

    Args:
      interactions: :class:`Interactions`.
      min_events: users with fewer events are dropped (and counted); at least 3, which
        leave-one-out needs (one training event, a validation and a test target).
    """
    if int(min_events) < 3:
        raise ValueError(f"min_events must be >= 3 for leave-one-out, got {min_events}")
    source = interactions.source or "interactions"
    users, items, ts = interactions.users, interactions.items, interactions.timestamps
    if not np.all(np.isfinite(ts)):
        bad = int(np.flatnonzero(~np.isfinite(ts))[0])
        raise DataError(f"{source}: event {bad + 1} has a non-finite timestamp {ts[bad]}")
    for reserved in (PAD, OOV):
        if len(items) and np.any(items == reserved):
            raise DataError(f"{source}: the raw item id {reserved!r} is reserved for the vocabulary")
    user_ids, user_of = np.unique(users, return_inverse=True)
    user_of = user_of.reshape(-1)
    order = np.lexsort((np.arange(len(users)), ts, user_of))  # stable: ties in file order
    counts = np.bincount(user_of, minlength=len(user_ids))
    keep = counts >= int(min_events)
    sorted_user = user_of[order]
    kept_events = keep[sorted_user]
    order = order[kept_events]
    sorted_user = sorted_user[kept_events]
    kept_counts = counts[keep]
    ends = np.cumsum(kept_counts)
    # Events from the end of their user's sequence: 0 = test target, 1 = validation.
    from_end = np.repeat(ends, kept_counts) - np.arange(len(order)) - 1
    train = from_end >= 2
    raw_items, item_of = np.unique(items[order], return_inverse=True)
    item_of = item_of.reshape(-1)
    freq = np.bincount(item_of[train], minlength=len(raw_items))
    by_rank = np.argsort(-freq, kind="stable")  # raw_items is in string order: ties by id
    index_of = np.empty(len(raw_items), dtype=np.int64)
    index_of[by_rank] = np.arange(NUM_RESERVED, NUM_RESERVED + len(raw_items))
    vocab = [PAD, OOV] + [str(x) for x in raw_items[by_rank]]
    popularity = np.zeros(len(vocab), dtype=np.int64)
    popularity[NUM_RESERVED:] = freq[by_rank]
    flat = index_of[item_of].astype(np.int32)
    sequences = np.split(flat, ends[:-1]) if len(ends) else []
    return SequenceData(
        users=[str(u) for u in user_ids[keep]],
        sequences=sequences,
        vocab=vocab,
        item_popularity=popularity,
        dropped_users=int((~keep).sum()),
        dropped_interactions=int(counts[~keep].sum()),
        source=interactions.source,
    )


def load_dataset(path=None, format="auto", seed=0, min_events=3):
    """Loads a file (or, with ``path=None``, the embedded synthetic data) as :class:`SequenceData`.

    ``seed`` only matters for the synthetic data (:func:`tfrs_linear.synthetic.generate`).
    """
    if path is None:
        from tfrs_linear import synthetic

        interactions = synthetic.generate(seed=seed)
    elif format == PREPROCESSED or (format == "auto" and is_preprocessed_dir(path)):
        return load_preprocessed(path, min_events=min_events)
    else:
        interactions = load_interactions(path, format=format)
    return build_sequences(interactions, min_events=min_events)


# ------------------------------------------------------------- preprocessed directories
#
# The output of pipelines/preprocess.py (Beam + tf.Transform). Layout:
#
#   metadata.json                   counts, sources, shard names; written last
#   vocab.txt                       as save_vocabulary writes it (line i = index i)
#   item_popularity.txt             line i = training frequency of index i (0 for PAD/OOV)
#   sequences-SSSSS-of-NNNNN.tfrecord[.gz]   one tf.train.Example per kept user:
#       user_id       bytes        the raw user id
#       item_ids      int64 list   vocabulary indices of the whole sequence, oldest first
#       item_raw_ids  bytes list   the raw item ids, parallel to item_ids
#   transform_fn/, transformed_metadata/     tf.Transform's analyzer outputs

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
    return _decode_text(path, raw)


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
        raise _fail(meta_path, e.lineno, f"invalid JSON: {e.msg}") from None
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


def load_preprocessed(path, files=None, min_events=None):
    """Loads the output directory of ``pipelines/preprocess.py`` as :class:`SequenceData`.

    The result equals :func:`build_sequences` on the raw files (users in string order,
    sequences, vocabulary, ``item_popularity`` and the dropped counts).

    Args:
      path: the directory (``metadata.json``, ``vocab.txt``, ``item_popularity.txt``,
        the TFRecord shards).
      files: optional shard paths to read instead of all of the directory's shards (a
        subset of its users, or copies of the shards elsewhere, under the whole dataset's
        vocabulary, popularity and dropped counts; a ``.gz`` suffix means GZIP); the
        whole-dataset consistency checks then do not apply.
      min_events: if given, must equal the ``min_events`` the pipeline used.

    Raises:
      DataError: missing or inconsistent files, or a corrupt shard (naming the file).
    """
    path = str(path)
    meta = read_preprocessed_metadata(path)
    meta_path = _join(path, METADATA_FILE)
    used = int(meta.get("min_events", 3))
    if min_events is not None and int(min_events) != used:
        raise DataError(f"{path}: preprocessed with min_events={used}, asked for {min_events}; "
                        "run the pipeline again with --min-events")
    vocab_path = _join(path, VOCAB_FILE)
    vocab = _parse_vocabulary(vocab_path, _read_small(vocab_path))
    pop_path = _join(path, POPULARITY_FILE)
    try:
        popularity = np.asarray([int(x) for x in _read_small(pop_path).split()], dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{pop_path}: not a list of integers: {e}") from None
    if len(popularity) != len(vocab):
        raise DataError(f"{pop_path}: {len(popularity)} counts for {len(vocab)} vocabulary entries "
                        f"in {vocab_path}")
    whole = files is None
    shards = [_join(path, name) for name in meta.get("shards", [])] if whole else [str(f) for f in files]
    if not shards:
        raise DataError(f"{meta_path}: lists no TFRecord shards" if whole else f"{path}: no shard files given")
    compression = {"none": "", "gzip": "GZIP"}.get(str(meta.get("compression", "none")).lower())
    if compression is None:
        raise DataError(f"{meta_path}: unknown compression {meta.get('compression')!r}")
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
    order = np.argsort(users, kind="stable")
    users = users[order]
    if len(users) > 1 and np.any(users[1:] == users[:-1]):
        dup = users[1:][users[1:] == users[:-1]][0]
        raise DataError(f"{path}: user {str(dup)!r} occurs in more than one record")
    if len(lengths) and lengths.min() < used:
        raise DataError(f"{path}: a sequence has {int(lengths.min())} events, fewer than "
                        f"min_events={used}")
    if len(flat) and (flat.min() < NUM_RESERVED or flat.max() >= len(vocab)):
        raise DataError(f"{path}: item index out of the catalogue range [{NUM_RESERVED}, "
                        f"{len(vocab) - 1}] of {vocab_path}")
    pieces = np.split(flat.astype(np.int32), np.cumsum(lengths)[:-1]) if len(lengths) else []
    sequences = [pieces[i] for i in order]
    data = SequenceData(
        users=users.tolist(),
        sequences=sequences,
        vocab=vocab,
        item_popularity=popularity,
        dropped_users=int(meta.get("dropped_users", 0)),
        dropped_interactions=int(meta.get("dropped_interactions", 0)),
        source=path,
    )
    if whole:
        expected = (int(meta.get("num_users", -1)), int(meta.get("num_interactions", -1)))
        if (data.num_users, int(lengths.sum())) != expected:
            raise DataError(
                f"{path}: the shards hold {data.num_users} users and {int(lengths.sum())} events, "
                f"{meta_path} says {expected[0]} and {expected[1]}"
            )
        train = flat[(np.repeat(np.cumsum(lengths), lengths) - np.arange(len(flat)) - 1) >= 2]
        if not np.array_equal(np.bincount(train, minlength=len(vocab)), popularity):
            raise DataError(f"{pop_path}: does not match the training part of the sequences")
    return data


def vocabulary_lookup(vocab):
    """``{raw id: index}`` for a vocabulary list."""
    return {raw: i for i, raw in enumerate(vocab)}


def encode_items(raw_ids, vocab):
    """``np.int32`` indices of raw ids (strings, or numbers converted with ``str``); unknown → 1."""
    lookup = vocab if isinstance(vocab, dict) else vocabulary_lookup(vocab)
    return np.asarray([lookup.get(str(r), OOV_INDEX) for r in raw_ids], dtype=np.int32)


def save_vocabulary(vocab, path):
    """Writes one raw id per line (line ``i`` holds index ``i``), UTF-8, ``\\n`` line ends."""
    vocab = list(vocab)
    if vocab[:NUM_RESERVED] != [PAD, OOV]:
        raise DataError(f"{path}: a vocabulary must start with {PAD!r}, {OOV!r}, got {vocab[:2]}")
    for i, raw in enumerate(vocab):
        raw = str(raw)
        if not raw or any(c in raw for c in "\n\r\t"):
            raise DataError(
                f"{path}: cannot save vocabulary index {i}: raw id {raw!r} is empty or contains "
                "a newline/tab"
            )
    Path(path).write_text("\n".join(str(r) for r in vocab) + "\n", encoding="utf-8")


def load_vocabulary(path):
    """Reads a file written by :func:`save_vocabulary` back into a list."""
    path = Path(path)
    return _parse_vocabulary(path, _read_text(path))


def _parse_vocabulary(path, text):
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = [line.rstrip("\r") for line in lines]
    if vocab[:NUM_RESERVED] != [PAD, OOV]:
        raise DataError(f"{path}: line 1-2 must be {PAD!r} and {OOV!r}, got {vocab[:2]}")
    seen = {}
    for i, raw in enumerate(vocab):
        if not raw:
            raise _fail(path, i + 1, "empty raw id")
        if raw in seen:
            raise _fail(path, i + 1, f"raw id {raw!r} repeats line {seen[raw] + 1}")
        seen[raw] = i
    return vocab


# --------------------------------------------------------------------------- windowing


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
        return flat, {"ends": ends, "lengths": win_len}
    # "last": one example per prefix h[:j], 1 <= j < len(h); target h[j].
    user = np.repeat(np.arange(len(pairs)), pairs)
    j = _within(pairs) + 1
    ends = starts[user] + j
    return flat, {
        "ends": ends,
        "lengths": np.minimum(j, max_len),
        "targets": flat[ends].astype(np.int32),
    }


def training_examples(data, max_len, regime="all"):
    """The training examples as NumPy arrays (unshuffled, in user order), for inspection.

    Same content as :func:`training_dataset` (which never materializes them all):
    ``{"inputs": int32 [n, max_len], "targets": int32 [n, max_len] ("all") or [n] ("last")}``.
    """
    flat, table = _training_table(data, max_len, regime)
    inputs = _gather_windows_np(flat, table["ends"], table["lengths"], max_len)
    if regime == "all":
        targets = _gather_windows_np(flat, table["ends"] + 1, table["lengths"], max_len)
    else:
        targets = table["targets"]
    return {"inputs": inputs, "targets": targets}


def num_training_examples(data, max_len, regime="all"):
    """How many examples :func:`training_dataset` yields per epoch (before batching)."""
    return len(_training_table(data, max_len, regime)[1]["ends"])


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

    Users whose training part has a single event give no example. Shuffling (full
    buffer, reshuffled every epoch, seeded) and batching happen in tf.data; with
    ``drop_remainder`` (the default, static shapes for XLA) a last incomplete batch is
    dropped. ``dataset.cardinality()`` is the number of batches per epoch.
    """
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
        out = {"inputs": _gather_windows_tf(flat_t, batch["ends"], batch["lengths"], max_len)}
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
      padding rows).

    The last batch is padded to the full ``batch_size`` with rows of weight 0 (all
    zeros), so every batch has the same static shape and no user is dropped.
    """
    _check_split(split, ("valid", "test"))
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
        }

    return tf.data.Dataset.from_tensor_slices(table).batch(batch_size, drop_remainder=True) \
        .map(materialize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) \
        .prefetch(tf.data.AUTOTUNE)
