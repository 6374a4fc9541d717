"""``tfrs-linear check-serving``: verify an export the way TF Serving loads it.

``tfrs-linear check-serving saved_models/NAME/V`` runs four steps (:func:`check_serving`):

1. **load** the version as TF Serving's SavedModelBundle does (TF1 session, tensors by
   name);
2. **scan ops**: the graph and its function library for ops stock TF Serving lacks
   (PyFunc, EagerPyFunc, custom ops, ``_XlaMustCompile``), :func:`scan_graph`;
3. **replay warmup**: the export's warmup requests through the session;
4. **compare** every output with the Python model read from the model dir recorded in
   ``assets.extra/tfrs_linear.json`` (or ``--model DIR``) within ``--tolerance``; the
   streaming signatures ``encode_state`` and ``step`` as
   :mod:`tfrs_linear.serving.check_streaming` says.

A failed check is a result, not an error: the report ends with ``FAIL: n problem(s)``
and the command exits 1.
"""

import json
import math
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2

from tfrs_linear.constants import NUM_RESERVED, OOV_INDEX
from tfrs_linear.data import pad_left, vocabulary_lookup
from tfrs_linear.models import load_model_dir
from tfrs_linear.serving.check_streaming import stream_info_problems, streaming_cases
from tfrs_linear.serving.streaming import STREAM_SIGNATURES
from tfrs_linear.serving.warmup import read_warmup
from tfrs_linear.serving.wire import EXPORT_INFO_FILE, SIGNATURES, WARMUP_FILE, decode_strings

# Ops that need the Python interpreter of the exporting process: never in TF Serving.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
# SavedModel helper ops that are registered in core TF but not exposed in tf.raw_ops.
_CORE_EXTRA_OPS = frozenset({"_Arg", "_Retval", "_DeviceArg", "_DeviceRetval"})


# --------------------------------------------------------------------------- ops scan


def _op_names():
    names = set(_CORE_EXTRA_OPS)
    names.update(n for n in dir(tf.raw_ops) if not n.startswith("_"))
    return names


def _attr_true(attr_map, key):
    return key in attr_map and attr_map[key].HasField("b") and attr_map[key].b


def _node_problems(nodes, where, core_ops, functions):
    problems = []
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
    return problems


def scan_graph(meta_graph_def, core_ops=None):
    """Problems TF Serving would have with a MetaGraphDef: a list of messages (empty = ok).

    Scans the graph's nodes and every function of its library for Python ops, ops not
    registered in core TensorFlow, and functions/nodes marked ``_XlaMustCompile``.

    Args:
      meta_graph_def: a ``MetaGraphDef`` (as the TF1 loader returns it).
      core_ops: the op names TF Serving has; default: every op of ``tf.raw_ops``.
    """
    core_ops = _op_names() if core_ops is None else core_ops
    library = meta_graph_def.graph_def.library
    functions = {f.signature.name for f in library.function}
    problems = _node_problems(meta_graph_def.graph_def.node, "graph", core_ops, functions)
    for fn in library.function:
        where = f"function {fn.signature.name}"
        if _attr_true(fn.attr, "_XlaMustCompile"):
            problems.append(
                f"{where} has _XlaMustCompile=true (tf.function(jit_compile=True)); stock TF "
                "Serving runs without XLA and cannot load it"
            )
        problems.extend(_node_problems(fn.node_def, where, core_ops, functions))
    return problems


# Ops that read a resource variable sparsely; the first one to run puts the variable in
# TensorFlow's copy-on-read mode, after which every dense read of it copies it whole.
SPARSE_READ_OPS = frozenset({"ResourceGather", "ResourceGatherNd"})


def sparse_variable_reads(meta_graph_def):
    """The nodes of a MetaGraphDef that read a variable sparsely: sorted unique names.

    Not a loading problem but a cost: once such a node has run, every dense read of its
    variable (a catalogue scan) copies the whole variable, on every request. Exports of
    this library have none (:mod:`tfrs_linear.layers.embedding`); check-serving reports
    them as a note."""
    graph = meta_graph_def.graph_def
    nodes = [n.name for n in graph.node if n.op in SPARSE_READ_OPS]
    for fn in graph.library.function:
        nodes += [n.name for n in fn.node_def if n.op in SPARSE_READ_OPS]
    return sorted(set(nodes))


