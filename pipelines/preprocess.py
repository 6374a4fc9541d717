"""Interaction files -> per-user sequences + vocabulary, with Apache Beam and tf.Transform.

Runs on Beam's DirectRunner by default; any other Beam option passes through, so the
same command scales out on Dataflow, Flink or Spark::

    python pipelines/preprocess.py --input 'data/part-*.inter' --output prep/
    python pipelines/preprocess.py --input gs://B/inter/*.csv --output gs://B/prep \\
        --runner DataflowRunner --project P --region R --temp_location gs://B/tmp \\
        --setup_file ./setup.py --requirements_file pipelines/requirements.txt

The output directory is what ``tfrs_linear.data.load_preprocessed`` reads (and
``tfrs-linear train --data DIR`` / ``evaluate --data DIR``): it gives the SAME
``SequenceData`` as ``build_sequences`` on the raw files read in the same order
(``docs/protocol.md``):

* Input: every ``--input`` is a file or a glob (Beam file systems: local, ``gs://``, ...);
  the files are taken in the order of the ``--input`` flags, each glob's matches in path
  order, a file named twice only once. Each file is parsed by
  ``tfrs_linear.data.parse_interactions`` -- the in-memory loader's own parser -- so the
  formats, the format guess and the errors (``FILE: line N: ...``) are identical. **Each
  input file is read whole by one worker**: shard big inputs into several files.
* Every event keeps ``(timestamp, file index, line number)``; a user's events are sorted
  by that key, i.e. by time with ties in input order (file order, then line).
* Exact duplicates (same user, item and timestamp) are dropped, all but the first in that
  order, unless ``--keep-duplicates``; then users with fewer than ``--min-events`` (3)
  events are dropped. Both are counted: Beam metrics counters (namespace
  ``tfrs_linear.preprocess``) and ``metadata.json``.
* Vocabulary: ``[PAD]``, ``[OOV]``, then every item of the kept users by DESCENDING
  frequency in the training part (each sequence without its last 2 events), ties by the
  raw id's string order ascending; items seen only in the last two positions have
  frequency 0 and come last, in string order.

  The counting is tf.Transform's ``tft.vocabulary`` (``store_frequency=True``) over the
  training items and over all kept items, run by ``tft_beam.AnalyzeDataset``. Its order is
  NOT the protocol's: tft sorts by decreasing frequency and then in REVERSE
  lexicographic order of the token bytes (checked with tensorflow-transform 1.21: counts
  {9: 2, 10: 2, a: 2, b: 2} come out ``b, a, 9, 10``; the protocol wants ``10, 9, a, b``),
  and it lists tokens of zero frequency only when they occur in its input. So the final
  order is computed in a Beam step from tft's counts (one worker sorts the catalogue, as
  tft's own ordering step does), and ``vocab.txt`` is written from it in exactly
  ``save_vocabulary``'s format. tft's files stay in ``transform_fn/assets/``
  (``train_item_frequency``, ``kept_item_frequency``: frequency + token, tft's order);
  only ``vocab.txt`` defines the indices.

Output (written into ``.OUTPUT.tmp-*`` next to it, then renamed into place; a non-empty
``--output`` is refused unless ``--overwrite``)::

    metadata.json                  counts, sources, shards, options (written last)
    vocab.txt                      line i = raw id of index i (save_vocabulary's format)
    item_popularity.txt            line i = training frequency of index i (0, 0 for PAD/OOV)
    sequences-SSSSS-of-NNNNN.tfrecord[.gz]   a tf.train.Example per kept user:
        user_id (bytes), item_ids (int64 list: indices of the whole sequence, oldest
        first), item_raw_ids (bytes list: the raw ids, parallel)
    transform_fn/, transformed_metadata/   tf.Transform's analysis (tft_beam.WriteTransformFn)

On an object store (``gs://``) there is no directory rename: the files are moved one by
one from ``OUTPUT.tmp-*`` with ``metadata.json`` last, and readers treat a directory
without ``metadata.json`` as unfinished.
"""

