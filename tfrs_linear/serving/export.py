"""Versioned SavedModel export for TF Serving, and the ``tfrs-linear export`` command.

Export layout (``tfrs-linear export --model DIR --base-path saved_models/NAME``)::

    saved_models/
      models.config                 ModelServerConfig text proto: every model folder,
                                    base_path /models/NAME (the container convention)
      NAME/
        1/ 2/ ...                   one version each, max(existing)+1, renamed into place
          saved_model.pb            from a non-numeric .tmp-export-* scratch folder, so
          variables/                TF Serving never sees a half-written version
          assets/vocab.txt          raw item id per line (line i = index i)
          assets.extra/
            tf_serving_warmup_requests   TFRecord of PredictionLog (every signature)
            tfrs_linear.json             source model dir + export options (k,
                                         exclude_history: what check-serving compares with)

Everything is created with the process umask (folders 0755 and files 0644 under umask
022), so a TF Serving process running as another user can read it. The history items
of a request are removed by default (``--keep-history`` keeps them), whatever the run
was evaluated with. Arguments are checked before anything is created.

The signatures are described in ``tfrs_linear.serving.signatures``, the warmup records
in ``tfrs_linear.serving.warmup``, the scratch folders (and the removal of those a
killed export left) in ``tfrs_linear.serving.scratch``.
"""

import json
import logging
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfrs_linear import __version__
from tfrs_linear.data import save_vocabulary
from tfrs_linear.models import load_model_dir
from tfrs_linear.serving.scratch import (
    SCRATCH_VERSION,
    SCRATCH_VOCAB,
    TMP_PREFIX,
    make_scratch,
    remove_stale_scratch,
)
from tfrs_linear.serving.signatures import ServingSignatures, checked_scoring
from tfrs_linear.serving.streaming import (
    DEFAULT_STREAM_HISTORY,
    STREAM_SIGNATURES,
    StreamingSignatures,
)
from tfrs_linear.serving.warmup import warmup_requests, write_warmup
from tfrs_linear.serving.wire import EXPORT_INFO_FILE, SIGNATURES, WARMUP_FILE

MODELS_CONFIG = "models.config"
CONTAINER_MODELS_ROOT = "/models"
# An export removes the request's history items unless told otherwise (``--keep-history``):
# a user is rarely served what they just consumed. Evaluation's default differs
# (TrainConfig.exclude_history, the protocol's); an export does not follow it.
EXPORT_EXCLUDES_HISTORY = True

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- versions


def numeric_versions(base_path):
    """The numeric version folders of a base path, ascending (``[]`` when none / missing)."""
    base_path = Path(base_path)
    if not base_path.is_dir():
        return []
    return sorted(int(p.name) for p in base_path.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(base_path):
    """The version number an export writes next: max(existing) + 1, or 1."""
    versions = numeric_versions(base_path)
    return (versions[-1] + 1) if versions else 1


def models_config_text(saved_models_root):
    """The ModelServerConfig text proto for every model folder under ``saved_models_root``.

    A model folder is a non-hidden sub-folder holding at least one numeric version.
    """
    root = Path(saved_models_root)
    config = model_server_config_pb2.ModelServerConfig()
    names = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and numeric_versions(p)
    )
    for name in names:
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = f"{CONTAINER_MODELS_ROOT}/{name}"
        entry.model_platform = "tensorflow"
    return text_format.MessageToString(config)


def write_models_config(saved_models_root):
    """Rewrites ``<saved_models_root>/models.config`` atomically; returns its path.

    The file gets the umask's permissions (``0644`` under umask 022), so that a TF
    Serving process running as another user can read it.
    """
    root = Path(saved_models_root)
    text = models_config_text(root)
    tmp = root / f".{MODELS_CONFIG}.{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # & ~umask
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, root / MODELS_CONFIG)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return root / MODELS_CONFIG


# --------------------------------------------------------------------------- export