# --------------------------------------------------------------------------- comparison


def _rows_of_request(signature, inputs):
    """Raw-id rows (lists of str, "" removed) of a warmup request's inputs."""
    if signature == "serving_tf_example":
        return [
            [v.decode("utf-8") for v in example_pb2.Example.FromString(s)
             .features.feature["item_ids"].bytes_list.value]
            for s in np.asarray(inputs["examples"]).reshape(-1)
        ]
    ids = np.asarray(inputs["item_ids"])
    return [[v for v in decode_strings(np.asarray(row)) if v != ""] for row in ids]


def reference_outputs(model, vocab, rows, k, exclude_history):
    """What the Python model says for raw-id rows: user embeddings and full scores.

    Args:
      model: the Python model (``encode``, ``item_embeddings``, ``config.max_len``).
      vocab: its vocabulary.
      rows: lists of raw ids, oldest first, no padding.
      k: unused (the scores cover the whole catalogue); kept for callers.
      exclude_history: whether history items score ``-inf``.

    Returns:
      ``(user float32 [B, d], scores float64 [B, V - 2])``: the scores of the catalogue
      items (indices 2..V-1) in vocabulary order.
    """
    lookup = vocabulary_lookup(vocab)
    max_len = int(model.config.max_len)
    history = np.zeros([len(rows), len(vocab)], bool)
    indices = []
    for r, row in enumerate(rows):
        idx = [max(lookup.get(v, OOV_INDEX), OOV_INDEX) for v in row]  # reserved → OOV
        history[r, idx] = True
        indices.append(idx)
    padded = pad_left(indices, max_len)
    offsets = None
    if model.config.positions == "from_start":
        # The row keeps the newest max_len events; the user's older ones come first.
        offsets = tf.constant([max(len(idx) - max_len, 0) for idx in indices], tf.int32)
    user = model.encode(padded, training=False, offsets=offsets).numpy().astype(np.float32)
    items = model.item_embeddings().numpy().astype(np.float32)
    scores = (user.astype(np.float64) @ items.T.astype(np.float64))[:, NUM_RESERVED:]
    if exclude_history:
        scores = np.where(history[:, NUM_RESERVED:], -np.inf, scores)
    return user, scores


def _compare_topk(ids, scores, ref_scores, vocab, k, tol, label):
    problems = []
    ids = decode_strings(np.asarray(ids))
    scores = np.asarray(scores, np.float64)
    if ids.shape != (ref_scores.shape[0], k) or scores.shape != ids.shape:
        return [f"{label}: output shapes {ids.shape}/{scores.shape}, expected {(ref_scores.shape[0], k)}"]
    position = {raw: i - NUM_RESERVED for raw, i in vocabulary_lookup(vocab).items()
                if i >= NUM_RESERVED}
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


def _compare_encode(label, got, user, tolerance):
    got = np.asarray(got)
    if got.shape != user.shape or not np.allclose(got, user, atol=tolerance, rtol=0):
        diff = np.max(np.abs(got - user)) if got.shape == user.shape else got.shape
        return [f"{label}: user_embedding differs from the model (max |diff| {diff})"]
    return []


# --------------------------------------------------------------------------- the steps


class _Report:
    """The report of one check: its lines and the problems found so far."""

    def __init__(self, lines):
        self.lines = lines
        self.problems = []

    def verdict(self):
        if self.problems:
            self.lines.append(f"FAIL: {len(self.problems)} problem(s):")
            self.lines.extend(f"  - {p}" for p in self.problems)
            return False, self.lines
        self.lines.append("OK: TF Serving can load and serve this version")
        return True, self.lines


def _read_logs(warmup_path, report):
    """The warmup records (read eagerly, before the TF1 graph is entered)."""
    if not warmup_path.exists():
        return []
    try:
        return read_warmup(warmup_path)
    except Exception as e:  # noqa: BLE001 - reported as a check failure
        report.problems.append(f"cannot parse {warmup_path}: {e}")
        return []