# One file on purpose (about 670 lines, over the project's ~600): run as a script, this module is
# __main__, whose functions Beam's pickler ships by value; a sibling module would be shipped by
# name, and nothing but the tfrs_linear package (--setup_file) is installed on remote workers.
import argparse
import json
import os
import re
import shutil
import sys
import uuid

# tfrs_linear first (it sets up Keras 2 before TensorFlow loads). Beam needs no deferral: its
# pickler refers to modules by name and a worker imports them again (install the package there
# with --setup_file). Beam, tf.Transform, tfx-bsl, pyarrow are optional: imported where used.
import tfrs_linear
from tfrs_linear import data as data_lib
from tfrs_linear.constants import NUM_RESERVED, OOV, PAD

NAMESPACE = "tfrs_linear.preprocess"
TRAIN_VOCAB = "train_item_frequency"
KEPT_VOCAB = "kept_item_frequency"
SHARD_PREFIX = "sequences"
TFT_TMP = ".tft-tmp"
COMPRESSIONS = ("none", "gzip")


class PreprocessError(Exception):
    """A usage problem detected before the pipeline runs (bad flags, existing output)."""


# ------------------------------------------------------------------------ file handling


def _is_remote(path):
    return "://" in str(path)


def _join(directory, name):
    return str(directory).rstrip("/") + "/" + name if _is_remote(directory) else os.path.join(directory, name)


def expand_inputs(patterns):
    """The input files, in order: flags in order, each glob's matches by path, no repeats."""
    from apache_beam.io.filesystems import FileSystems

    files, seen = [], set()
    for pattern in patterns:
        if not _is_remote(pattern) and os.path.isdir(pattern):
            raise PreprocessError(f"--input {pattern}: is a directory; give files or a glob "
                                  f"such as '{os.path.join(pattern, '*')}'")
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # noqa: BLE001 - Beam raises BeamIOError and friends
            raise PreprocessError(f"--input {pattern}: cannot list: {e}") from None
        paths = sorted(m.path for m in matched if not m.path.endswith("/"))
        if not paths:
            raise PreprocessError(f"--input {pattern}: no file matches")
        for p in paths:
            if p not in seen:
                seen.add(p)
                files.append(p)
    return files


def _output_is_empty(output):
    if _is_remote(output):
        from apache_beam.io.filesystems import FileSystems

        try:
            return not FileSystems.match([_join(output, "**")])[0].metadata_list
        except Exception:  # noqa: BLE001 - nothing there
            return True
    if not os.path.exists(output):
        return True
    if not os.path.isdir(output):
        raise PreprocessError(f"--output {output}: exists and is not a directory")
    return not os.listdir(output)


# ----------------------------------------------------------------------- pipeline steps


def _read_file(element, format):
    """(file index, path) -> (user, (timestamp, file index, line, item)) for every event.

    Also emits one record per file (path, format, events) to the tagged output ``files``.
    """
    import apache_beam as beam
    from apache_beam.io.filesystems import CompressionTypes, FileSystems
    from apache_beam.metrics import Metrics

    index, path = element
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            raw = f.read()
    except Exception as e:  # noqa: BLE001 - any file system's error
        raise data_lib.DataError(f"{path}: cannot read the file: {e}") from None
    inter, lines = data_lib.parse_interactions(raw, path, format)
    for reserved in (PAD, OOV):
        bad = inter.items == reserved
        if bad.any():
            line = int(lines[bad.argmax()])
            raise data_lib.DataError(f"{path}: line {line}: the raw item id {reserved!r} is "
                                     "reserved for the vocabulary")
    for k, item in enumerate(inter.items):
        if any(c in item for c in "\t\n\r"):
            raise data_lib.DataError(f"{path}: line {int(lines[k])}: item id {str(item)!r} holds a "
                                     "tab or line break and cannot be written to vocab.txt")
    Metrics.counter(NAMESPACE, "files_read").inc()
    Metrics.counter(NAMESPACE, "events_read").inc(len(inter))
    yield beam.pvalue.TaggedOutput("files", {"index": index, "path": path, "format": inter.format,
                                             "events": len(inter)})
    for user, item, ts, line in zip(inter.users.tolist(), inter.items.tolist(),
                                    inter.timestamps.tolist(), lines.tolist()):
        yield user, (ts, index, line, item)


