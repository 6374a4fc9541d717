"""TF Serving deployment: versioned SavedModel export, a TF1-style check, a client.

Export layout (``tfrs-linear export --model DIR --base-path saved_models/NAME``)::

    saved_models/
      models.config                 ModelServerConfig text proto: every model folder,
                                    base_path /models/NAME (the container convention)
      NAME/
        1/ 2/ ...                   one version each, max(existing)+1, renamed into place
          saved_model.pb            from a non-numeric .tmp-export-* folder, so TF
          variables/                Serving never sees a half-written version
          assets/vocab.txt          raw item id per line (line i = index i)
          assets.extra/
            tf_serving_warmup_requests   TFRecord of PredictionLog (every signature)
            tfrs_linear.json             source model dir + export options

Signatures (plain TF ops only: no ``jit_compile``, no ``py_function``):

* ``serving_default``: ``item_ids`` string ``[batch, length]`` (raw ids, oldest first,
  right-padded with ``""``; any length, the newest ``max_len`` are used; unknown ids
  and the reserved ``[PAD]``/``[OOV]`` tokens map to the OOV index) →
  ``item_ids`` string ``[batch, k]`` and ``scores`` float32 ``[batch, k]``: exact
  brute-force top-k over the catalogue (indices 2..V-1; padding and OOV are never
  returned). With ``exclude_history`` every item of the request's history (all of it,
  not only the newest ``max_len``) scores ``-inf``; they only appear at the tail when
  ``k`` exceeds the catalogue minus the history.
* ``encode``: ``item_ids`` as above → ``user_embedding`` float32 ``[batch, d]``.
* ``serving_tf_example``: ``examples`` string ``[batch]`` of serialized ``tf.Example``
  with a bytes feature ``item_ids`` (variable length) → the outputs of
  ``serving_default``.

A wrong input dtype is rejected by the signature itself ("expected to be a string
tensor"); a wrong rank fails a run-time check whose message names the signature, the
input and the expected shape (TF Serving does not check ranks against the TensorSpec).

``tfrs-linear check-serving saved_models/NAME/V`` loads the version as TF Serving's
SavedModelBundle does (TF1 session, tensors by name), replays the warmup requests,
scans the graph and its function library for ops stock TF Serving lacks (PyFunc,
EagerPyFunc, custom ops, ``_XlaMustCompile``) and compares every output with the Python
model read from the model dir recorded in ``assets.extra/tfrs_linear.json`` (or
``--model DIR``) within ``--tolerance``.

:class:`Client` calls a running TF Serving over REST or gRPC.
"""

import base64
import json
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

SIGNATURES = ("serving_default", "encode", "serving_tf_example")
TOPK_OUTPUTS = ("item_ids", "scores")
WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_INFO_FILE = "tfrs_linear.json"
MODELS_CONFIG = "models.config"
TMP_PREFIX = ".tmp-export-"
CONTAINER_MODELS_ROOT = "/models"
PAD_INDEX, OOV_INDEX, NUM_RESERVED = 0, 1, 2
# Ops that need the Python interpreter of the exporting process: never in TF Serving.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
# SavedModel helper ops that are registered in core TF but not exposed in tf.raw_ops.
_CORE_EXTRA_OPS = frozenset({"_Arg", "_Retval", "_DeviceArg", "_DeviceRetval"})
UNKNOWN_WARMUP_ID = "__tfrs_linear_unknown_item__"


class ServingError(RuntimeError):
    """A failed export check or serving call; the message says what failed and where."""

    def __init__(self, message, status=None, details=None):
        super().__init__(message)
        self.status = status
        self.details = details


# --------------------------------------------------------------------------- export


def _tf():
    import tfrs_linear  # noqa: F401  (Keras 2 before tf.keras is touched)
    import tensorflow as tf

    return tf


def _checked_rank(tf, tensor, rank, signature, name, what):
    """``tensor`` after a run-time rank check with a readable message.

    The signature's TensorSpec fixes the static rank, so TF Serving (and a loaded
    signature) feed a wrong-rank tensor unchecked and a later op fails cryptically. The
    rank is counted from the run-time shape values (``Shape >= -1`` summed), which graph
    optimizations cannot fold away the way they fold ``tf.rank``.
    """
    actual = tf.reduce_sum(tf.cast(tf.greater_equal(tf.shape(tensor), -1), tf.int32))
    check = tf.debugging.Assert(
        tf.equal(actual, rank),
        # No quotes: the Assert op's message escapes them.
        [f"{signature}: input {name} must be {what} (rank {rank}); got a tensor of shape",
         tf.shape(tensor)],
    )
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


