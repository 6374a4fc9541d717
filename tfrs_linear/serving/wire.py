"""The wire format of an export: names, request tensors and the error of a serving call.

The export writes it, ``check-serving`` reads it back and the :class:`Client` sends it,
so all three take these from here: the signature names, the files under
``assets.extra``, how a batch of raw-id rows becomes the string tensors the signatures
take, and the ``PredictRequest`` that carries them (the warmup records and the gRPC
client build the same one).

Rows of raw ids are *right*-padded with ``""`` on the wire (:func:`pad_rows`): the
signature itself drops the padding, keeps the newest ``max_len`` ids and left-pads
their indices for the model (``tfrs_linear.data.pad_left`` is that step on the
Python side).
"""

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import predict_pb2

SIGNATURES = ("serving_default", "encode", "serving_tf_example")
TOPK_OUTPUTS = ("item_ids", "scores")
WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_INFO_FILE = "tfrs_linear.json"


class ServingError(RuntimeError):
    """A failed export check or serving call; the message says what failed and where.

    Args:
      message: what failed, where (URL or target) and, when known, how to fix it.
      status: the HTTP status code, the gRPC status name, or a short word such as
        ``"timeout"``; ``None`` when unknown.
      details: the server's own error text, when it sent one.
    """

    def __init__(self, message, status=None, details=None):
        super().__init__(message)
        self.status = status
        self.details = details


def pad_rows(item_ids):
    """Rows of raw ids (str/int/bytes, ragged) → equal-length lists of str, ``""`` pads.

    Args:
      item_ids: a batch: a list (or array) of rows, each a list of raw item ids.

    Raises:
      TypeError: ``item_ids`` is not a batch of rows (a single string, or a flat list).
    """
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


def string_matrix(rows):
    """Equal-length rows of str → an object array of UTF-8 bytes, ``[len(rows), width]``."""
    return np.array([[str(v).encode("utf-8") for v in row] for row in rows], dtype=object).reshape(
        len(rows), -1 if rows and len(rows[0]) else 0
    )


def decode_strings(array):
    """An array of bytes/str → the same shape of ``str`` (object dtype)."""
    return np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b),
                        otypes=[object])(array) if np.size(array) else np.asarray(array, object)


def serialize_examples(rows):
    """Serialized ``tf.Example`` s with a bytes feature ``item_ids`` (``""`` dropped)."""
    out = []
    for row in rows:
        ex = example_pb2.Example()
        values = [str(v).encode("utf-8") for v in row if str(v) != ""]
        ex.features.feature["item_ids"].bytes_list.value.extend(values)
        out.append(ex.SerializeToString())
    return out


def predict_request(model_name, signature_name, rows, version=None):
    """The ``PredictRequest`` of equal-length raw-id rows for one signature.

    Args:
      model_name: the model's name in TF Serving (its base path's folder name).
      signature_name: one of :data:`SIGNATURES`; ``serving_tf_example`` sends the rows
        as serialized ``tf.Example`` s (input ``examples``), the others as a string
        matrix (input ``item_ids``).
      rows: equal-length lists of raw ids (see :func:`pad_rows`).
      version: a model version number, or ``None`` for the newest.
    """
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    if signature_name == "serving_tf_example":
        value = np.array(serialize_examples(rows), dtype=object)
        request.inputs["examples"].CopyFrom(tf.make_tensor_proto(value, dtype=tf.string))
    else:
        value = string_matrix(rows)
        request.inputs["item_ids"].CopyFrom(
            tf.make_tensor_proto(value, dtype=tf.string, shape=value.shape)
        )
    return request


def step_request(model_name, state, rows, version=None):
    """The ``PredictRequest`` of the ``step`` signature: a streaming ``state`` (``{name:
    array}``, ``encode_state``'s outputs but ``user_embedding``) and the new events'
    equal-length raw-id rows (:func:`pad_rows`)."""
    request = predict_request(model_name, "step", rows, version)
    for name, value in state.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return request
