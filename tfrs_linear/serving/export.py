"""Versioned SavedModel export for TF Serving, and the ``tfrs-linear export`` command.

Export layout (``tfrs-linear export --model DIR --base-path saved_models/NAME``)::

    saved_models/
      models.config                 ModelServerConfig text proto: every model folder,
                                    base_path /models/NAME (the container convention)
      NAME/
        1/ 2/ ...                   one version each, max(existing)+1, renamed into place
          saved_model.pb            from a non-numeric .tmp-export-* folder, so TF
          variables/                Serving never sees a half-written version
          assets/vocab.txt          raw item id per line (line i = index i)
          assets.extra/
            tf_serving_warmup_requests   TFRecord of PredictionLog (every signature)
            tfrs_linear.json             source model dir + export options

The signatures are described in ``tfrs_linear.serving.signatures``, the warmup records
in ``tfrs_linear.serving.warmup``.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfrs_linear import __version__
from tfrs_linear.config import TrainConfig
from tfrs_linear.data import save_vocabulary
from tfrs_linear.models import load_model_dir
from tfrs_linear.serving.signatures import ServingSignatures
from tfrs_linear.serving.warmup import warmup_requests, write_warmup
from tfrs_linear.serving.wire import EXPORT_INFO_FILE, SIGNATURES, WARMUP_FILE

MODELS_CONFIG = "models.config"
TMP_PREFIX = ".tmp-export-"
CONTAINER_MODELS_ROOT = "/models"


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
    """Rewrites ``<saved_models_root>/models.config`` atomically; returns its path."""
    root = Path(saved_models_root)
    text = models_config_text(root)
    fd, tmp = tempfile.mkstemp(prefix=".models.config.", dir=str(root))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, root / MODELS_CONFIG)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return root / MODELS_CONFIG


# --------------------------------------------------------------------------- export


def _check_export(model, vocab, base_path):
    """The model's name (the base path's folder); raises ValueError on bad arguments."""
    name = base_path.name
    if not name or name.startswith(".") or name.isdigit():
        raise ValueError(
            f"--base-path must name a model folder such as saved_models/NAME, got {str(base_path)!r}"
        )
    if len(vocab) != int(model.vocab_size):
        raise ValueError(f"vocabulary has {len(vocab)} entries but the model has {model.vocab_size}")
    return name


def _export_info(built, name, k, model_dir):
    """The content of ``assets.extra/tfrs_linear.json``."""
    return {
        "model_dir": str(Path(model_dir).resolve()) if model_dir else None,
        "model_name": name,
        "k": built.k,
        "requested_k": int(k),
        "exclude_history": built.exclude_history,
        "max_len": built.max_len,
        "vocab_size": built.vocab_size,
        "d_model": built.d_model,
        "signatures": list(SIGNATURES),
        "tensorflow": tf.__version__,
        "tfrs_linear": __version__,
    }


def _write_version(folder, model, vocab, name, k, exclude_history, model_dir):
    """Writes the SavedModel, its warmup records and export info into ``folder``."""
    scratch = Path(tempfile.mkdtemp(prefix="tfrs-linear-vocab-"))
    try:
        vocab_file = scratch / "vocab.txt"
        save_vocabulary(vocab, vocab_file)
        built = ServingSignatures(model, vocab_file, k, exclude_history)
        tf.saved_model.save(built.module, str(folder), signatures=built.signatures())
        extra = folder / "assets.extra"
        extra.mkdir(exist_ok=True)
        write_warmup(extra / WARMUP_FILE, warmup_requests(name, vocab, built.max_len))
        info = _export_info(built, name, k, model_dir)
        (extra / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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


def export_model(model, vocab, base_path, k=100, exclude_history=None, model_dir=None):
    """Exports ``model`` as the next version under ``base_path``; returns its path.

    Built in ``base_path/.tmp-export-XXXX`` and renamed to the version number only when
    complete (removed on failure). Also rewrites ``<parent>/models.config``.

    Args:
      model: a built ``SequentialRetrievalModel``.
      vocab: its vocabulary (``[PAD]``, ``[OOV]``, then the raw item ids).
      base_path: the model's TF Serving base path, ``saved_models/NAME``.
      k: recommendations per request (capped at the catalogue size).
      exclude_history: never recommend an item of the request's history; ``None``
        takes ``TrainConfig``'s default (:func:`export_model_dir` passes the run's).
      model_dir: the trained model directory, recorded for ``check-serving``.

    Raises:
      ValueError: a bad base path, ``k``, or a vocabulary that does not fit the model.
    """
    base_path = Path(base_path)
    vocab = list(vocab)
    name = _check_export(model, vocab, base_path)
    if exclude_history is None:
        exclude_history = TrainConfig().exclude_history
    base_path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=str(base_path)))
    try:
        _write_version(tmp, model, vocab, name, k, exclude_history, model_dir)
        target = _rename_into_place(tmp, base_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_models_config(base_path.parent)
    return target


def export_model_dir(model_dir, base_path, k=100, exclude_history=None):
    """Loads a trained model directory and exports it (see :func:`export_model`)."""
    model, train_config, vocab = load_model_dir(model_dir)
    if exclude_history is None:
        exclude_history = train_config.exclude_history  # what the run was evaluated with
    return export_model(model, vocab, base_path, k=k, exclude_history=exclude_history,
                        model_dir=model_dir)


# --------------------------------------------------------------------------- command


def add_export_arguments(parser):
    """The flags of ``tfrs-linear export``."""
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="trained model directory (config.json, vocab.txt, weights/)")
    parser.add_argument("--base-path", required=True, metavar="saved_models/NAME",
                        help="the model's TF Serving base path; version max+1 is written")
    parser.add_argument("--k", type=int, default=100,
                        help="recommendations per request (capped at the catalogue size)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--exclude-history", dest="exclude_history", action="store_true",
                       default=None, help="never recommend items of the request's history")
    group.add_argument("--keep-history", dest="exclude_history", action="store_false",
                       help="history items may be recommended (default: config.exclude_history)")


def run_export(args):
    """Runs ``tfrs-linear export``.

    A missing or invalid model directory or a bad argument raises (``OSError`` /
    ``ValueError``); the CLI prints it as ``tfrs-linear export: error: ...``, exit 2.
    """
    path = export_model_dir(args.model, args.base_path, k=args.k,
                            exclude_history=args.exclude_history)
    print(f"exported version {path.name} to {path}")
    print(f"TF Serving config: {Path(args.base_path).parent / MODELS_CONFIG}")
    return 0
