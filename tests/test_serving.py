"""TF Serving export, the TF1-style check and the client (tfrs_linear.serving).

No ``tensorflow_model_server`` binary can be installed here (no network), so the client
is tested against LOOPBACK STAND-IN servers started by this file: a small ``http.server``
implementing TF Serving's ``:predict`` REST API (row and columnar formats) and a
``grpc.server`` implementing ``PredictionService.Predict``, both answering with the
exported SavedModel's signatures loaded by ``tf.saved_model.load``. They bind to
127.0.0.1 on ephemeral ports and are shut down by their fixture.

Oracles are independent of the export code: NumPy brute-force top-k from the Python
model's ``encode`` and ``item_embeddings`` on manually left-padded inputs.
"""

import base64
import json
import re
import socket
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear import serving
from tfrs_linear.cli import main
from tfrs_linear.config import ModelConfig
from tfrs_linear.models import SequentialRetrievalModel, save_model_dir

MAX_LEN = 8
K = 5
VOCAB = ["[PAD]", "[OOV]"] + [f"item{i}" for i in range(18)]
CATALOGUE = VOCAB[2:]
INDEX = {raw: i for i, raw in enumerate(VOCAB)}


# --------------------------------------------------------------------------- oracles


def left_pad(rows, max_len=MAX_LEN):
    """Manual oracle: raw rows → newest max_len indices, left-padded with 0."""
    out = np.zeros([len(rows), max_len], np.int32)
    for r, row in enumerate(rows):
        # Unknown ids and the reserved tokens "[PAD]"/"[OOV]" are out of vocabulary (1).
        idx = [max(INDEX.get(v, 1), 1) for v in row if v != ""][-max_len:]
        if idx:
            out[r, max_len - len(idx):] = idx
    return out


def numpy_scores(model, rows, exclude_history=False):
    user = model.encode(tf.constant(left_pad(rows)), training=False).numpy()
    items = model.item_embeddings().numpy()
    scores = user.astype(np.float64) @ items.T.astype(np.float64)
    scores[:, :2] = -np.inf  # padding and OOV are never candidates
    if exclude_history:
        for r, row in enumerate(rows):
            for v in row:
                if v != "":
                    scores[r, INDEX.get(v, 1)] = -np.inf
    return scores


def numpy_topk(scores, k):
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ids = np.array([[VOCAB[i] for i in row] for row in order], dtype=str)
    return ids, np.take_along_axis(scores, order, axis=1)


def pad_rows(rows):
    width = max(len(r) for r in rows)
    return [list(r) + [""] * (width - len(r)) for r in rows]


def strs(array):
    return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[str])(array)