class _ServingModule:
    """Builds the ``tf.Module`` that is saved: the model's variables, the vocabulary
    tables (from an asset file) and the three signature functions.

    The Keras model is only captured by the functions' closures, never tracked by the
    module, so the SavedModel holds plain variables and functions (no Keras metadata).
    """

    def __init__(self, model, vocab_path, k, exclude_history):
        tf = _tf()
        self.tf = tf
        config = model.config
        vocab_size = int(model.vocab_size)
        catalogue = vocab_size - NUM_RESERVED
        if catalogue < 1:
            raise ValueError("the vocabulary has no catalogue items (indices 2..V-1)")
        if int(k) < 1:
            raise ValueError(f"--k must be >= 1, got {k}")
        self.k = min(int(k), catalogue)
        self.max_len = int(config.max_len)
        self.vocab_size = vocab_size
        self.exclude_history = bool(exclude_history)
        self.d_model = int(config.d_model)

        module = tf.Module(name="tfrs_linear_serving")
        module.model_variables = list(model.variables)
        module.vocab_asset = tf.saved_model.Asset(str(vocab_path))
        module.index_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                module.vocab_asset,
                key_dtype=tf.string,
                key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                value_dtype=tf.int64,
                value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=OOV_INDEX,
            name="item_index",
        )
        module.id_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                module.vocab_asset,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
            name="item_id",
        )
        self.module = module
        max_len, k_, exclude = self.max_len, self.k, self.exclude_history

        def prepare(item_ids):
            """Raw ids [B, L] → (left-padded indices [B, max_len] int32, history mask [B, V])."""
            valid = tf.not_equal(item_ids, "")
            ids = tf.maximum(module.index_table.lookup(item_ids), OOV_INDEX)  # reserved → OOV
            valid_i = tf.cast(valid, tf.int64)
            count = tf.reduce_sum(valid_i, axis=1, keepdims=True)
            from_end = count - tf.cumsum(valid_i, axis=1)  # 0 = the newest real item
            keep = tf.logical_and(valid, from_end < max_len)
            kept = tf.where(keep)  # [n, 2]: (row, position)
            cols = (max_len - 1) - tf.gather_nd(from_end, kept)
            batch = tf.shape(item_ids, out_type=tf.int64)[0]
            padded = tf.scatter_nd(
                tf.stack([kept[:, 0], cols], axis=1),
                tf.cast(tf.gather_nd(ids, kept), tf.int32),
                tf.stack([batch, tf.constant(max_len, tf.int64)]),
            )
            padded = tf.reshape(padded, [-1, max_len])
            history = None
            if exclude:
                seen = tf.where(valid)
                hits = tf.scatter_nd(
                    tf.stack([seen[:, 0], tf.gather_nd(ids, seen)], axis=1),
                    tf.ones(tf.shape(seen)[:1], tf.float32),
                    tf.stack([batch, tf.constant(vocab_size, tf.int64)]),
                )
                history = hits > 0.0
            return padded, history

        def encode_raw(item_ids):
            padded, history = prepare(item_ids)
            user = tf.cast(model.encode(padded, training=False), tf.float32)
            return user, history

        def top_k(item_ids):
            user, history = encode_raw(item_ids)
            items = tf.cast(model.item_embeddings(), tf.float32)
            scores = tf.matmul(user, items, transpose_b=True)[:, NUM_RESERVED:]
            if history is not None:
                scores = tf.where(
                    history[:, NUM_RESERVED:], tf.constant(-np.inf, tf.float32), scores
                )
            values, indices = tf.math.top_k(scores, k=k_, sorted=True)
            ids = module.id_table.lookup(tf.cast(indices, tf.int64) + NUM_RESERVED)
            return {"item_ids": ids, "scores": values}

        ids_spec = tf.TensorSpec([None, None], tf.string, name="item_ids")
        ids_what = "a string matrix [batch, length] of raw item ids, oldest first, right-padded with empty strings"

        @tf.function(input_signature=[ids_spec])
        def serving_default(item_ids):
            item_ids = _checked_rank(tf, item_ids, 2, "serving_default", "item_ids", ids_what)
            return top_k(item_ids)

        @tf.function(input_signature=[ids_spec])
        def encode(item_ids):
            item_ids = _checked_rank(tf, item_ids, 2, "encode", "item_ids", ids_what)
            user, _ = encode_raw(item_ids)
            return {"user_embedding": user}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serving_tf_example(examples):
            examples = _checked_rank(
                tf, examples, 1, "serving_tf_example", "examples",
                "a string vector [batch] of serialized tf.Example with a bytes feature item_ids",
            )
            parsed = tf.io.parse_example(
                examples, {"item_ids": tf.io.RaggedFeature(tf.string)}
            )
            item_ids = parsed["item_ids"].to_tensor(default_value="")
            item_ids = tf.reshape(item_ids, [tf.shape(examples)[0], -1])
            return top_k(item_ids)

        module.serving_default = serving_default
        module.encode = encode
        module.serving_tf_example = serving_tf_example

    def signatures(self):
        m = self.module
        return {
            "serving_default": m.serving_default.get_concrete_function(),
            "encode": m.encode.get_concrete_function(),
            "serving_tf_example": m.serving_tf_example.get_concrete_function(),
        }


