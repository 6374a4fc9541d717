"""TF Serving deployment: versioned SavedModel export, a TF1-style check, a client.

One module per concept:

* ``wire``: what export, check and client agree on: the signature and file names, how
  rows of raw ids become request tensors and a ``PredictRequest``, :class:`ServingError`.
* ``signatures``: the SavedModel's three signatures (``serving_default``, ``encode``,
  ``serving_tf_example``), built by :class:`ServingSignatures`.
* ``streaming``: the ``encode_state`` and ``step`` signatures of a streamable export (a
  constant-size state per user, docs/streaming.md), built by :class:`StreamingSignatures`.
* ``warmup``: the ``PredictionLog`` warmup records written into every export.
* ``scratch``: the scratch folders exports build in, marked with their owner; the
  stale ones of killed exports are removed.
* ``export``: the versioned export (``tfrs-linear export``): versions, atomic rename,
  ``models.config``, the export info ``tfrs_linear.json``.
* ``check``: ``tfrs-linear check-serving``: load as TF Serving does → scan ops → replay
  the warmup → compare with the Python model.
* ``client``: :class:`Client`, REST or gRPC calls to a running TF Serving.

Every name is importable from ``tfrs_linear.serving``. The ``export`` and
``check-serving`` commands (``tfrs_linear.cli.export``, ``tfrs_linear.cli.check_serving``)
call :func:`export_model_dir` and :func:`check_serving`.
"""

from tfrs_linear.constants import NUM_RESERVED, OOV_INDEX, PAD_INDEX
from tfrs_linear.serving.check import (
    PYTHON_OPS,
    check_serving,
    check_tolerance,
    reference_outputs,
    scan_graph,
)
from tfrs_linear.serving.client import Client
from tfrs_linear.serving.export import (
    CONTAINER_MODELS_ROOT,
    EXPORT_EXCLUDES_HISTORY,
    MODELS_CONFIG,
    export_model,
    export_model_dir,
    models_config_text,
    next_version,
    numeric_versions,
    write_models_config,
)
from tfrs_linear.serving.scratch import (
    SCRATCH_OWNER_FILE,
    TMP_PREFIX,
    UNOWNED_STALE_AFTER_S,
    is_stale,
    make_scratch,
    owner_record,
    remove_stale_scratch,
)
from tfrs_linear.serving.signatures import ServingSignatures, checked_rank
from tfrs_linear.serving.streaming import (
    DEFAULT_STREAM_HISTORY,
    STATE_FINGERPRINT,
    STATE_RECENT,
    STREAM_SIGNATURES,
    StreamingSignatures,
    model_fingerprint,
)
from tfrs_linear.serving.warmup import (
    UNKNOWN_WARMUP_ID,
    read_warmup,
    warmup_requests,
    write_warmup,
)
from tfrs_linear.serving.wire import (
    EXPORT_INFO_FILE,
    SIGNATURES,
    TOPK_OUTPUTS,
    WARMUP_FILE,
    ServingError,
    decode_strings,
    pad_rows,
    predict_request,
    serialize_examples,
    step_request,
    string_matrix,
)

__all__ = [
    "DEFAULT_STREAM_HISTORY",
    "STATE_FINGERPRINT",
    "STATE_RECENT",
    "STREAM_SIGNATURES",
    "StreamingSignatures",
    "model_fingerprint",
    "step_request",
    "CONTAINER_MODELS_ROOT",
    "EXPORT_EXCLUDES_HISTORY",
    "EXPORT_INFO_FILE",
    "MODELS_CONFIG",
    "NUM_RESERVED",
    "OOV_INDEX",
    "PAD_INDEX",
    "PYTHON_OPS",
    "SCRATCH_OWNER_FILE",
    "SIGNATURES",
    "TMP_PREFIX",
    "TOPK_OUTPUTS",
    "UNKNOWN_WARMUP_ID",
    "UNOWNED_STALE_AFTER_S",
    "WARMUP_FILE",
    "Client",
    "ServingError",
    "ServingSignatures",
    "check_serving",
    "check_tolerance",
    "checked_rank",
    "decode_strings",
    "export_model",
    "export_model_dir",
    "is_stale",
    "make_scratch",
    "models_config_text",
    "next_version",
    "numeric_versions",
    "owner_record",
    "pad_rows",
    "predict_request",
    "read_warmup",
    "reference_outputs",
    "remove_stale_scratch",
    "scan_graph",
    "serialize_examples",
    "string_matrix",
    "warmup_requests",
    "write_models_config",
    "write_warmup",
]