ROWS = [
    ["item3"],
    ["item1", "nope", "item7"],  # an unknown id
    [],  # an all-empty row
    [f"item{i}" for i in range(12)],  # longer than max_len
    ["item5", "item5", "item9", "[PAD]"],  # a repeat; a reserved token is OOV, not padding
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    config = ModelConfig(attention="linrec", max_len=MAX_LEN, d_model=16, num_heads=2,
                         ffn_dim=32, num_layers=1, dropout=0.0, attention_dropout=0.0)
    model = SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all()
    save_model_dir(model, VOCAB, root / "model")
    return root, model


@pytest.fixture(scope="module")
def exports(trained):
    root, _ = trained
    base = root / "saved_models" / "recs"
    v1 = serving.export_model_dir(root / "model", base, k=K, exclude_history=False)
    rc = main(["export", "--model", str(root / "model"), "--base-path", str(base),
               "--k", "100", "--exclude-history"])
    assert rc == 0
    v2 = base / "2"
    return {"base": base, "v1": v1, "v2": v2,
            "l1": tf.saved_model.load(str(v1)), "l2": tf.saved_model.load(str(v2))}


# --------------------------------------------------------------------------- export layout


def test_versions_are_max_plus_one_and_atomic(exports):
    base = exports["base"]
    assert exports["v1"] == base / "1" and exports["v2"].is_dir()
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no temporary folder left
    for v in ("1", "2"):
        d = base / v
        assert (d / "saved_model.pb").is_file() and (d / "variables").is_dir()
        assert (d / "assets" / "vocab.txt").read_text().split("\n")[:-1] == VOCAB
        assert (d / "assets.extra" / serving.WARMUP_FILE).is_file()
    info = json.loads((base / "2" / "assets.extra" / serving.EXPORT_INFO_FILE).read_text())
    assert info["k"] == len(CATALOGUE) and info["exclude_history"] is True
    assert info["requested_k"] == 100 and Path(info["model_dir"]).name == "model"


def test_next_version_skips_non_numeric(tmp_path):
    assert serving.next_version(tmp_path / "missing") == 1
    for name in ("3", "7", ".tmp-export-abc", "notes", "12a"):
        (tmp_path / name).mkdir()
    assert serving.next_version(tmp_path) == 8


def test_failed_export_removes_its_temporary_folder(trained, tmp_path, monkeypatch):
    root, _ = trained
    base = tmp_path / "saved_models" / "recs"
    (base / "4").mkdir(parents=True)
    seen = []

    def broken_save(obj, export_dir, signatures=None, **kwargs):
        seen.append(Path(export_dir))
        assert Path(export_dir).name.startswith(serving.TMP_PREFIX)
        (Path(export_dir) / "saved_model.pb").write_bytes(b"half written")
        raise OSError("disk full (forced)")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="forced"):
        serving.export_model_dir(root / "model", base, k=3)
    assert seen and not seen[0].exists()
    assert sorted(p.name for p in base.iterdir()) == ["4"]
    assert not (base.parent / "models.config").exists()


