"""TFX Trainer module file: ``run_fn(fn_args)`` trains and exports a tfrs_linear model.

It never imports ``tfx`` (only attributes of ``fn_args`` are read), so it also runs with
any stand-in object, e.g. ``types.SimpleNamespace``. Wiring, in a TFX pipeline whose
data comes from ``pipelines/preprocess.py`` (for instance through an ``ImportExampleGen``
over its TFRecord shards, or by passing the directory)::

    from tfx.components import Trainer
    from tfx.proto import trainer_pb2

    trainer = Trainer(
        module_file="pipelines/tfx_trainer.py",
        examples=example_gen.outputs["examples"],        # the preprocessed shards
        train_args=trainer_pb2.TrainArgs(num_steps=2000),  # optional cap, see train_steps
        eval_args=trainer_pb2.EvalArgs(num_steps=0),       # not used (full ranking)
        custom_config={
            "preprocessed_dir": "/data/prep",  # vocab.txt + metadata.json, if not found
            "attention": "linrec",             # any configuration key
            "epochs": 3,
        },
    )

``fn_args`` fields read:

* ``train_files`` / ``eval_files``: lists of file patterns of the preprocessed TFRecord
  shards, or the preprocessed directory itself. Leave-one-out keeps the validation and
  test targets inside every user's sequence, so the users of both lists are loaded
  together (each shard once): the model trains on ``seq[:-2]`` and is selected on
  ``seq[-2]`` and reported on ``seq[-1]`` of all of them. When the patterns name every
  shard of the directory (or the directory), the whole-dataset checks of
  ``load_preprocessed`` run too.
* ``transform_output`` (optional): the preprocessed directory (``metadata.json``,
  ``vocab.txt``, ``item_popularity.txt``). Without it, ``custom_config["preprocessed_dir"]``,
  else the directory holding the matched shards.
* ``serving_model_dir``: the SavedModel lands directly there (``saved_model.pb``,
  ``variables/``, ``assets/``, ``assets.extra/`` with the TF Serving warmup requests),
  exported by ``tfrs_linear.serving.export_model`` into a scratch base next to it and
  renamed into place when complete (an ``gs://``-style path is copied with
  ``tf.io.gfile`` instead).
* ``model_run_dir``: the training run (``config.json``, ``vocab.txt``, checkpoints,
  best weights, TensorBoard logs under ``logs/``, ``metrics.json``); a local path. Run
  again with the same directory, training resumes after the last completed epoch.
* ``train_steps`` (optional): a cap on the total training steps, spread over the epochs
  (``ceil(train_steps / epochs)`` batches per epoch at most).
* ``eval_steps``: ignored; validation and test are full-ranking over every user.
* ``custom_config`` (optional dict): configuration keys, the flat ones of
  ``tfrs_linear.config`` (``ModelConfig`` and ``TrainConfig`` fields: ``attention``,
  ``epochs``, ``max_len``, ``xla``, ...) over the defaults or over ``"config_file"`` (a
  JSON of ``models/``); plus ``"k"`` (top-k of the export, default 100), ``"model_name"``
  (recorded in the warmup requests, default ``"tfrs_linear"``), ``"strategy"``
  (``"default"``, ``"mirrored"`` or ``"multiworker"``: ``TF_CONFIG`` worker tasks only;
  worker 0 exports) and ``"preprocessed_dir"``.
"""

import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from tfrs_linear.keras2 import require_keras2

require_keras2()  # first: tf-keras behind tf.keras before TFRS is imported

import tensorflow as tf  # noqa: E402

from tfrs_linear import data as data_lib  # noqa: E402
from tfrs_linear import serving  # noqa: E402
from tfrs_linear.config import (  # noqa: E402
    ModelConfig,
    TrainConfig,
    config_from_dict,
    load_config,
    to_flat_dict,
)
from tfrs_linear.models import load_model_dir  # noqa: E402
from tfrs_linear.training import train  # noqa: E402
from tfrs_linear.training.strategy import make_strategy, worker_of  # noqa: E402

_EXTRA_KEYS = ("config_file", "k", "model_name", "strategy", "preprocessed_dir")


def _field(fn_args, name, default=None):
    value = getattr(fn_args, name, default)
    return default if value is None else value


def _patterns(value):
    if not value:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else [str(v) for v in value]