def _sequence(element, min_events, keep_duplicates):
    """(user, events) -> (user, [items, oldest first]); what it drops goes to the tagged
    output ``dropped`` as (users, their events, exact duplicates)."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    user, events = element
    events = sorted(events)  # (timestamp, file index, line, item): ties in input order
    duplicates = 0
    if not keep_duplicates:  # build_sequences' rule: the first (file, line) of a (time, item)
        first = {}
        for e in events:
            first.setdefault((e[0], e[3]), e)
        duplicates, events = len(events) - len(first), sorted(first.values())
        Metrics.counter(NAMESPACE, "duplicates_dropped").inc(duplicates)
    if len(events) < min_events:
        Metrics.counter(NAMESPACE, "users_dropped").inc()
        Metrics.counter(NAMESPACE, "interactions_dropped").inc(len(events))
        yield beam.pvalue.TaggedOutput("dropped", (1, len(events), duplicates))
        return
    if duplicates:
        yield beam.pvalue.TaggedOutput("dropped", (0, 0, duplicates))
    Metrics.counter(NAMESPACE, "users_kept").inc()
    Metrics.counter(NAMESPACE, "interactions_kept").inc(len(events))
    yield user, [e[3] for e in events]


_COLUMNS = ("items", "train_items")


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([(name, pa.large_list(pa.large_binary())) for name in _COLUMNS])


def _tensor_adapter_config():
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.public import tfxio

    representations = {
        name: schema_pb2.TensorRepresentation(
            varlen_sparse_tensor=schema_pb2.TensorRepresentation.VarLenSparseTensor(column_name=name))
        for name in _COLUMNS
    }
    return tfxio.TensorAdapterConfig(_arrow_schema(), representations)


def _record_batch(users):
    """[(user, items)] -> an Arrow RecordBatch: ``items`` and ``train_items`` (= items[:-2])."""
    import pyarrow as pa

    items = [[i.encode("utf-8") for i in seq] for _, seq in users]
    columns = [items, [seq[:-2] for seq in items]]
    return pa.RecordBatch.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, _arrow_schema())], schema=_arrow_schema())


def _preprocessing_fn(inputs):
    """tf.Transform: item frequencies over the training part and over all kept items."""
    import tensorflow_transform as tft

    train = inputs["train_items"]
    kept = inputs["items"]
    tft.vocabulary(train.values, vocab_filename=TRAIN_VOCAB, store_frequency=True,
                   file_format="text")
    tft.vocabulary(kept.values, vocab_filename=KEPT_VOCAB, store_frequency=True,
                   file_format="text")
    return {"items": kept, "train_items": train}


def _read_frequencies(path):
    from apache_beam.io.filesystems import FileSystems

    counts = {}
    with FileSystems.open(path) as f:
        text = f.read().decode("utf-8")
    for line in text.split("\n"):
        if line:
            count, token = line.split(" ", 1)
            counts[token] = int(count)
    return counts


def _ordered_vocabulary(transform_fn_dir, totals, dropped, sources, min_events):
    """The protocol's vocabulary from tft's counts: (-training frequency, raw id)."""
    users, interactions = totals
    if users == 0:  # build_sequences' message
        dropped_users, dropped_events, duplicates = dropped
        dups = f", {duplicates} exact duplicates dropped" if duplicates else ""
        raise data_lib.DataError(
            f"{sources}: no user has {min_events} or more events ({dropped_users} users, "
            f"{dropped_events + duplicates} events read{dups}); leave-one-out needs a training "
            "event, a validation and a test target per user")
    assets = _join(transform_fn_dir, "assets")
    train = _read_frequencies(_join(assets, TRAIN_VOCAB))
    kept = _read_frequencies(_join(assets, KEPT_VOCAB))
    # Consistency with Beam's own counts (tft drops tokens it cannot write; none should be).
    if sum(kept.values()) != interactions or sum(train.values()) != interactions - 2 * users:
        raise RuntimeError(
            f"tf.Transform counted {sum(kept.values())} kept / {sum(train.values())} training "
            f"events, Beam {interactions} / {interactions - 2 * users}"
        )
    if not set(train) <= set(kept):
        raise RuntimeError("tf.Transform's training vocabulary is not within the kept items")
    items = sorted(kept, key=lambda token: (-train.get(token, 0), token))
    return {
        "vocab": [PAD, OOV] + items,
        "popularity": [0] * NUM_RESERVED + [train.get(token, 0) for token in items],
    }


class _ToExample:
    """(user, items) -> serialized tf.train.Example, under the vocabulary side input."""

    def __init__(self):
        self._key = None
        self._lookup = None

    def __call__(self, element, vocabulary):
        from tensorflow.core.example import example_pb2

        if self._key != id(vocabulary):
            self._lookup = data_lib.vocabulary_lookup(vocabulary["vocab"])
            self._key = id(vocabulary)
        user, items = element
        ex = example_pb2.Example()
        feats = ex.features.feature
        feats[data_lib.USER_FEATURE].bytes_list.value.append(user.encode("utf-8"))
        feats[data_lib.ITEMS_FEATURE].int64_list.value.extend(self._lookup[i] for i in items)
        feats[data_lib.RAW_ITEMS_FEATURE].bytes_list.value.extend(i.encode("utf-8") for i in items)
        return ex.SerializeToString()


def _write_bytes(path, payload):
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(payload)


def _write_outputs(_, out_dir, vocabulary, totals, dropped, files, shards, options):
    """vocab.txt, item_popularity.txt, then metadata.json (last: it marks completion)."""
    vocab_path = _join(out_dir, data_lib.VOCAB_FILE)
    vocab_text = data_lib.vocabulary_text(vocabulary["vocab"], vocab_path)  # save_vocabulary's
    _write_bytes(vocab_path, vocab_text.encode("utf-8"))
    _write_bytes(_join(out_dir, data_lib.POPULARITY_FILE),
                 "".join(f"{c}\n" for c in vocabulary["popularity"]).encode("ascii"))
    users, interactions = totals
    dropped_users, dropped_interactions, duplicates = dropped
    files = sorted(files, key=lambda f: f["index"])
    meta = {
        "kind": data_lib.PREPROCESSED_KIND,
        "format_version": data_lib.PREPROCESSED_VERSION,
        "created_by": "pipelines/preprocess.py",
        "tfrs_linear": tfrs_linear.__version__,
        "sources": files,
        "num_source_files": len(files),
        "events_read": int(sum(f["events"] for f in files)),
        "min_events": options["min_events"],
        "num_users": int(users),
        "num_interactions": int(interactions),
        "dropped_users": int(dropped_users),
        "dropped_interactions": int(dropped_interactions),
        "keep_duplicates": options["keep_duplicates"],
        "dropped_duplicates": int(duplicates),
        "num_items": len(vocabulary["vocab"]) - NUM_RESERVED,
        "vocab_size": len(vocabulary["vocab"]),
        "vocabulary": data_lib.VOCAB_FILE,
        "item_popularity": data_lib.POPULARITY_FILE,
        "vocabulary_order": "[PAD], [OOV], then by descending training frequency (each sequence "
                            "without its last 2 events), ties by raw id string order ascending",
        "shards": sorted(os.path.basename(s.rstrip("/")) for s in shards),
        "compression": options["compression"],
        "features": {
            data_lib.USER_FEATURE: "bytes: raw user id",
            data_lib.ITEMS_FEATURE: "int64 list: vocabulary indices of the whole sequence, oldest first",
            data_lib.RAW_ITEMS_FEATURE: "bytes list: raw item ids, parallel to item_ids",
        },
        "tf_transform": {"transform_fn": "transform_fn", "vocabularies": [TRAIN_VOCAB, KEPT_VOCAB],
                         "note": "tft's order (frequency, then reverse string order); "
                                 "vocab.txt defines the indices"},
    }
    _write_bytes(_join(out_dir, data_lib.METADATA_FILE),
                 (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def build_pipeline(pipeline, files, out_dir, format="auto", min_events=3, num_shards=0,
                   compression="none", keep_duplicates=False):
    """Adds the preprocessing to ``pipeline``; everything is written under ``out_dir``.

    Must run inside ``tft_beam.Context(temp_dir=...)``.
    """
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.io.filesystem import CompressionTypes

    p = pipeline
    parsed = (
        p
        | "Files" >> beam.Create(list(enumerate(files)))
        | "SpreadFiles" >> beam.Reshuffle()
        | "Parse" >> beam.FlatMap(_read_file, format).with_outputs("files", main="events")
    )
    split = (
        parsed.events
        | "ByUser" >> beam.GroupByKey()
        | "Sequences" >> beam.FlatMap(_sequence, int(min_events), bool(keep_duplicates))
        .with_outputs("dropped", main="kept")
    )
    kept = split.kept
    totals = (
        kept
        | "CountKept" >> beam.Map(lambda kv: (1, len(kv[1])))
        | "SumKept" >> beam.CombineGlobally(_sum_tuples, 2)
    )
    dropped = split.dropped | "SumDropped" >> beam.CombineGlobally(_sum_tuples, 3)

    # tf.Transform's input: Arrow record batches (TFXIO), a batch of users each, with
    # the whole sequence and its training part as variable-length string features.
    record_batches = (
        kept
        | "BatchUsers" >> beam.BatchElements(min_batch_size=1, max_batch_size=1024)
        | "ToRecordBatch" >> beam.Map(_record_batch)
    )
    transform_fn = (record_batches, _tensor_adapter_config()) \
        | "Analyze" >> tft_beam.AnalyzeDataset(_preprocessing_fn)
    _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(out_dir)

    vocabulary = transform_fn[0] | "OrderVocabulary" >> beam.Map(
        _ordered_vocabulary, totals=beam.pvalue.AsSingleton(totals),
        dropped=beam.pvalue.AsSingleton(dropped), sources=", ".join(files),
        min_events=int(min_events))
    gzip = compression == "gzip"
    shards = (
        kept
        | "ToExample" >> beam.Map(_ToExample(), vocabulary=beam.pvalue.AsSingleton(vocabulary))
        | "WriteShards" >> beam.io.WriteToTFRecord(
            _join(out_dir, SHARD_PREFIX),
            file_name_suffix=".tfrecord.gz" if gzip else ".tfrecord",
            num_shards=int(num_shards),
            compression_type=CompressionTypes.GZIP if gzip else CompressionTypes.UNCOMPRESSED,
        )
    )
    _ = (
        p
        | "Finish" >> beam.Create([None])
        | "WriteMetadata" >> beam.Map(
            _write_outputs,
            out_dir=out_dir,
            vocabulary=beam.pvalue.AsSingleton(vocabulary),
            totals=beam.pvalue.AsSingleton(totals),
            dropped=beam.pvalue.AsSingleton(dropped),
            files=beam.pvalue.AsList(parsed.files),
            shards=beam.pvalue.AsList(shards),
            options={"min_events": int(min_events), "compression": compression,
                     "keep_duplicates": bool(keep_duplicates)},
        )
    )
    return pipeline


def _sum_tuples(rows, width):
    """Element-wise sum of ``width``-tuples (zeros for none)."""
    total = [0] * width
    for row in rows:
        for k, value in enumerate(row):
            total[k] += value
    return tuple(total)


# ------------------------------------------------------------------------------ driver


def _commit(tmp, output, overwrite):
    """Moves the finished ``tmp`` to ``output`` (a rename locally, file by file remotely)."""
    from apache_beam.io.filesystems import FileSystems

    if not _is_remote(output):
        old = None
        if os.path.exists(output):
            if os.listdir(output) and not overwrite:  # appeared while we ran
                raise PreprocessError(f"--output {output}: not empty (pass --overwrite)")
            old = os.path.join(os.path.dirname(os.path.abspath(output)),
                               f".{os.path.basename(os.path.abspath(output))}.old-{uuid.uuid4().hex[:8]}")
            os.rename(output, old)
        os.rename(tmp, output)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return
    if not _output_is_empty(output):
        FileSystems.delete([output])
    found = [m.path for m in FileSystems.match([_join(tmp, "**")])[0].metadata_list]
    meta = [f for f in found if f.endswith("/metadata.json") and f[len(tmp):].count("/") == 1]
    rest = [f for f in found if f not in meta]
    for group in (rest, meta):  # metadata.json last
        if group:
            FileSystems.rename(group, [output.rstrip("/") + f[len(tmp.rstrip("/")):] for f in group])
    FileSystems.delete([tmp])


def _cleanup(path):
    from apache_beam.io.filesystems import FileSystems

    try:
        if _is_remote(path):
            FileSystems.delete([path])
        else:
            shutil.rmtree(path, ignore_errors=True)
    except Exception:  # noqa: BLE001 - best effort
        pass


def _data_error_in(exc):
    """The DataError behind a runner's wrapped exception, if any (message preserved)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, data_lib.DataError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def pipeline_options(beam_args):
    """Beam's ``PipelineOptions`` from the flags this script does not take itself.

    Raises ``PreprocessError`` for what Beam would otherwise drop with a log line only: a
    flag that no Beam options class defines (a typo such as ``--direct_num_worker`` would
    run one local worker) and a stray value (``--input a.csv b.csv``, e.g. an unquoted glob
    that the shell expanded, would read ``a.csv`` only); and for a bad value of a Beam flag.
    """
    import argparse
    import difflib

    from apache_beam.options.pipeline_options import PipelineOptions

    beam_args = [str(a) for a in beam_args]
    parsers = []  # Beam's own parser of every options class, as Beam builds it
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    parser = parsers[0]
    parser.exit_on_error = False  # a bad value raises instead of printing Beam's usage
    try:
        _, unknown = parser.parse_known_args(beam_args)
    except argparse.ArgumentError as e:
        raise PreprocessError(str(e)) from None
    if unknown and not unknown[0].startswith("-"):
        raise PreprocessError(
            f"unexpected argument {unknown[0]!r}: give each --input one file or a quoted glob "
            "(--input 'data/part-*.csv'), and each option its value")
    if unknown:
        name = unknown[0].split("=", 1)[0]
        known = [s for p in (parser, build_parser()) for a in p._actions  # argparse's list
                 for s in a.option_strings]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise PreprocessError(
            f"{name}: not an option of this script nor a Beam pipeline option{hint}")
    return PipelineOptions(beam_args)


