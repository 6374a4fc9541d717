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
from tfrs_linear.serving.wire import SIGNATURES, pad_rows, predict_request

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


def warmup_requests(model_name, vocab, max_len):
    """``PredictionLog`` protos: three batches for each signature.

    Args:
      model_name: the model's name in TF Serving (written into every request).
      vocab: the export's vocabulary (its catalogue items fill the requests).
      max_len: the model's history length (one request is longer).
    """
    logs = []
    batches = _example_rows(vocab, max_len)
    for signature in SIGNATURES:
        for rows in batches:
            request = predict_request(model_name, signature, rows)
            logs.append(
                prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                )
            )
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