def numeric_versions(base_path):
    """The numeric version folders of a base path, ascending (``[]`` when none / missing)."""
    base_path = Path(base_path)
    if not base_path.is_dir():
        return []
    return sorted(int(p.name) for p in base_path.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(base_path):
    versions = numeric_versions(base_path)
    return (versions[-1] + 1) if versions else 1


def _example_rows(vocab, max_len):
    """A few realistic request batches of raw ids (right-padded with "")."""
    items = list(vocab[NUM_RESERVED:]) or [UNKNOWN_WARMUP_ID]

    def take(n, start=0):
        return [items[(start + i) % len(items)] for i in range(n)]

    def pad(rows):
        width = max((len(r) for r in rows), default=0)
        return [list(r) + [""] * (width - len(r)) for r in rows]

    return [
        pad([take(1)]),
        pad([take(3), [UNKNOWN_WARMUP_ID] + take(2, 3), []]),
        pad([take(max_len + 3, 1), take(max(1, max_len // 2), 5) + [UNKNOWN_WARMUP_ID]]),
    ]


def serialize_examples(rows):
    """Serialized ``tf.Example`` s with a bytes feature ``item_ids`` (``""`` dropped)."""
    from tensorflow.core.example import example_pb2

    out = []
    for row in rows:
        ex = example_pb2.Example()
        values = [str(v).encode("utf-8") for v in row if str(v) != ""]
        ex.features.feature["item_ids"].bytes_list.value.extend(values)
        out.append(ex.SerializeToString())
    return out


def _string_array(rows):
    return np.array([[str(v).encode("utf-8") for v in row] for row in rows], dtype=object).reshape(
        len(rows), -1 if rows and len(rows[0]) else 0
    )


def warmup_requests(model_name, vocab, max_len):
    """``PredictionLog`` protos: three batches for each signature."""
    tf = _tf()
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    logs = []
    batches = _example_rows(vocab, max_len)
    for signature in SIGNATURES:
        for rows in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            if signature == "serving_tf_example":
                value = np.array(serialize_examples(rows), dtype=object)
                request.inputs["examples"].CopyFrom(tf.make_tensor_proto(value, dtype=tf.string))
            else:
                value = _string_array(rows)
                request.inputs["item_ids"].CopyFrom(
                    tf.make_tensor_proto(value, dtype=tf.string, shape=value.shape)
                )
            logs.append(
                prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                )
            )
    return logs


def write_warmup(path, logs):
    tf = _tf()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def read_warmup(path):
    """The ``PredictionLog`` records of a warmup file."""
    tf = _tf()
    from tensorflow_serving.apis import prediction_log_pb2

    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(path))
    ]


def models_config_text(saved_models_root):
    """The ModelServerConfig text proto for every model folder under ``saved_models_root``.

    A model folder is a non-hidden sub-folder holding at least one numeric version.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    root = Path(saved_models_root)
    config = model_server_config_pb2.ModelServerConfig()
    names = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and numeric_versions(p)
    )
    for name in names:
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = f"{CONTAINER_MODELS_ROOT}/{name}"
        entry.model_platform = "tensorflow"
    return text_format.MessageToString(config)


def write_models_config(saved_models_root):
    root = Path(saved_models_root)
    text = models_config_text(root)
    fd, tmp = tempfile.mkstemp(prefix=".models.config.", dir=str(root))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, root / MODELS_CONFIG)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return root / MODELS_CONFIG


def export_model(model, vocab, base_path, k=100, exclude_history=None, model_dir=None):
    """Exports ``model`` as the next version under ``base_path``; returns its path.

    Built in ``base_path/.tmp-export-XXXX`` and renamed to the version number only when
    complete (removed on failure). Also rewrites ``<parent>/models.config``.
    """
    tf = _tf()
    base_path = Path(base_path)
    name = base_path.name
    if not name or name.startswith(".") or name.isdigit():
        raise ValueError(
            f"--base-path must name a model folder such as saved_models/NAME, got {str(base_path)!r}"
        )
    vocab = list(vocab)
    if len(vocab) != int(model.vocab_size):
        raise ValueError(f"vocabulary has {len(vocab)} entries but the model has {model.vocab_size}")
    if exclude_history is None:
        exclude_history = bool(model.config.exclude_history)
    base_path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=str(base_path)))
    scratch = Path(tempfile.mkdtemp(prefix="tfrs-linear-vocab-"))
    try:
        vocab_file = scratch / "vocab.txt"
        vocab_file.write_text("\n".join(str(v) for v in vocab) + "\n", encoding="utf-8")
        built = _ServingModule(model, vocab_file, k, exclude_history)
        tf.saved_model.save(built.module, str(tmp), signatures=built.signatures())
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        write_warmup(extra / WARMUP_FILE, warmup_requests(name, vocab, built.max_len))
        info = {
            "model_dir": str(Path(model_dir).resolve()) if model_dir else None,
            "model_name": name,
            "k": built.k,
            "requested_k": int(k),
            "exclude_history": built.exclude_history,
            "max_len": built.max_len,
            "vocab_size": built.vocab_size,
            "d_model": built.d_model,
            "signatures": list(SIGNATURES),
            "tensorflow": tf.__version__,
        }
        from tfrs_linear import __version__

        info["tfrs_linear"] = __version__
        (extra / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        version = next_version(base_path)
        while True:
            target = base_path / str(version)
            if not target.exists():
                try:
                    os.rename(tmp, target)
                    break
                except OSError:
                    if not target.exists():
                        raise
            version += 1  # a concurrent export took this number
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_models_config(base_path.parent)
    return target


def export_model_dir(model_dir, base_path, k=100, exclude_history=None):
    """Loads a trained model directory and exports it (see :func:`export_model`)."""
    from tfrs_linear.models import load_model_dir

    model, _, vocab = load_model_dir(model_dir)
    return export_model(model, vocab, base_path, k=k, exclude_history=exclude_history,
                        model_dir=model_dir)


def add_export_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="trained model directory (config.json, vocab.txt, weights/)")
    parser.add_argument("--base-path", required=True, metavar="saved_models/NAME",
                        help="the model's TF Serving base path; version max+1 is written")
    parser.add_argument("--k", type=int, default=100,
                        help="recommendations per request (capped at the catalogue size)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--exclude-history", dest="exclude_history", action="store_true",
                       default=None, help="never recommend items of the request's history")
    group.add_argument("--keep-history", dest="exclude_history", action="store_false",
                       help="history items may be recommended (default: config.exclude_history)")


def run_export(args):
    try:
        path = export_model_dir(args.model, args.base_path, k=args.k,
                                exclude_history=args.exclude_history)
    except (FileNotFoundError, ValueError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 2
    print(f"exported version {path.name} to {path}")
    print(f"TF Serving config: {Path(args.base_path).parent / MODELS_CONFIG}")
    return 0


# --------------------------------------------------------------------------- check


def _op_names(tf):
    names = set(_CORE_EXTRA_OPS)
    names.update(n for n in dir(tf.raw_ops) if not n.startswith("_"))
    return names


def _attr_true(attr_map, key):
    return key in attr_map and attr_map[key].HasField("b") and attr_map[key].b


def scan_graph(meta_graph_def, core_ops=None):
    """Problems TF Serving would have with a MetaGraphDef: a list of messages (empty = ok).

    Scans the graph's nodes and every function of its library for Python ops, ops not
    registered in core TensorFlow, and functions/nodes marked ``_XlaMustCompile``.
    """
    tf = _tf()
    core_ops = _op_names(tf) if core_ops is None else core_ops
    library = meta_graph_def.graph_def.library
    functions = {f.signature.name for f in library.function}
    problems = []

    def check_nodes(nodes, where):
        for node in nodes:
            if node.op in PYTHON_OPS:
                problems.append(
                    f"{where}: node {node.name!r} is a {node.op} (tf.py_function/numpy_function): "
                    "it runs Python code, which TF Serving cannot"
                )
            elif node.op not in core_ops and node.op not in functions:
                problems.append(
                    f"{where}: node {node.name!r} uses op {node.op!r}, which is not a core "
                    "TensorFlow op (a custom op library TF Serving does not link)"
                )
            if _attr_true(node.attr, "_XlaMustCompile"):
                problems.append(
                    f"{where}: node {node.name!r} has _XlaMustCompile=true (jit_compile=True); "
                    "stock TF Serving runs without XLA"
                )

    check_nodes(meta_graph_def.graph_def.node, "graph")
    for fn in library.function:
        where = f"function {fn.signature.name}"
        if _attr_true(fn.attr, "_XlaMustCompile"):
            problems.append(
                f"{where} has _XlaMustCompile=true (tf.function(jit_compile=True)); stock TF "
                "Serving runs without XLA and cannot load it"
            )
        check_nodes(fn.node_def, where)
    return problems


def _decode(array):
    return np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b),
                        otypes=[object])(array) if np.size(array) else np.asarray(array, object)


def _rows_of_request(signature, inputs):
    """Raw-id rows (lists of str, "" removed) of a warmup request's inputs."""
    from tensorflow.core.example import example_pb2

    if signature == "serving_tf_example":
        return [
            [v.decode("utf-8") for v in example_pb2.Example.FromString(s)
             .features.feature["item_ids"].bytes_list.value]
            for s in np.asarray(inputs["examples"]).reshape(-1)
        ]
    ids = np.asarray(inputs["item_ids"])
    return [[v for v in _decode(np.asarray(row)) if v != ""] for row in ids]


def reference_outputs(model, vocab, rows, k, exclude_history):
    """What the Python model says for raw-id rows: user embeddings and full scores."""
    lookup = {raw: i for i, raw in enumerate(vocab)}
    max_len = int(model.config.max_len)
    padded = np.zeros([len(rows), max_len], np.int32)
    history = np.zeros([len(rows), len(vocab)], bool)
    for r, row in enumerate(rows):
        idx = [max(lookup.get(v, OOV_INDEX), OOV_INDEX) for v in row]
        history[r, idx] = True
        newest = idx[-max_len:]
        if newest:
            padded[r, max_len - len(newest):] = newest
    user = model.encode(padded, training=False).numpy().astype(np.float32)
    items = model.item_embeddings().numpy().astype(np.float32)
    scores = (user.astype(np.float64) @ items.T.astype(np.float64))[:, NUM_RESERVED:]
    if exclude_history:
        scores = np.where(history[:, NUM_RESERVED:], -np.inf, scores)
    return user, scores


def _compare_topk(ids, scores, ref_scores, vocab, k, tol, label):
    problems = []
    ids = _decode(np.asarray(ids))
    scores = np.asarray(scores, np.float64)
    if ids.shape != (ref_scores.shape[0], k) or scores.shape != ids.shape:
        return [f"{label}: output shapes {ids.shape}/{scores.shape}, expected {(ref_scores.shape[0], k)}"]
    position = {raw: i - NUM_RESERVED for i, raw in enumerate(vocab) if i >= NUM_RESERVED}
    expected = -np.sort(-ref_scores, axis=1)[:, :k]
    for r in range(ids.shape[0]):
        finite = np.isfinite(expected[r])
        if not np.array_equal(finite, np.isfinite(scores[r])) or not np.allclose(
            scores[r][finite], expected[r][finite], atol=tol, rtol=0
        ):
            problems.append(f"{label} row {r}: top-k scores {scores[r]} differ from the model's {expected[r]}")
            continue
        for item, score in zip(ids[r], scores[r]):
            if item not in position:
                problems.append(f"{label} row {r}: returned {item!r}, not a catalogue item")
                break
            ref = ref_scores[r, position[item]]
            if np.isfinite(score) and not abs(ref - score) <= tol:
                problems.append(f"{label} row {r}: item {item!r} scored {score}, the model says {ref}")
                break
        if len(set(ids[r])) != len(ids[r]):
            problems.append(f"{label} row {r}: repeated items {list(ids[r])}")
    return problems


def _tensor_desc(info, tf):
    dtype = tf.dtypes.as_dtype(info.dtype).name
    shape = ([d.size for d in info.tensor_shape.dim]
             if not info.tensor_shape.unknown_rank else "unknown rank")
    return f"{dtype} {shape} ({info.name})"


def check_serving(export_dir, model_dir=None, compare=True, tolerance=1e-4, out=None):
    """Verifies an export as TF Serving loads it. Returns ``(ok, report_lines)``."""
    tf = _tf()
    out = out or []
    export_dir = Path(export_dir)
    problems = []
    if not (export_dir / "saved_model.pb").exists():
        return False, [f"FAIL: {export_dir} is not a SavedModel version folder (no saved_model.pb)"]
    out.append(f"SavedModel: {export_dir}")
    warmup_path = export_dir / "assets.extra" / WARMUP_FILE
    logs = []
    if warmup_path.exists():
        try:
            logs = read_warmup(warmup_path)  # eagerly, before the TF1 graph is entered
        except Exception as e:  # noqa: BLE001
            problems.append(f"cannot parse {warmup_path}: {e}")

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        try:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(export_dir))
        except Exception as e:  # noqa: BLE001 - reported as a check failure
            return False, out + [f"FAIL: TF1 SavedModelBundle-style load failed: {type(e).__name__}: {e}"]

        scan = scan_graph(meta)
        nfun = len(meta.graph_def.library.function)
        if scan:
            problems.extend(scan)
            out.append(f"ops scan: {len(scan)} problem(s) in {len(meta.graph_def.node)} nodes / {nfun} functions")
        else:
            out.append(f"ops scan: ok ({len(meta.graph_def.node)} nodes, {nfun} functions; no Python ops, "
                       "no custom ops, no _XlaMustCompile)")

        sigs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
        out.append("signatures:")
        for name in sorted(sigs):
            sig = sigs[name]
            ins = ", ".join(f"{k}: {_tensor_desc(v, tf)}" for k, v in sorted(sig.inputs.items()))
            outs = ", ".join(f"{k}: {_tensor_desc(v, tf)}" for k, v in sorted(sig.outputs.items()))
            out.append(f"  {name}({ins}) -> {outs}")
        info_path = export_dir / "assets.extra" / EXPORT_INFO_FILE
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        is_ours = bool(info)
        if is_ours:
            missing = [s for s in SIGNATURES if s not in sigs]
            if missing:
                problems.append(f"missing signatures {missing}")

        if is_ours and not warmup_path.exists():
            problems.append(f"no warmup file {warmup_path}")

        reference_dir = None
        if compare and not is_ours:
            problems.append(
                f"{info_path} is missing: not a tfrs-linear export, so its outputs cannot be "
                "compared with a Python model (pass --no-compare to check loading and ops only)"
            )
        elif compare and not scan:
            mdir = model_dir or info.get("model_dir")
            if not mdir or not (Path(mdir) / "config.json").exists():
                problems.append(
                    f"cannot compare with the Python model: model dir {mdir!r} (from {info_path}) "
                    "is not available; pass --model DIR or --no-compare"
                )
            else:
                reference_dir = mdir
        replayed = 0
        results = []
        if not scan:
            for n, log in enumerate(logs):
                request = log.predict_log.request
                label = f"warmup #{n + 1} ({request.model_spec.signature_name or 'serving_default'})"
                sig_name = request.model_spec.signature_name or "serving_default"
                if sig_name not in sigs:
                    problems.append(f"{label}: no signature {sig_name!r}")
                    continue
                sig = sigs[sig_name]
                try:
                    feed = {}
                    inputs = {}
                    for key, proto in request.inputs.items():
                        if key not in sig.inputs:
                            raise ValueError(f"input {key!r} is not in the signature")
                        inputs[key] = tf.make_ndarray(proto)
                        feed[sig.inputs[key].name] = inputs[key]
                    keys = sorted(sig.outputs)
                    values = sess.run([sig.outputs[o].name for o in keys], feed_dict=feed)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{label}: failed: {type(e).__name__}: {str(e).splitlines()[0]}")
                    continue
                replayed += 1
                results.append((label, sig_name, inputs, dict(zip(keys, values))))
        out.append(f"warmup: replayed {replayed} of {len(logs)} request(s) through the TF1 session")

    if reference_dir is not None and results:
        from tfrs_linear.models import load_model_dir

        try:
            model, _, vocab = load_model_dir(reference_dir)
        except Exception as e:  # noqa: BLE001
            problems.append(f"cannot load the model dir {reference_dir}: {e}")
            results = []
        k = int(info["k"])
        exclude = bool(info["exclude_history"])
        compared = 0
        for label, sig_name, inputs, outputs in results:
            rows = _rows_of_request(sig_name, inputs)
            user, scores = reference_outputs(model, vocab, rows, k, exclude)
            if sig_name == "encode":
                got = np.asarray(outputs["user_embedding"])
                if got.shape != user.shape or not np.allclose(got, user, atol=tolerance, rtol=0):
                    diff = np.max(np.abs(got - user)) if got.shape == user.shape else got.shape
                    problems.append(f"{label}: user_embedding differs from the model (max |diff| {diff})")
            else:
                problems.extend(_compare_topk(outputs["item_ids"], outputs["scores"], scores,
                                              vocab, k, tolerance, label))
            compared += 1
        out.append(f"outputs: {compared} request(s) compared with the Python model in "
                   f"{reference_dir} (tolerance {tolerance:g})")
    elif compare and not problems:
        problems.append("no warmup request could be compared with the Python model")
    elif not compare:
        out.append("outputs: comparison with the Python model skipped (--no-compare)")

    if problems:
        out.append(f"FAIL: {len(problems)} problem(s):")
        out.extend(f"  - {p}" for p in problems)
        return False, out
    out.append("OK: TF Serving can load and serve this version")
    return True, out


def add_check_serving_arguments(parser):
    parser.add_argument("path", metavar="saved_models/NAME/VERSION",
                        help="an exported version folder")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="model dir to compare with (default: the one recorded at export)")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip the comparison with the Python model")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max absolute difference of scores/embeddings (default 1e-4)")