def resolve_data(fn_args, preprocessed_dir=None):
    """The :class:`~tfrs_linear.data.SequenceData` named by ``fn_args`` (module docstring)."""
    patterns = _patterns(_field(fn_args, "train_files")) + _patterns(_field(fn_args, "eval_files"))
    directory = None
    for candidate in (_field(fn_args, "transform_output"), preprocessed_dir):
        if candidate and data_lib.is_preprocessed_dir(candidate):
            directory = str(candidate)
            break
    whole = not patterns
    files = []
    for pattern in patterns:
        pattern = str(pattern)
        if data_lib.is_preprocessed_dir(pattern):
            if directory is None:
                directory = pattern
            if os.path.normpath(pattern) != os.path.normpath(directory):
                raise ValueError(f"{pattern}: another preprocessed directory than {directory}")
            whole = True
            continue
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        files.extend(matched)
    files = sorted(set(files))
    if directory is None:
        parents = sorted({os.path.dirname(f) for f in files})
        if len(parents) != 1 or not data_lib.is_preprocessed_dir(parents[0]):
            raise ValueError(
                "cannot find the preprocessed directory (metadata.json, vocab.txt): pass "
                "fn_args.transform_output or custom_config['preprocessed_dir'], or shards that "
                f"lie in it (got {patterns})"
            )
        directory = parents[0]
    if not whole:
        listed = data_lib.read_preprocessed_metadata(directory).get("shards", [])
        all_shards = sorted(os.path.join(directory, name) for name in listed)
        whole = [os.path.normpath(f) for f in files] == [os.path.normpath(f) for f in all_shards]
    return data_lib.load_preprocessed(directory, files=None if whole else files)


def _copy_tree(src, dst):
    for root, _, names in os.walk(src):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else dst.rstrip("/") + "/" + rel.replace(os.sep, "/")
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(root, name), target + "/" + name, overwrite=True)


def export_to(model_run_dir, serving_model_dir, k=100, model_name="tfrs_linear"):
    """Exports the trained run so that the SavedModel lies directly in ``serving_model_dir``.

    ``export_model`` writes ``BASE/<version>/`` (and a ``models.config`` next to ``BASE``):
    here ``BASE`` is a scratch folder beside ``serving_model_dir``, and the finished version
    folder is renamed to ``serving_model_dir`` (any previous content is replaced).
    """
    model, train_config, vocab = load_model_dir(model_run_dir)
    target = str(serving_model_dir)
    remote = "://" in target
    parent = tempfile.gettempdir() if remote else os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tfrs-linear-export-", dir=parent))
    try:
        version = serving.export_model(model, vocab, scratch / model_name, k=k,
                                       exclude_history=train_config.exclude_history,
                                       model_dir=model_run_dir)
        if remote:
            _copy_tree(str(version), target)
            return target
        target = os.path.abspath(target)
        old = None
        if os.path.exists(target):
            if os.path.isdir(target) and not os.listdir(target):
                os.rmdir(target)
            else:
                old = os.path.join(parent, f".{os.path.basename(target)}.old-{uuid.uuid4().hex[:8]}")
                os.rename(target, old)
        os.rename(version, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_fn(fn_args):
    """Trains on the preprocessed data and exports to ``fn_args.serving_model_dir``.

    Returns ``{"metrics": ..., "serving_model_dir": ...}`` (TFX ignores it).
    """
    custom = dict(_field(fn_args, "custom_config", {}) or {})
    extras = {key: custom.pop(key) for key in _EXTRA_KEYS if key in custom}
    if "config_file" in extras:
        base = load_config(extras["config_file"])
    else:
        base = (ModelConfig(), TrainConfig())
    model_config, train_config = config_from_dict({**to_flat_dict(*base), **custom},
                                                  source="custom_config")

    run_dir = _field(fn_args, "model_run_dir")
    serving_dir = _field(fn_args, "serving_model_dir")
    if not run_dir or not serving_dir:
        raise ValueError("fn_args needs model_run_dir and serving_model_dir")
    # Before any data op: MultiWorkerMirroredStrategy configures collectives at start-up.
    strategy = make_strategy(extras.get("strategy", "default"))
    data = resolve_data(fn_args, extras.get("preprocessed_dir"))

    steps_per_epoch = None
    train_steps = _field(fn_args, "train_steps")
    if train_steps:
        steps_per_epoch = max(1, math.ceil(int(train_steps) / train_config.epochs))
    metrics = train(model_config, train_config, data, run_dir,
                    strategy=strategy, steps_per_epoch=steps_per_epoch)
    exported = None
    if worker_of(strategy)[0] == 0:  # the chief exports
        exported = export_to(run_dir, serving_dir, k=int(extras.get("k", 100)),
                             model_name=str(extras.get("model_name", "tfrs_linear")))
    return {"metrics": metrics, "serving_model_dir": exported}
