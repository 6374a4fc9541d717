"""The run directory of ``tfrs-linear train --output DIR``: its files, written atomically.

A run's directory is a model directory (:mod:`tfrs_linear.models.model_dir`: the flat
``config.json``, ``vocab.txt``, the best ``weights/``) plus what resuming and reporting
need: ``data.json`` (where the data came from, its statistics), ``checkpoints/`` (model +
optimizer after every completed epoch, and ``state.json``), ``logs/`` (TensorBoard) and
``metrics.json`` (the best epoch's validation and test metrics, and the per-epoch
``history``: :func:`metrics_history`).
"""

import json
import os
import shutil
from pathlib import Path

from tfrs_linear.config import load_saved_config, save_config, to_flat_dict
from tfrs_linear.constants import NUM_RESERVED
from tfrs_linear.data.vocabulary import load_vocabulary, save_vocabulary
from tfrs_linear.models.model_dir import CONFIG_FILE, VOCAB_FILE, WEIGHTS_DIR

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
DATA_FILE = "data.json"
METRICS_FILE = "metrics.json"
# Keys that may differ when a run is resumed (they do not change the model nor the
# trajectory of the epochs already run).
RESUMABLE_KEYS = frozenset({"epochs", "patience", "eval_batch_size", "xla", "exclude_history"})


def new_state():
    """The state of a run before its first epoch (what ``checkpoints/state.json`` holds):
    completed epochs, best validation score and its epoch, epochs without improvement,
    and one history record per epoch."""
    return {"epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0, "history": []}


def check_resumable(output, model_config, train_config, vocab):
    """Raises ``ValueError`` if ``output`` holds a run that this configuration and
    vocabulary cannot resume (keys outside :data:`RESUMABLE_KEYS` differ, or the data).

    Only a run with a completed epoch (its ``state.json``) counts: the files of a run
    that stopped before its first epoch ended are no reason to refuse, the new run
    overwrites them."""
    output = Path(output)
    existing = output / CONFIG_FILE
    state = read_state(output) if existing.exists() else None
    if state is None or int(state.get("epoch", 0)) < 1:
        return
    old = to_flat_dict(*load_saved_config(existing))
    new = to_flat_dict(model_config, train_config)
    resumable = RESUMABLE_KEYS
    if new.get("lr_schedule") == "cosine":  # the cosine ends with the epoch cap
        resumable = resumable - {"epochs"}
    diff = sorted(k for k in new if k not in resumable and old.get(k) != new[k])
    if diff:
        raise ValueError(
            f"{output} holds a run with a different configuration "
            f"({', '.join(f'{k}: {old.get(k)!r} -> {new[k]!r}' for k in diff)}); "
            "use another --output, or the same flags to resume it."
        )
    if load_vocabulary(output / VOCAB_FILE) != list(vocab):
        raise ValueError(
            f"{output} was trained on other data (its vocabulary differs); "
            "use another --output."
        )


def elapsed_seconds(state):
    """The training clock of the run's last completed epoch (its history record's
    ``seconds``; 0 for a new run or a record that predates the clock): where a resumed
    run's clock continues."""
    history = state.get("history") or []
    return float(history[-1].get("seconds") or 0.0) if history else 0.0


def metrics_history(state):
    """``metrics.json``'s ``history``: per completed epoch ``{"epoch", "seconds", "valid"}``
    (``seconds``: the training clock at the end of the epoch's training, from the start
    of the command, evaluation excluded, cumulative across resumes; ``None`` for an
    epoch trained before the clock was recorded; ``valid``: that epoch's validation
    metrics)."""
    return [{"epoch": h["epoch"], "seconds": h.get("seconds"), "valid": h["valid"]}
            for h in state.get("history", [])]


def write_metadata(output, model_config, train_config, data):
    """Writes ``config.json``, ``vocab.txt`` and ``data.json``; returns the data info."""
    output = Path(output)
    save_config(output / CONFIG_FILE, model_config, train_config)
    save_vocabulary(data.vocab, output / VOCAB_FILE)
    source = str(data.source)
    if source and Path(source).exists():
        source = str(Path(source).resolve())  # `evaluate` may run from elsewhere
    info = {
        "source": source,
        "num_users": int(data.num_users),
        "num_items": int(data.num_items - NUM_RESERVED),
        "num_interactions": int(data.num_interactions),
        "dropped_users": int(data.dropped_users),
        "dropped_duplicates": int(data.dropped_duplicates),
        "keep_duplicates": bool(data.keep_duplicates),
    }
    (output / DATA_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def training_data_source(output):
    """The data a run was trained on, from its ``data.json``: a path, or ``None`` for the
    embedded synthetic dataset."""
    info = json.loads((Path(output) / DATA_FILE).read_text())
    source = info.get("source")
    return None if source in (None, "None", "synthetic", "") or source.startswith("synthetic") else source


def state_path(output):
    return Path(output) / CHECKPOINTS_DIR / STATE_FILE


def read_state(output):
    """The saved state of the run in ``output`` (see :func:`new_state`), or ``None``."""
    path = state_path(output)
    return json.loads(path.read_text()) if path.exists() else None


def write_state(output, state):
    """Writes ``checkpoints/state.json`` atomically."""
    path = state_path(output)
    tmp = path.with_name(STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def save_best_weights(model, output):
    """Replaces ``weights/`` with ``model``'s weights (written aside, then renamed)."""
    output = Path(output)
    weights = output / WEIGHTS_DIR
    tmp = output / (WEIGHTS_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_weights(str(tmp / "model"))
    if weights.exists():
        shutil.rmtree(weights)
    os.replace(tmp, weights)


def write_metrics(output, metrics, name=METRICS_FILE):
    """Writes ``metrics`` as ``output/name`` (JSON); returns the path."""
    path = Path(output) / name
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path


__all__ = [
    "new_state", "check_resumable", "elapsed_seconds", "metrics_history", "write_metadata",
    "training_data_source", "read_state", "write_state", "save_best_weights", "write_metrics",
    "RESUMABLE_KEYS",
]