def run_check_serving(args):
    ok, lines = check_serving(args.path, model_dir=args.model, compare=args.compare,
                              tolerance=args.tolerance)
    stream = sys.stdout if ok else sys.stderr
    for line in lines:
        print(line, file=stream)
    return 0 if ok else 1


# --------------------------------------------------------------------------- client


def _pad_rows(item_ids):
    """Rows of raw ids (str/int, ragged) → a list of equal-length lists of str ("" pads)."""
    if isinstance(item_ids, np.ndarray):
        item_ids = item_ids.tolist()
    if isinstance(item_ids, (str, bytes)) or not hasattr(item_ids, "__iter__"):
        raise TypeError("item_ids must be a batch: a list of rows of raw item ids")
    rows = []
    for row in item_ids:
        if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
            raise TypeError(
                f"item_ids must be a batch of rows (a list of lists of raw ids), got row {row!r}"
            )
        rows.append([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in row])
    width = max((len(r) for r in rows), default=0)
    return [r + [""] * (width - len(r)) for r in rows]


class Client:
    """Calls a TF Serving model over REST (``predict_rest``) or gRPC (``predict_grpc``).

    ``item_ids``: a batch of raw-id rows, oldest first, of any lengths (padded with ""
    here). Returns ``{"item_ids": str [B, k], "scores": float32 [B, k]}`` (or
    ``{"user_embedding": float32 [B, d]}`` for ``encode_*``). Failures raise
    :class:`ServingError` saying what failed.
    """

    def __init__(self, host="localhost", rest_port=8501, grpc_port=8500, model_name="tfrs_linear",
                 timeout=10.0, signature_name="serving_default", version=None):
        self.host = host
        self.rest_port = int(rest_port)
        self.grpc_port = int(grpc_port)
        self.model_name = model_name
        self.timeout = float(timeout)
        self.signature_name = signature_name
        self.version = None if version is None else int(version)
        self._channel = None
        self._stub = None

    # -- REST ----------------------------------------------------------------------
    @property
    def rest_url(self):
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"http://{self.host}:{self.rest_port}/v1/models/{self.model_name}{version}:predict"

    def _rest_body(self, item_ids, signature, format):
        rows = _pad_rows(item_ids)
        if signature == "serving_tf_example":
            key = "examples"
            values = [{"b64": base64.b64encode(s).decode("ascii")} for s in serialize_examples(rows)]
        else:
            key, values = "item_ids", rows
        if format == "row":
            body = {"instances": [{key: v} for v in values]}
        elif format == "columnar":
            body = {"inputs": {key: values}}
        else:
            raise ValueError(f"format must be 'row' or 'columnar', got {format!r}")
        body["signature_name"] = signature
        return body

    def predict_rest(self, item_ids, format="row", signature_name=None):
        signature = signature_name or self.signature_name
        body = json.dumps(self._rest_body(item_ids, signature, format)).encode("utf-8")
        url = self.rest_url
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                text = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                pass
            raise ServingError(f"REST predict at {url} failed: HTTP {e.code}: {text}",
                               status=e.code, details=text) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                raise ServingError(
                    f"REST predict: connection refused at {url} (is tensorflow_model_server "
                    f"running with --rest_api_port={self.rest_port}?)", status="connection refused"
                ) from None
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise ServingError(f"REST predict at {url} timed out after {self.timeout:g}s",
                                   status="timeout") from None
            raise ServingError(f"REST predict at {url} failed: {reason}", status="error") from None
        except (socket.timeout, TimeoutError):
            raise ServingError(f"REST predict at {url} timed out after {self.timeout:g}s",
                               status="timeout") from None
        except ConnectionError as e:
            raise ServingError(f"REST predict at {url} failed: {e}", status="error") from None
        try:
            result = json.loads(payload)
        except ValueError:
            raise ServingError(f"REST predict at {url}: response is not JSON: {payload[:200]!r}") from None
        return self._parse_rest(result, format)

    @staticmethod
    def _parse_rest(result, format):
        if "error" in result:
            raise ServingError(f"REST predict failed: {result['error']}", details=result["error"])
        if format == "row":
            preds = result.get("predictions")
            if preds is None:
                raise ServingError(f"REST response has no 'predictions': {str(result)[:200]}")
            if preds and isinstance(preds[0], dict):
                columns = {key: [p[key] for p in preds] for key in preds[0]}
            else:  # a single output: TF Serving returns the values without its name
                columns = {"user_embedding": preds}
        else:
            outputs = result.get("outputs")
            if outputs is None:
                raise ServingError(f"REST response has no 'outputs': {str(result)[:200]}")
            columns = outputs if isinstance(outputs, dict) else {"user_embedding": outputs}
        return _as_arrays(columns)

    # -- gRPC ----------------------------------------------------------------------
    @property
    def grpc_target(self):
        return f"{self.host}:{self.grpc_port}"

    def _grpc_stub(self):
        if self._stub is None:
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc

            self._channel = grpc.insecure_channel(self.grpc_target)
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        return self._stub

    def predict_grpc(self, item_ids, signature_name=None):
        import grpc

        tf = _tf()
        from tensorflow_serving.apis import predict_pb2

        signature = signature_name or self.signature_name
        rows = _pad_rows(item_ids)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = self.version
        if signature == "serving_tf_example":
            value = np.array(serialize_examples(rows), dtype=object)
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto(value, dtype=tf.string))
        else:
            value = _string_array(rows)
            request.inputs["item_ids"].CopyFrom(
                tf.make_tensor_proto(value, dtype=tf.string, shape=value.shape))
        try:
            response = self._grpc_stub().Predict(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            name = code.name if code is not None else "UNKNOWN"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                msg = f"gRPC Predict at {self.grpc_target} timed out after {self.timeout:g}s ({details})"
            elif code == grpc.StatusCode.UNAVAILABLE:
                msg = (f"gRPC Predict at {self.grpc_target} failed: UNAVAILABLE: {details} (is "
                       f"tensorflow_model_server running with --port={self.grpc_port}?)")
            else:
                msg = f"gRPC Predict at {self.grpc_target} failed: {name}: {details}"
            raise ServingError(msg, status=name, details=details) from None
        return _as_arrays({key: tf.make_ndarray(proto) for key, proto in response.outputs.items()})

    def encode_rest(self, item_ids, format="row"):
        return self.predict_rest(item_ids, format=format, signature_name="encode")

    def encode_grpc(self, item_ids):
        return self.predict_grpc(item_ids, signature_name="encode")

    def close(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_arrays(columns):
    result = {}
    for key, value in columns.items():
        if key == "item_ids":
            arr = np.asarray(value, dtype=object)
            result[key] = _decode(arr).astype(str) if arr.size else arr.astype(str)
        else:
            result[key] = np.asarray(value, dtype=np.float32)
    return result