def preprocess(inputs, output, format="auto", min_events=3, overwrite=False, num_shards=0,
               compression="none", beam_args=(), keep_duplicates=False):
    """Runs the pipeline; returns the written ``metadata.json`` as a dict.

    Args:
      inputs: files or globs (see the module docstring for the order).
      output: the output directory (local or a Beam file system URL).
      format: one of ``tfrs_linear.data.FILE_FORMATS`` or ``"auto"`` (per file).
      min_events: users with fewer events are dropped (and counted); at least 3.
      overwrite: replace a non-empty ``output``.
      num_shards: TFRecord shards (0: the runner decides).
      compression: ``"none"`` or ``"gzip"`` for the shards.
      beam_args: Beam pipeline options (``--runner``, ``--temp_location``, ...); see
        ``pipeline_options`` (a flag Beam does not know is refused).
      keep_duplicates: keep exact duplicate events (same user, item and timestamp).

    Raises:
      PreprocessError: bad arguments (Beam's included) or a non-empty output without
        ``overwrite``; raised before anything is written.
      tfrs_linear.data.DataError: a bad input file (the message names file and line).
    """
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.metrics.metric import MetricsFilter

    if isinstance(inputs, str):
        inputs = [inputs]
    if format != "auto" and format not in data_lib.FILE_FORMATS:
        raise PreprocessError(f"--format {format!r}: expected auto or one of {data_lib.FILE_FORMATS}")
    if int(min_events) < 3:
        raise PreprocessError(f"--min-events must be >= 3 for leave-one-out, got {min_events}")
    if compression not in COMPRESSIONS:
        raise PreprocessError(f"--compression must be one of {COMPRESSIONS}, got {compression!r}")
    options = pipeline_options(beam_args)
    output = str(output)
    if not _output_is_empty(output) and not overwrite:
        raise PreprocessError(
            f"--output {output}: exists and is not empty; pass --overwrite to replace it, or "
            "choose another directory"
        )
    files = expand_inputs(inputs)
    if _is_remote(output):
        tmp = output.rstrip("/") + f".tmp-{uuid.uuid4().hex[:8]}"
    else:
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(output))}.tmp-"
                                   f"{uuid.uuid4().hex[:8]}")
        os.mkdir(tmp)  # (not mkdtemp: the result keeps the umask's permissions)
    try:
        with beam.Pipeline(options=options) as p, \
                tft_beam.Context(temp_dir=_join(tmp, TFT_TMP)):
            build_pipeline(p, files, tmp, format=format, min_events=min_events,
                           num_shards=num_shards, compression=compression,
                           keep_duplicates=keep_duplicates)
        result = p.result  # the with-block ran and waited for it
        _cleanup(_join(tmp, TFT_TMP))
        _commit(tmp, output, overwrite)
    except BaseException as e:
        _cleanup(tmp)
        cause = _data_error_in(e)
        if cause is not None:  # the message without Beam's " [while running 'STEP']"
            message = re.sub(r"( \[while running '[^']*'\])+$", "", str(cause))
            if cause is not e or message != str(e):
                raise data_lib.DataError(message) from e
        raise
    meta = data_lib.read_preprocessed_metadata(output)
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
        meta["_counters"] = {c.key.metric.name: c.committed for c in counters}
    except Exception:  # noqa: BLE001 - not every runner reports metrics
        pass
    return meta


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python pipelines/preprocess.py",
        description=(
            "Beam + tf.Transform preprocessing: interaction files -> per-user sequences "
            "(TFRecord), vocab.txt, item popularity and metadata.json, which "
            "`tfrs-linear train --data DIR` reads. Same sorting, dropping and vocabulary "
            "as the in-memory loader (docs/protocol.md)."
        ),
        epilog=(
            "Every other option goes to Beam, e.g. --runner DataflowRunner --project P "
            "--region R --temp_location gs://B/tmp --setup_file ./setup.py "
            "--requirements_file pipelines/requirements.txt, or --direct_num_workers 4 "
            "--direct_running_mode multi_processing locally (pipelines/README.md). A flag "
            "that Beam does not know either is refused. Each input file is read whole by one "
            "worker: shard big inputs into several files."
        ),
    )
    parser.add_argument("--input", action="append", required=True, metavar="FILE_OR_GLOB",
                        help="interaction file or glob; repeat for more (order: flags in order, "
                             "each glob's matches by path)")
    parser.add_argument("--format", default="auto", choices=("auto",) + data_lib.FILE_FORMATS,
                        help="input format (default: guessed per file, as the in-memory loader)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="output directory (local or e.g. gs://...); must be empty or absent")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--min-events", type=int, default=3,
                        help="drop users with fewer events (default 3, the minimum)")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="keep exact duplicate events (same user, item and timestamp); by "
                             "default all but the first are dropped and counted")
    parser.add_argument("--num-shards", type=int, default=0,
                        help="TFRecord shards (default 0: the runner decides)")
    parser.add_argument("--compression", default="none", choices=COMPRESSIONS,
                        help="compression of the TFRecord shards")
    return parser


def main(argv=None):
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        meta = preprocess(args.input, args.output, format=args.format,
                          min_events=args.min_events, overwrite=args.overwrite,
                          num_shards=args.num_shards, compression=args.compression,
                          beam_args=beam_args, keep_duplicates=args.keep_duplicates)
    except (PreprocessError, data_lib.DataError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {meta['num_users']} users, {meta['num_items']} items, "
          f"{meta['num_interactions']} interactions from {meta['num_source_files']} file(s); "
          f"dropped {meta['dropped_duplicates']} exact duplicate events and "
          f"{meta['dropped_users']} users with fewer than {meta['min_events']} events "
          f"({meta['dropped_interactions']} interactions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
