"""A client for a running TF Serving: :class:`Client` over REST or gRPC.

It sends rows of raw item ids (any lengths; right-padded with ``""`` on the wire, see
``tfrs_linear.serving.wire``) to the signatures of an export and returns NumPy arrays.
The streaming calls (``encode_state_*``, ``step_*``) also send and return a user's
state: a dict of NumPy arrays a service stores per user and sends back with the next
event (docs/serving.md, "Streaming").
Every failure (connection refused, timeout, an HTTP or gRPC error, a response that is
not what TF Serving sends) raises :class:`ServingError` with a message that says what
failed, where, and how to fix it when that is known.

gRPC (``grpcio``) is imported only when a gRPC method is called.
"""

import base64
import json
import socket
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf

from tfrs_linear.serving.streaming import STATE_FINGERPRINT, STATE_RECENT
from tfrs_linear.serving.wire import (
    ServingError,
    decode_strings,
    pad_rows,
    predict_request,
    serialize_examples,
    step_request,
)

# The outputs of the streaming signatures that are not part of the state.
_NOT_STATE = ("user_embedding", "item_ids", "scores")
# The state tensors that are not float32.
_STATE_DTYPES = {STATE_FINGERPRINT: np.int64, STATE_RECENT: np.int32}


class Client:
    """Calls a TF Serving model over REST (``predict_rest``) or gRPC (``predict_grpc``).

    ``item_ids``: a batch of raw-id rows, oldest first, of any lengths (padded with ""
    here). Returns ``{"item_ids": str [B, k], "scores": float32 [B, k]}`` (or
    ``{"user_embedding": float32 [B, d]}`` for ``encode_*``; the streaming calls
    ``encode_state_*`` and ``step_*`` return the state tensors too). Failures raise
    :class:`ServingError` saying what failed. A gRPC channel is opened at the first
    gRPC call and closed by :meth:`close` (or on leaving a ``with`` block).

    Args:
      host: the TF Serving host.
      rest_port: its REST port (``--rest_api_port``).
      grpc_port: its gRPC port (``--port``).
      model_name: the model's name in TF Serving (its base path's folder name).
      timeout: seconds to wait for one call.
      signature_name: the signature called when a call names none.
      version: a model version number, or ``None`` for the newest.
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

    def _rest_body(self, item_ids, signature, format, state=None):
        rows = pad_rows(item_ids)
        if signature == "serving_tf_example":
            key = "examples"
            values = [{"b64": base64.b64encode(s).decode("ascii")} for s in serialize_examples(rows)]
        else:
            key, values = "item_ids", rows
        columns = {key: values}
        for name, value in _checked_state(state, len(values)).items():
            columns[name] = value.tolist()
        if format == "row":
            body = {"instances": [{k: v[i] for k, v in columns.items()}
                                  for i in range(len(values))]}
        elif format == "columnar":
            body = {"inputs": columns}
        else:
            raise ValueError(f"format must be 'row' or 'columnar', got {format!r}")
        body["signature_name"] = signature
        return body

    def predict_rest(self, item_ids, format="row", signature_name=None, state=None):
        """``state`` (``step`` only): the user states sent with ``item_ids``, see
        :meth:`step_rest`."""
        signature = signature_name or self.signature_name
        body = json.dumps(self._rest_body(item_ids, signature, format, state)).encode("utf-8")
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

    def predict_grpc(self, item_ids, signature_name=None, state=None):
        """``state`` (``step`` only): the user states sent with ``item_ids``, see
        :meth:`step_grpc`."""
        import grpc

        signature = signature_name or self.signature_name
        if state is None:
            request = predict_request(self.model_name, signature, pad_rows(item_ids),
                                      version=self.version)
        else:
            rows = pad_rows(item_ids)
            request = step_request(self.model_name, _checked_state(state, len(rows)), rows,
                                   version=self.version)
            request.model_spec.signature_name = signature
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

    # -- streaming (encode_state, step) ---------------------------------------------
    @staticmethod
    def stream_state(outputs):
        """The state part of ``encode_state``'s or ``step``'s outputs: every array but
        ``user_embedding``, ``item_ids`` and ``scores``, with the dtypes the signatures
        take (``fingerprint`` int64, ``recent_items`` int32, the others float32), so a
        state read back from a store (lists, other dtypes) can be sent again."""
        return {name: np.asarray(value, dtype=_STATE_DTYPES.get(name, np.float32))
                for name, value in outputs.items() if name not in _NOT_STATE}

    def encode_state_rest(self, item_ids, format="row"):
        """The streaming state of whole histories (raw-id rows, oldest first, any length)
        over REST: ``{state tensors..., "user_embedding": float32 [B, d]}``;
        :meth:`stream_state` of it is what :meth:`step_rest` takes."""
        return self.predict_rest(item_ids, format=format, signature_name="encode_state")

    def encode_state_grpc(self, item_ids):
        """:meth:`encode_state_rest` over gRPC."""
        return self.predict_grpc(item_ids, signature_name="encode_state")

    def step_rest(self, state, item_ids, format="row"):
        """New events over REST: ``state`` (the users' states: :meth:`encode_state_rest`'s
        or the previous step's outputs; ``user_embedding``, ``item_ids`` and ``scores``
        are dropped) and ``item_ids`` (rows of the new raw ids; an empty row adds none)
        → ``{new state tensors..., "user_embedding", "item_ids" str [B, k], "scores"}``.
        A state made by another export is refused (``ServingError`` naming "another
        export"): call :meth:`encode_state_rest` with the user's history again."""
        return self.predict_rest(item_ids, format=format, signature_name="step", state=state)

    def step_grpc(self, state, item_ids):
        """:meth:`step_rest` over gRPC."""
        return self.predict_grpc(item_ids, signature_name="step", state=state)

    def close(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _checked_state(state, rows):
    """:meth:`Client.stream_state` of ``state`` (``{}`` for ``None``); raises ValueError
    naming the tensor whose first dimension is not ``rows`` (one state per row)."""
    state = {} if state is None else Client.stream_state(state)
    for name, value in state.items():
        if value.ndim == 0 or len(value) != rows:
            raise ValueError(f"state tensor {name} of shape {value.shape} does not hold one "
                             f"state per row of item_ids ({rows} rows)")
    return state


def _as_arrays(columns):
    result = {}
    for key, value in columns.items():
        if key == "item_ids":
            arr = np.asarray(value, dtype=object)
            result[key] = decode_strings(arr).astype(str) if arr.size else arr.astype(str)
        else:
            result[key] = np.asarray(value, dtype=_STATE_DTYPES.get(key, np.float32))
    return result
