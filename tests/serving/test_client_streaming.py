"""tfrs_linear.serving.client: the streaming calls ``encode_state_*`` and ``step_*``.

As in test_client.py, no ``tensorflow_model_server`` can run here, so the client talks to
LOOPBACK STAND-IN servers started by this file: TF Serving's REST ``:predict`` (row and
columnar; inputs converted to the dtypes of the signature, as TF Serving does) and gRPC
``PredictionService.Predict``, both answering with the streamable linrec export's
signatures loaded by ``tf.saved_model.load``. They bind to 127.0.0.1 on ephemeral ports.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.serving.common import (K, JsonReplyHandler, left_pad, loopback_servers,
                                  numpy_scores, numpy_topk, strs)
from tests.serving.conftest import STREAM_R
from tfrs_linear import serving


def _outputs(fn, columns):
    """Runs a loaded signature on JSON columns ``{input name: nested lists}``."""
    specs = {spec.name: spec for spec in fn.structured_input_signature[1].values()}
    unknown = set(columns) - set(specs)
    if unknown:
        raise ValueError(f"inputs {sorted(unknown)} are not in the signature")
    inputs = {}
    for name, value in columns.items():
        dtype = specs[name].dtype
        if dtype == tf.string:
            value = np.vectorize(lambda x: x.encode(), otypes=[object])(np.array(value, object))
        inputs[name] = tf.constant(value, dtype=dtype)
    return {k: v.numpy() for k, v in fn(**inputs).items()}


class _RestStandIn(JsonReplyHandler):
    """TF Serving's REST :predict over a loaded SavedModel, any number of inputs."""

    loaded = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/models/recs:predict":
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        fn = self.loaded.signatures[body.get("signature_name", "serving_default")]
        if "instances" in body:
            names = body["instances"][0].keys()
            columns = {n: [i[n] for i in body["instances"]] for n in names}
        else:
            columns = body["inputs"]
        try:
            outputs = _outputs(fn, columns)
        except Exception as e:  # noqa: BLE001
            return self._reply(400, {"error": str(e)})
        outputs = {k: (strs(v).tolist() if v.dtype == object else v.tolist())
                   for k, v in outputs.items()}
        if "instances" in body:
            n = len(next(iter(outputs.values())))
            return self._reply(200, {"predictions": [{k: v[i] for k, v in outputs.items()}
                                                     for i in range(n)]})
        return self._reply(200, {"outputs": outputs})


@pytest.fixture(scope="module")
def stand_in(stream_exports):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    loaded = tf.saved_model.load(str(stream_exports["linrec"]["version"]))
    handler = type("Handler", (_RestStandIn,), {"loaded": loaded})

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            fn = loaded.signatures[request.model_spec.signature_name or "serving_default"]
            try:
                outputs = fn(**{k: tf.constant(tf.make_ndarray(v))
                                for k, v in request.inputs.items()})
            except Exception as e:  # noqa: BLE001
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            response = predict_pb2.PredictResponse()
            for k, v in outputs.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
            return response

    with loopback_servers(handler, Servicer()) as (rest_port, grpc_port):
        yield {"rest_port": rest_port, "grpc_port": grpc_port, "loaded": loaded}


def _client(stand_in):
    return serving.Client(host="127.0.0.1", rest_port=stand_in["rest_port"],
                          grpc_port=stand_in["grpc_port"], model_name="recs", timeout=10.0)


HISTORY = [["item1"], ["item3", "nope", "item7"], []]
EVENTS = [[["item2"], ["item9"], ["item4"]], [["item5"], [], ["item8"]]]


def _check_state(state, batch):
    assert state["fingerprint"].dtype == np.int64 and state["fingerprint"].shape == (batch,)
    assert state["recent_items"].dtype == np.int32
    assert state["recent_items"].shape == (batch, STREAM_R)
    assert all(v.dtype == np.float32 for k, v in state.items()
               if k not in ("fingerprint", "recent_items"))


@pytest.mark.parametrize("call", ["rest-row", "rest-columnar", "grpc"])
def test_encode_state_then_steps_match_the_numpy_oracle(stream_exports, stand_in, call):
    """The service loop: encode_state once, then step on each event with the state the
    previous call returned; every step's top-k is the oracle's on the whole history."""
    model = stream_exports["linrec"]["model"]
    with _client(stand_in) as client:
        if call == "grpc":
            encode_state, step = client.encode_state_grpc, client.step_grpc
        else:
            fmt = call.split("-")[1]

            def encode_state(rows):
                return client.encode_state_rest(rows, format=fmt)

            def step(state, rows):
                return client.step_rest(state, rows, format=fmt)

        out = encode_state(HISTORY)
        ref = model.encode(tf.constant(left_pad(HISTORY)), training=False).numpy()
        np.testing.assert_allclose(out["user_embedding"][:2], ref[:2], atol=1e-5, rtol=0)
        state = serving.Client.stream_state(out)
        assert "user_embedding" not in state
        _check_state(state, len(HISTORY))
        history = [list(h) for h in HISTORY]
        for events in EVENTS:
            out = step(out, events)  # the outputs as they came: the state is taken from them
            history = [h + e for h, e in zip(history, events)]
            ids, scores = numpy_topk(numpy_scores(model, history, exclude_history=True), K)
            assert out["item_ids"].dtype.kind == "U" and out["scores"].dtype == np.float32
            np.testing.assert_array_equal(out["item_ids"], ids)
            np.testing.assert_allclose(out["scores"], scores, atol=1e-5, rtol=0)
            _check_state(serving.Client.stream_state(out), len(HISTORY))


def test_a_state_kept_in_a_key_value_store_can_be_sent_back(stream_exports, stand_in):
    """A state stored as JSON (lists, ints) and read back works: the client restores the
    signatures' dtypes. The same events give the same top-k over REST and gRPC."""
    with _client(stand_in) as client:
        state = serving.Client.stream_state(client.encode_state_grpc(HISTORY))
        stored = json.loads(json.dumps({k: v.tolist() for k, v in state.items()}))
        a = client.step_grpc(stored, EVENTS[0])
        b = client.step_rest(stored, EVENTS[0])
        c = client.step_grpc(state, EVENTS[0])
    for out in (a, b):
        np.testing.assert_array_equal(out["item_ids"], c["item_ids"])
        np.testing.assert_allclose(out["scores"], c["scores"], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(out["fingerprint"], state["fingerprint"])


def test_streaming_errors_say_what_failed(stand_in):
    with _client(stand_in) as client:
        state = serving.Client.stream_state(client.encode_state_rest(HISTORY))
        other = dict(state, fingerprint=state["fingerprint"] + 1)
        with pytest.raises(serving.ServingError, match="(?s)HTTP 400: .*another export"):
            client.step_rest(other, EVENTS[0])
        with pytest.raises(serving.ServingError, match="(?s)INVALID_ARGUMENT: .*another export"):
            client.step_grpc(other, EVENTS[0])
        for call in (client.step_rest, client.step_grpc):
            with pytest.raises(ValueError, match=r"state tensor \S+ of shape \(3\b.*\) does "
                               r"not hold one state per row of item_ids \(2 rows\)"):
                call(state, EVENTS[0][:2])
