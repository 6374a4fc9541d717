"""A client for a running TF Serving: :class:`Client` over REST or gRPC.

It sends rows of raw item ids (any lengths; right-padded with ``""`` on the wire, see
``tfrs_linear.serving.wire``) to the signatures of an export and returns NumPy arrays.
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

from tfrs_linear.serving.wire import (
    ServingError,
    decode_strings,
    pad_rows,
    predict_request,
    serialize_examples,
)


class Client:
    """Calls a TF Serving model over REST (``predict_rest``) or gRPC (``predict_grpc``).

    ``item_ids``: a batch of raw-id rows, oldest first, of any lengths (padded with ""
    here). Returns ``{"item_ids": str [B, k], "scores": float32 [B, k]}`` (or
    ``{"user_embedding": float32 [B, d]}`` for ``encode_*``). Failures raise
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

    def _rest_body(self, item_ids, signature, format):
        rows = pad_rows(item_ids)
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

        signature = signature_name or self.signature_name
        request = predict_request(self.model_name, signature, pad_rows(item_ids),
                                  version=self.version)
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
            result[key] = decode_strings(arr).astype(str) if arr.size else arr.astype(str)
        else:
            result[key] = np.asarray(value, dtype=np.float32)
    return result