def _scan_ops(meta, report):
    """Step 2: the ops scan; True when it found nothing."""
    scan = scan_graph(meta)
    nodes, nfun = len(meta.graph_def.node), len(meta.graph_def.library.function)
    if scan:
        report.problems.extend(scan)
        report.lines.append(f"ops scan: {len(scan)} problem(s) in {nodes} nodes / {nfun} functions")
    else:
        report.lines.append(f"ops scan: ok ({nodes} nodes, {nfun} functions; no Python ops, "
                            "no custom ops, no _XlaMustCompile)")
    sparse = sparse_variable_reads(meta)
    if sparse:
        report.lines.append(
            f"note: {len(sparse)} sparse variable read(s) (e.g. {sparse[0]!r}): each puts its "
            "variable in copy-on-read mode, so every dense read of it (the catalogue scan) "
            "copies it whole on every request; exports of this version have none, export "
            "again")
    return not scan


def _tensor_desc(info):
    dtype = tf.dtypes.as_dtype(info.dtype).name
    shape = ([d.size for d in info.tensor_shape.dim]
             if not info.tensor_shape.unknown_rank else "unknown rank")
    return f"{dtype} {shape} ({info.name})"


def _list_signatures(meta, report):
    """The served signatures ``{name: SignatureDef}``, listed in the report."""
    sigs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
    report.lines.append("signatures:")
    for name in sorted(sigs):
        sig = sigs[name]
        ins = ", ".join(f"{k}: {_tensor_desc(v)}" for k, v in sorted(sig.inputs.items()))
        outs = ", ".join(f"{k}: {_tensor_desc(v)}" for k, v in sorted(sig.outputs.items()))
        report.lines.append(f"  {name}({ins}) -> {outs}")
    return sigs


def _reference_dir(info, info_path, sigs, warmup_path, model_dir, compare, scan_ok, report):
    """What a tfrs-linear export must hold, and the model dir to compare with (or None)."""
    is_ours = bool(info)
    if is_ours:
        missing = [s for s in SIGNATURES if s not in sigs]
        if missing:
            report.problems.append(f"missing signatures {missing}")
        if not warmup_path.exists():
            report.problems.append(f"no warmup file {warmup_path}")
        report.problems.extend(stream_info_problems(info, sigs))
    if compare and not is_ours:
        report.problems.append(
            f"{info_path} is missing: not a tfrs-linear export, so its outputs cannot be "
            "compared with a Python model (pass --no-compare to check loading and ops only)"
        )
    elif compare and scan_ok:
        mdir = model_dir or info.get("model_dir")
        if not mdir or not (Path(mdir) / "config.json").exists():
            report.problems.append(
                f"cannot compare with the Python model: model dir {mdir!r} (from {info_path}) "
                "is not available; pass --model DIR or --no-compare"
            )
        else:
            return mdir
    return None


