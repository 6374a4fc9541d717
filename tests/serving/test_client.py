"""tfrs_linear.serving.client: the REST/gRPC Client.

No ``tensorflow_model_server`` binary can be installed here (no network), so the client
is tested against LOOPBACK STAND-IN servers started by this file: a small ``http.server``
implementing TF Serving's ``:predict`` REST API (row and columnar formats) and a
``grpc.server`` implementing ``PredictionService.Predict``, both answering with the
exported SavedModel's signatures loaded by ``tf.saved_model.load``. They bind to
127.0.0.1 on ephemeral ports and are shut down by their fixture.
"""

import base64
import json
import re
import socket
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.serving.common import (K, ROWS, JsonReplyHandler, left_pad, loopback_servers,
                                  numpy_scores, numpy_topk, strs)
from tfrs_linear import serving


class _RestStandIn(JsonReplyHandler):
    """TF Serving's REST :predict, row and columnar, over a loaded SavedModel."""

    model_name, version, loaded = None, None, None

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

    with loopback_servers(handler, Servicer()) as (rest_port, grpc_port):
        yield {"rest_port": rest_port, "grpc_port": grpc_port}


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
