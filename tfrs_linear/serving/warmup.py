"""The warmup records of an export: ``assets.extra/tf_serving_warmup_requests``.

TF Serving replays this TFRecord file of ``PredictionLog`` protos when it loads a
version, so the first real request does not pay for graph initialization;
``check-serving`` replays the same records through a TF1 session and compares what
they return with the Python model. The requests cover every signature with batches of
different sizes and lengths, an unknown id, an all-empty row and a history longer than
``max_len``.
"""

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tfrs_linear.constants import NUM_RESERVED
from tfrs_linear.serving.wire import SIGNATURES, pad_rows, predict_request, step_request

UNKNOWN_WARMUP_ID = "__tfrs_linear_unknown_item__"


def _example_rows(vocab, max_len):
    """A few realistic request batches of raw ids (right-padded with "")."""
    items = list(vocab[NUM_RESERVED:]) or [UNKNOWN_WARMUP_ID]

    def take(n, start=0):
        return [items[(start + i) % len(items)] for i in range(n)]

    return [
        pad_rows([take(1)]),
        pad_rows([take(3), [UNKNOWN_WARMUP_ID] + take(2, 3), []]),
        pad_rows([take(max_len + 3, 1), take(max(1, max_len // 2), 5) + [UNKNOWN_WARMUP_ID]]),
    ]


def _log(request):
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_requests(model_name, vocab, max_len, streaming=None):
    """``PredictionLog`` protos: three batches for each signature.

    Args:
      model_name: the model's name in TF Serving (written into every request).
      vocab: the export's vocabulary (its catalogue items fill the requests).
      max_len: the model's history length (one request is longer).
      streaming: the export's ``StreamingSignatures`` or None; with it, ``encode_state``
        gets the same three batches, and ``step`` one new event per row (the last batch
        with a row that adds none) on the states ``encode_state`` makes of them.
    """
    logs = []
    batches = _example_rows(vocab, max_len)
    for signature in SIGNATURES:
        for rows in batches:
            logs.append(_log(predict_request(model_name, signature, rows)))
    if streaming is None:
        return logs
    for rows in batches:
        logs.append(_log(predict_request(model_name, "encode_state", rows)))
    for i, rows in enumerate(batches):
        outputs = streaming.encode_state(tf.constant(rows, tf.string))
        state = {k: v.numpy() for k, v in outputs.items() if k != "user_embedding"}
        new = pad_rows([[row[0] or UNKNOWN_WARMUP_ID] if (i < 2 or r) else []
                        for r, row in enumerate(rows)])
        logs.append(_log(step_request(model_name, state, new)))
    return logs


def write_warmup(path, logs):
    """Writes ``PredictionLog`` protos as a TFRecord file."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def read_warmup(path):
    """The ``PredictionLog`` records of a warmup file."""
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(path))
    ]