def _replay_warmup(sess, sigs, logs, report):
    """Step 3: every warmup request through the session; ``[(label, signature, inputs,
    outputs)]`` of those that ran."""
    results = []
    for n, log in enumerate(logs):
        request = log.predict_log.request
        sig_name = request.model_spec.signature_name or "serving_default"
        label = f"warmup #{n + 1} ({sig_name})"
        if sig_name not in sigs:
            report.problems.append(f"{label}: no signature {sig_name!r}")
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
        except Exception as e:  # noqa: BLE001 - reported as a check failure
            report.problems.append(f"{label}: failed: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        results.append((label, sig_name, inputs, dict(zip(keys, values))))
    return results


def _compare_with_model(reference_dir, results, info, tolerance, report):
    """Step 4: every replayed output against the Python model of ``reference_dir``."""
    try:
        model, _, vocab = load_model_dir(reference_dir)
    except Exception as e:  # noqa: BLE001 - reported as a check failure
        report.problems.append(f"cannot load the model dir {reference_dir}: {e}")
        results = []
    k = int(info["k"])
    exclude = bool(info["exclude_history"])
    streamed = [r for r in results if r[1] in STREAM_SIGNATURES]
    if streamed and not stream_info_problems(info, {s: None for s in STREAM_SIGNATURES}):
        _compare_streaming(model, vocab, streamed, info, tolerance, report)
    for label, sig_name, inputs, outputs in results:
        if sig_name in STREAM_SIGNATURES:
            continue
        rows = _rows_of_request(sig_name, inputs)
        user, scores = reference_outputs(model, vocab, rows, k, exclude)
        if sig_name == "encode":
            report.problems.extend(_compare_encode(label, outputs["user_embedding"], user,
                                                   tolerance))
        else:
            report.problems.extend(_compare_topk(outputs["item_ids"], outputs["scores"], scores,
                                                 vocab, k, tolerance, label))
    report.lines.append(f"outputs: {len(results)} request(s) compared with the Python model in "
                        f"{reference_dir} (tolerance {tolerance:g})")


def _compare_streaming(model, vocab, results, info, tolerance, report):
    """The replayed ``encode_state`` and ``step`` outputs against the Python model
    (:func:`~tfrs_linear.serving.check_streaming.streaming_cases` says what it expects)."""
    cases, problems, summary = streaming_cases(model, vocab, results, info, tolerance)
    report.problems.extend(problems)
    for case in cases:
        got = np.asarray(case.outputs.get("user_embedding"))
        if case.embeddings and (got.ndim != 2 or len(got) != len(case.embeddings[0][2])):
            report.problems.append(f"{case.label}: user_embedding has shape {got.shape}")
            continue
        for what, rows, user in case.embeddings:
            report.problems.extend(_compare_encode(f"{case.label} against {what}", got[rows],
                                                   user[rows], tolerance))
        if case.scores is not None:
            report.problems.extend(_compare_topk(
                case.outputs["item_ids"], case.outputs["scores"], case.scores, vocab,
                int(info["k"]), tolerance, case.label))
    report.lines.append(summary)


def check_tolerance(tolerance):
    """``tolerance`` as a float; raises ValueError naming it unless it is a finite
    number ``>= 0`` (a negative one would report every output as a failure)."""
    number = isinstance(tolerance, (int, float, np.integer, np.floating))
    if isinstance(tolerance, bool) or not number or not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"--tolerance must be a finite number >= 0, got {tolerance!r}")
    return float(tolerance)


def check_serving(export_dir, model_dir=None, compare=True, tolerance=1e-4, out=None):
    """Verifies an export as TF Serving loads it: load → scan ops → replay warmup → compare.

    Args:
      export_dir: a version folder, ``saved_models/NAME/V``.
      model_dir: the model dir to compare with; default: the one recorded at export.
      compare: compare the outputs with the Python model (``False``: load and ops only).
      tolerance: the largest absolute difference of scores and embeddings, a finite
        number ``>= 0``.
      out: a list the report lines are appended to (default: a new one).

    Returns:
      ``(ok, report_lines)``; a failed check is ``False`` with the problems listed.

    Raises:
      ValueError: a negative or non-finite ``tolerance``, before anything is loaded.
    """
    tolerance = check_tolerance(tolerance)
    export_dir = Path(export_dir)
    if not (export_dir / "saved_model.pb").exists():
        return False, [f"FAIL: {export_dir} is not a SavedModel version folder (no saved_model.pb)"]
    report = _Report(out or [])
    report.lines.append(f"SavedModel: {export_dir}")
    warmup_path = export_dir / "assets.extra" / WARMUP_FILE
    logs = _read_logs(warmup_path, report)
    info_path = export_dir / "assets.extra" / EXPORT_INFO_FILE

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        try:  # step 1: load
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(export_dir))
        except Exception as e:  # noqa: BLE001 - reported as a check failure
            return False, report.lines + [
                f"FAIL: TF1 SavedModelBundle-style load failed: {type(e).__name__}: {e}"]
        scan_ok = _scan_ops(meta, report)
        sigs = _list_signatures(meta, report)
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        reference_dir = _reference_dir(info, info_path, sigs, warmup_path, model_dir, compare,
                                       scan_ok, report)
        results = _replay_warmup(sess, sigs, logs, report) if scan_ok else []
        report.lines.append(f"warmup: replayed {len(results)} of {len(logs)} request(s) "
                            "through the TF1 session")

    if reference_dir is not None and results:
        _compare_with_model(reference_dir, results, info, tolerance, report)
    elif compare and not report.problems:
        report.problems.append("no warmup request could be compared with the Python model")
    elif not compare:
        report.lines.append("outputs: comparison with the Python model skipped (--no-compare)")
    return report.verdict()