def _check_export(base_path, k, exclude_history, stream_history=DEFAULT_STREAM_HISTORY,
                  scoring="exact", candidates=None):
    """The model's name (the base path's folder); raises ValueError on a bad argument.

    Runs before anything is loaded or created.
    """
    name = base_path.name
    if not name or name.startswith(".") or name.isdigit():
        raise ValueError(
            f"--base-path must name a model folder such as saved_models/NAME, got {str(base_path)!r}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"--k must be an integer >= 1, got {k!r}")
    checked_scoring(scoring, candidates, k)
    if (isinstance(stream_history, bool) or not isinstance(stream_history, (int, np.integer))
            or stream_history < 0):
        raise ValueError(f"--stream-history must be an integer >= 0, got {stream_history!r}")
    if exclude_history is not None and not isinstance(exclude_history, (bool, np.bool_)):
        raise ValueError("exclude_history must be True, False or None (None: exclude, the "
                         f"export's default), got {exclude_history!r}")
    return name


def _export_info(built, name, k, model_dir, streaming):
    """The content of ``assets.extra/tfrs_linear.json``."""
    stream = {}
    if streaming is not None:
        stream = {"stream_history": streaming.history_size,
                  "fingerprint": streaming.fingerprint}
    return {
        **stream,
        "model_dir": str(Path(model_dir).resolve()) if model_dir else None,
        "model_name": name,
        "k": built.k,
        "requested_k": int(k),
        "exclude_history": built.exclude_history,
        "max_len": built.max_len,
        "vocab_size": built.vocab_size,
        "d_model": built.d_model,
        "signatures": list(SIGNATURES) + (list(STREAM_SIGNATURES) if stream else []),
        "scoring": built.scoring,
        "candidates": built.candidates,
        "tensorflow": tf.__version__,
        "tfrs_linear": __version__,
    }


def _write_version(scratch, model, vocab, name, k, exclude_history, model_dir,
                   stream_history, scoring="exact", candidates=None):
    """Writes the SavedModel, its warmup records and export info into
    ``scratch/version``; returns that folder. A streamable model also gets the
    ``encode_state`` and ``step`` signatures (:mod:`tfrs_linear.serving.streaming`)."""
    folder = scratch / SCRATCH_VERSION
    vocab_file = scratch / SCRATCH_VOCAB
    save_vocabulary(vocab, vocab_file)
    built = ServingSignatures(model, vocab_file, k, exclude_history, scoring=scoring,
                              candidates=candidates)
    signatures = built.signatures()
    streaming = None
    if model.config.is_streamable:
        streaming = StreamingSignatures(model, built, vocab_file, stream_history)
        signatures.update(streaming.signatures())
    tf.saved_model.save(built.module, str(folder), signatures=signatures)
    extra = folder / "assets.extra"
    extra.mkdir(exist_ok=True)
    write_warmup(extra / WARMUP_FILE, warmup_requests(name, vocab, built.max_len,
                                                      streaming=streaming))
    info = _export_info(built, name, k, model_dir, streaming)
    (extra / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return folder


def _rename_into_place(folder, base_path):
    """Renames a complete ``folder`` to the next free version number; returns the target."""
    version = next_version(base_path)
    while True:
        target = base_path / str(version)
        if not target.exists():
            try:
                os.rename(folder, target)
                return target
            except OSError:
                if not target.exists():
                    raise
        version += 1  # a concurrent export took this number


def export_model(model, vocab, base_path, k=100, exclude_history=None, model_dir=None,
                 stream_history=DEFAULT_STREAM_HISTORY, scoring="exact", candidates=None):
    """Exports ``model`` as the next version under ``base_path``; returns its path.

    Built in a scratch folder ``base_path/.tmp-export-*`` (see
    :mod:`tfrs_linear.serving.scratch`; the scratch folders of killed exports are
    removed first) and renamed to the version number only when complete. Also rewrites
    ``<parent>/models.config``. Folders and files get the umask's permissions.

    Args:
      model: a built ``SequentialRetrievalModel``.
      vocab: its vocabulary (``[PAD]``, ``[OOV]``, then the raw item ids).
      base_path: the model's TF Serving base path, ``saved_models/NAME``.
      k: recommendations per request, an integer ``>= 1`` (capped at the catalogue size).
      exclude_history: never recommend an item of the request's history; ``None`` (the
        default) excludes them (:data:`EXPORT_EXCLUDES_HISTORY`), ``False`` keeps them.
      model_dir: the trained model directory, recorded for ``check-serving``.
      stream_history: a streamable model's ``R``: the newest items its streaming state
        keeps for history exclusion (:mod:`tfrs_linear.serving.streaming`).
      scoring: how the catalogue is scored (:data:`tfrs_linear.constants.SCORINGS`):
        ``"exact"`` (default), ``"exact_copy"`` (the same scan of a float32 copy of the
        table that no lookup touches: big catalogues avoid copying the table per request;
        the export grows by ``4·V·d`` bytes) or ``"bf16"`` (bfloat16 candidates, exact
        float32 re-rank; fast only where bfloat16 matmuls are).
      candidates: the bf16 path's candidates ``C`` (default ``max(400, k)``).

    Raises:
      ValueError: a bad base path, ``k`` or ``exclude_history``, or a vocabulary that does
        not fit the model; raised before anything is created.
    """
    base_path = Path(base_path)
    vocab = list(vocab)
    name = _check_export(base_path, k, exclude_history, stream_history, scoring, candidates)
    if len(vocab) != int(model.vocab_size):
        raise ValueError(f"vocabulary has {len(vocab)} entries but the model has "
                         f"{model.vocab_size}")
    if exclude_history is None:
        exclude_history = EXPORT_EXCLUDES_HISTORY
    base_path.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_scratch(base_path):
        _log.info("removed %s, the scratch folder of an export that is gone", stale)
    scratch = make_scratch(base_path)
    try:
        folder = _write_version(scratch, model, vocab, name, k, exclude_history, model_dir,
                                stream_history, scoring, candidates)
        target = _rename_into_place(folder, base_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_models_config(base_path.parent)
    return target


def export_model_dir(model_dir, base_path, k=100, exclude_history=None,
                     stream_history=DEFAULT_STREAM_HISTORY, scoring="exact", candidates=None):
    """Loads a trained model directory and exports it (see :func:`export_model`).

    The export's history default does not follow the run's ``exclude_history`` (an
    evaluation setting): ``None`` excludes history items, ``False`` keeps them. The
    arguments are checked before the model is loaded.
    """
    _check_export(Path(base_path), k, exclude_history, stream_history, scoring, candidates)
    model, _, vocab = load_model_dir(model_dir)
    return export_model(model, vocab, base_path, k=k, exclude_history=exclude_history,
                        model_dir=model_dir, stream_history=stream_history, scoring=scoring,
                        candidates=candidates)