def test_models_config(exports, tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = (exports["base"].parent / "models.config").read_text()
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    entries = [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config]
    assert entries == [("recs", "/models/recs", "tensorflow")]

    # Every model folder with a numeric version is listed; others are not.
    for d in ("b_model/1", "a_model/3", "empty_model", ".hidden/1", "c_model/.tmp-export-x"):
        (tmp_path / d).mkdir(parents=True)
    serving.write_models_config(tmp_path)
    config = text_format.Parse((tmp_path / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    assert [c.name for c in config.model_config_list.config] == ["a_model", "b_model"]
    assert [c.base_path for c in config.model_config_list.config] == ["/models/a_model",
                                                                     "/models/b_model"]


def test_signatures_as_tf_serving_sees_them(exports):
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exports["v1"]))
    sigs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
    assert set(sigs) == {"serving_default", "encode", "serving_tf_example"}

    def spec(info):
        return tf.dtypes.as_dtype(info.dtype), [d.size for d in info.tensor_shape.dim]

    for name in ("serving_default", "encode"):
        assert list(sigs[name].inputs) == ["item_ids"]
        assert spec(sigs[name].inputs["item_ids"]) == (tf.string, [-1, -1])
    assert list(sigs["serving_tf_example"].inputs) == ["examples"]
    assert spec(sigs["serving_tf_example"].inputs["examples"]) == (tf.string, [-1])
    for name in ("serving_default", "serving_tf_example"):
        assert spec(sigs[name].outputs["item_ids"]) == (tf.string, [-1, K])
        assert spec(sigs[name].outputs["scores"]) == (tf.float32, [-1, K])
    assert set(sigs["encode"].outputs) == {"user_embedding"}
    assert spec(sigs["encode"].outputs["user_embedding"]) == (tf.float32, [-1, 16])
    for node in meta.graph_def.node:
        assert node.op not in {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    for fn in meta.graph_def.library.function:
        assert not ("_XlaMustCompile" in fn.attr and fn.attr["_XlaMustCompile"].b)


# --------------------------------------------------------------------------- outputs


def test_serving_default_equals_numpy_topk(trained, exports):
    _, model = trained
    out = exports["l1"].signatures["serving_default"](item_ids=tf.constant(pad_rows(ROWS)))
    ids, scores = numpy_topk(numpy_scores(model, ROWS), K)
    np.testing.assert_array_equal(strs(out["item_ids"].numpy()), ids)
    np.testing.assert_allclose(out["scores"].numpy(), scores, atol=1e-5, rtol=0)


def test_truncation_keeps_the_newest_max_len(exports):
    fn = exports["l1"].signatures["serving_default"]
    long = [f"item{i}" for i in range(15)]
    full = fn(item_ids=tf.constant([long]))
    newest = fn(item_ids=tf.constant([long[-MAX_LEN:]]))
    np.testing.assert_array_equal(full["item_ids"].numpy(), newest["item_ids"].numpy())
    np.testing.assert_allclose(full["scores"].numpy(), newest["scores"].numpy(), atol=1e-6)
    # Padding "" in the middle or at the end does not change anything.
    padded = fn(item_ids=tf.constant([long[-MAX_LEN:] + ["", ""]]))
    np.testing.assert_allclose(padded["scores"].numpy(), newest["scores"].numpy(), atol=1e-6)


def test_exclude_history_and_catalogue_only(trained, exports):
    _, model = trained
    out = exports["l2"].signatures["serving_default"](item_ids=tf.constant(pad_rows(ROWS)))
    ids, scores = strs(out["item_ids"].numpy()), out["scores"].numpy()
    assert ids.shape == (len(ROWS), len(CATALOGUE))  # k = min(100, catalogue)
    ref = numpy_scores(model, ROWS, exclude_history=True)
    ref_ids, ref_scores = numpy_topk(ref, len(CATALOGUE))
    for r, row in enumerate(ROWS):
        assert sorted(ids[r]) == sorted(CATALOGUE)  # never [PAD]/[OOV], no repeats
        history = {v for v in row if v in CATALOGUE}  # all of it, beyond max_len too
        n = len(CATALOGUE) - len(history)
        np.testing.assert_array_equal(ids[r, :n], ref_ids[r, :n])
        np.testing.assert_allclose(scores[r, :n], ref_scores[r, :n], atol=1e-5, rtol=0)
        assert set(ids[r, n:]) == history and np.all(np.isneginf(scores[r, n:]))


def test_encode_signature(trained, exports):
    _, model = trained
    out = exports["l1"].signatures["encode"](item_ids=tf.constant(pad_rows(ROWS)))
    ref = model.encode(tf.constant(left_pad(ROWS)), training=False).numpy()
    np.testing.assert_allclose(out["user_embedding"].numpy(), ref, atol=1e-5, rtol=0)


def test_tf_example_equals_serving_default(exports):
    examples = []
    for row in ROWS:
        ex = tf.train.Example()
        ex.features.feature["item_ids"].bytes_list.value.extend(v.encode() for v in row)
        examples.append(ex.SerializeToString())
    sigs = exports["l1"].signatures
    a = sigs["serving_tf_example"](examples=tf.constant(examples))
    b = sigs["serving_default"](item_ids=tf.constant(pad_rows(ROWS)))
    np.testing.assert_array_equal(a["item_ids"].numpy(), b["item_ids"].numpy())
    np.testing.assert_allclose(a["scores"].numpy(), b["scores"].numpy(), atol=1e-6)


def test_wrong_dtype_or_rank_errors_clearly(exports):
    sigs = exports["l1"].signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a string tensor"):
        sigs["serving_default"](item_ids=tf.constant([[3, 4]]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serving_default: input item_ids must be a string matrix \[batch, length\].*got a tensor of shape\] \[2\]"):
        sigs["serving_default"](item_ids=tf.constant(["item1", "item2"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"encode: input item_ids .*\(rank 2\)"):
        sigs["encode"](item_ids=tf.constant([[["item1"]]]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serving_tf_example: input examples must be a string vector"):
        sigs["serving_tf_example"](examples=tf.constant([["x"]]))
    # The restored tf.function checks its input signature before running anything.
    with pytest.raises((TypeError, ValueError), match="item_ids"):
        exports["l1"].serving_default(tf.constant([3, 4]))


def test_warmup_requests_cover_every_signature(exports):
    logs = serving.read_warmup(exports["v1"] / "assets.extra" / serving.WARMUP_FILE)
    by_sig = {}
    for log in logs:
        req = log.predict_log.request
        assert req.model_spec.name == "recs"
        by_sig.setdefault(req.model_spec.signature_name, []).append(
            {k: tf.make_ndarray(v) for k, v in req.inputs.items()})
    assert set(by_sig) == {"serving_default", "encode", "serving_tf_example"}
    for sig in ("serving_default", "encode"):
        shapes = {r["item_ids"].shape for r in by_sig[sig]}
        assert len({s[0] for s in shapes}) > 1 and len({s[1] for s in shapes}) > 1
        assert any(s[1] > MAX_LEN for s in shapes)
        flat = [strs(r["item_ids"]) for r in by_sig[sig]]
        assert any((a == "").all(axis=1).any() for a in flat)  # an all-empty row
        assert any(not set(a.ravel()) <= set(VOCAB) | {""} for a in flat)  # unknown ids
    assert len({r["examples"].shape[0] for r in by_sig["serving_tf_example"]}) > 1


# --------------------------------------------------------------------------- check-serving


def test_check_serving_passes_on_good_exports(exports, capsys):
    assert main(["check-serving", str(exports["v1"])]) == 0
    out = capsys.readouterr().out
    assert "ops scan: ok" in out and "replayed 9 of 9" in out
    assert "serving_tf_example(examples: string [-1]" in out
    assert "9 request(s) compared with the Python model" in out and "OK" in out
    assert main(["check-serving", str(exports["v2"])]) == 0


@pytest.mark.parametrize("attention", ["softmax", "elastic", "elastic-recency"])
def test_other_attentions_export_and_pass_check_serving(tmp_path, capsys, attention):
    """Causal softmax and causal ELASTIC (whose op holds a tf.cond fallback inside a custom
    gradient; with and without the recency bias) load and run in a TF1 session, with no
    op TF Serving lacks, and serve what the Python model computes."""
    config = ModelConfig(attention=attention.split("-")[0], max_len=MAX_LEN, d_model=16,
                         num_heads=2, ffn_dim=32, num_layers=1, num_interests=4, dropout=0.0,
                         attention_dropout=0.0, recency_bias=attention == "elastic-recency")
    model = SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all()
    save_model_dir(model, VOCAB, tmp_path / "model")
    version = serving.export_model_dir(tmp_path / "model", tmp_path / "saved" / "m", k=K)
    assert main(["check-serving", str(version), "--model", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "ops scan: ok" in out and "replayed 9 of 9" in out and "compared with the Python model" in out


def test_check_serving_fails_when_model_differs(exports, tmp_path, capsys):
    config = ModelConfig(attention="linrec", max_len=MAX_LEN, d_model=16, num_heads=2,
                         ffn_dim=32, num_layers=1)
    other = SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all()
    save_model_dir(other, VOCAB, tmp_path / "other")
    assert main(["check-serving", str(exports["v1"]), "--model", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert "FAIL" in err and "differ" in err


def _save_module(path, fn):
    module = tf.Module()
    module.f = fn
    tf.saved_model.save(module, str(path), signatures={"serving_default": fn.get_concrete_function()})
    return path


def test_check_serving_rejects_py_function(tmp_path, capsys):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def f(x):
        return {"y": tf.py_function(lambda t: t * 2.0, [x], tf.float32)}

    path = _save_module(tmp_path / "1", f)
    assert main(["check-serving", str(path)]) == 1
    err = capsys.readouterr().err
    assert "FAIL" in err and "EagerPyFunc" in err and "TF Serving cannot" in err


def test_check_serving_rejects_jit_compile(tmp_path, capsys):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")], jit_compile=True)
    def f(x):
        return {"y": x * 2.0}

    path = _save_module(tmp_path / "1", f)
    assert main(["check-serving", str(path)]) == 1
    err = capsys.readouterr().err
    assert "FAIL" in err and "_XlaMustCompile" in err and "without XLA" in err


def test_check_serving_foreign_savedmodel_needs_no_compare(tmp_path, capsys):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def f(x):
        return {"y": x * 2.0}

    path = _save_module(tmp_path / "1", f)
    assert main(["check-serving", str(path)]) == 1
    assert "not a tfrs-linear export" in capsys.readouterr().err
    assert main(["check-serving", str(path), "--no-compare"]) == 0
    out = capsys.readouterr().out
    assert "ops scan: ok" in out and "skipped (--no-compare)" in out


def test_check_serving_flags_custom_ops():
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.graph_def.node.add(name="x", op="Placeholder")
    fn = meta.graph_def.library.function.add()
    fn.signature.name = "f"
    fn.node_def.add(name="y", op="SentencepieceOp")
    problems = serving.scan_graph(meta)
    assert len(problems) == 1 and "SentencepieceOp" in problems[0] and "custom op" in problems[0]


def test_check_serving_on_a_non_savedmodel(tmp_path, capsys):
    assert main(["check-serving", str(tmp_path)]) == 1
    assert "no saved_model.pb" in capsys.readouterr().err


# --------------------------------------------------------------------------- client


class _RestStandIn(BaseHTTPRequestHandler):
    """TF Serving's REST :predict, row and columnar, over a loaded SavedModel."""

    model_name, version, loaded = None, None, None

    def log_message(self, *args):
        pass

    def _reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        m = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", self.path)
        if not m or m.group(1) != self.model_name or (m.group(2) and int(m.group(2)) != self.version):
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        name = body.get("signature_name", "serving_default")
        if name not in self.loaded.signatures:
            return self._reply(400, {"error": f'Serving signature name: "{name}" not found in signature def'})
        fn = self.loaded.signatures[name]
        (input_name,) = fn.structured_input_signature[1].keys()

        def value(v):
            if isinstance(v, dict) and "b64" in v:
                return base64.b64decode(v["b64"])
            return [value(x) for x in v] if isinstance(v, list) else v

        try:
            if "instances" in body:
                rows = [i[input_name] if isinstance(i, dict) else i for i in body["instances"]]
            else:
                rows = body["inputs"]
                rows = rows[input_name] if isinstance(rows, dict) else rows
            arr = np.array(value(rows), dtype=object)
            if any(not isinstance(x, (str, bytes)) for x in arr.ravel()):
                raise ValueError("JSON Value is not of expected type: string")
            arr = np.vectorize(lambda x: x if isinstance(x, bytes) else x.encode(), otypes=[object])(arr)
            outputs = {k: v.numpy() for k, v in fn(**{input_name: tf.constant(arr)}).items()}
        except Exception as e:  # noqa: BLE001
            return self._reply(400, {"error": str(e)})
        outputs = {k: (strs(v).tolist() if v.dtype == object else v.tolist()) for k, v in outputs.items()}
        if "instances" in body:
            if len(outputs) == 1:
                return self._reply(200, {"predictions": next(iter(outputs.values()))})
            n = len(next(iter(outputs.values())))
            return self._reply(200, {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]})
        return self._reply(200, {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs})


@pytest.fixture(scope="module")
def stand_in(exports):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    loaded = exports["l1"]
    handler = type("Handler", (_RestStandIn,), {"model_name": "recs", "version": 1, "loaded": loaded})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            if request.model_spec.name != "recs":
                context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: {request.model_spec.name}")
            name = request.model_spec.signature_name or "serving_default"
            if name not in loaded.signatures:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f'signature "{name}" not found')
            try:
                inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
                outputs = loaded.signatures[name](**inputs)
            except Exception as e:  # noqa: BLE001
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e).splitlines()[0])
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(request.model_spec)
            for k, v in outputs.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield {"rest_port": httpd.server_address[1], "grpc_port": grpc_port}
    server.stop(0).wait(5)
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _client(stand_in, **kw):
    return serving.Client(host="127.0.0.1", rest_port=stand_in["rest_port"],
                          grpc_port=stand_in["grpc_port"], model_name="recs", timeout=5.0, **kw)


def test_client_rest_and_grpc_match_the_numpy_oracle(trained, stand_in):
    _, model = trained
    ids, scores = numpy_topk(numpy_scores(model, ROWS), K)
    with _client(stand_in) as client:
        results = [client.predict_rest(ROWS, format="row"),
                   client.predict_rest(ROWS, format="columnar"),
                   client.predict_grpc(ROWS)]
        results.append(_client(stand_in, version=1).predict_rest(ROWS))
    for out in results:
        assert out["item_ids"].dtype.kind == "U" and out["scores"].dtype == np.float32
        np.testing.assert_array_equal(out["item_ids"], ids)
        np.testing.assert_allclose(out["scores"], scores, atol=1e-5, rtol=0)


def test_client_encode_and_tf_example(trained, stand_in):
    _, model = trained
    ref = model.encode(tf.constant(left_pad(ROWS)), training=False).numpy()
    with _client(stand_in) as client:
        for out in (client.encode_rest(ROWS), client.encode_rest(ROWS, format="columnar"),
                    client.encode_grpc(ROWS)):
            np.testing.assert_allclose(out["user_embedding"], ref, atol=1e-5, rtol=0)
        a = client.predict_rest(ROWS, signature_name="serving_tf_example")
        b = client.predict_grpc(ROWS, signature_name="serving_tf_example")
    ids, _ = numpy_topk(numpy_scores(model, ROWS), K)
    np.testing.assert_array_equal(a["item_ids"], ids)
    np.testing.assert_array_equal(b["item_ids"], ids)


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_client_errors_say_what_failed(stand_in):
    port = _closed_port()
    client = serving.Client(host="127.0.0.1", rest_port=port, grpc_port=port, model_name="recs",
                            timeout=2.0)
    with pytest.raises(serving.ServingError, match=f"connection refused at http://127.0.0.1:{port}/v1/models/recs:predict"):
        client.predict_rest(ROWS)
    start = time.monotonic()
    with pytest.raises(serving.ServingError, match="UNAVAILABLE") as err:
        client.predict_grpc(ROWS)
    assert err.value.status == "UNAVAILABLE" and time.monotonic() - start < 10
    client.close()

    with pytest.raises(serving.ServingError, match=r'HTTP 400: Serving signature name: "nope" not found') as err:
        _client(stand_in, signature_name="nope").predict_rest(ROWS)
    assert err.value.status == 400
    with pytest.raises(serving.ServingError, match="HTTP 404: Servable not found"):
        _client(stand_in, version=7).predict_rest(ROWS)
    with _client(stand_in, signature_name="nope") as c:
        with pytest.raises(serving.ServingError, match=r"gRPC Predict at 127.0.0.1:\d+ failed: INVALID_ARGUMENT: signature \"nope\""):
            c.predict_grpc(ROWS)
    with pytest.raises(TypeError, match="batch of rows"):
        _client(stand_in).predict_rest(["item1", "item2"])


def test_client_timeouts(stand_in):
    # A socket that listens but never answers: the kernel accepts, nobody replies.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        client = serving.Client(host="127.0.0.1", rest_port=port, grpc_port=port, model_name="recs",
                                timeout=0.5)
        start = time.monotonic()
        with pytest.raises(serving.ServingError, match="timed out after 0.5s"):
            client.predict_rest(ROWS)
        with pytest.raises(serving.ServingError, match="timed out after 0.5s|DEADLINE_EXCEEDED|UNAVAILABLE"):
            client.predict_grpc(ROWS)
        client.close()
        assert time.monotonic() - start < 10
    finally:
        silent.close()
