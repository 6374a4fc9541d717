"""What ``tfrs-linear train`` and ``tfrs-linear evaluate`` do once their flags are parsed.

The flags themselves live in :mod:`tfrs_linear.cli.train` and :mod:`tfrs_linear.cli.evaluate`
(TensorFlow-free, so that ``--help`` answers at once); these two functions are the
TensorFlow side. ``train_command`` loads the data and trains (a run directory, resumable);
``evaluate_command`` scores a trained run directory by a protocol and writes
``metrics-<protocol>.json`` into it.
"""

import json
import time
from pathlib import Path

from tfrs_linear.data.loading import load_dataset
from tfrs_linear.models.model_dir import load_model_dir
from tfrs_linear.training import run_dir
from tfrs_linear.training.evaluator import Evaluator, format_table, metric_subset
from tfrs_linear.training.strategy import make_strategy
from tfrs_linear.training.trainer import train


def _log(message):
    print(message, flush=True)


def train_command(model_config, train_config, output, data=None, format="auto",
                  keep_duplicates=False, strategy="default", steps_per_epoch=None):
    """Loads ``data`` (a file, a preprocessed directory, or ``None``: the embedded synthetic
    data) and trains into ``output``; returns 0. The configurations are validated first,
    and nothing is written before the data has loaded. The training clock of
    ``metrics.json``'s ``history`` starts here, so loading the data counts.

    The ``tf.distribute`` strategy is created first, before the data loads: the
    ``multiworker`` strategy configures the process's collective ops, which must happen
    before any other TensorFlow op (a bad ``TF_CONFIG`` is a ``ValueError`` here)."""
    started = time.monotonic()
    strategy = make_strategy(strategy)
    # A preprocessed directory is streamed from its shards (never held in memory).
    data = load_dataset(data, format=format, keep_duplicates=keep_duplicates, stream=True)
    train(model_config, train_config, data, output, strategy=strategy,
          steps_per_epoch=steps_per_epoch, started=started)
    return 0


def _run_kept_duplicates(model):
    """Whether the run in ``model`` kept duplicate rows, as its ``data.json`` records it
    (``keep_duplicates``; a run that does not record it dropped them, the default)."""
    path = Path(model) / run_dir.DATA_FILE
    info = json.loads(path.read_text()) if path.exists() else {}
    return bool(info.get("keep_duplicates", False))


def evaluate_command(model, data=None, format="auto", protocol="full", exclude_history=False,
                     seed=0, keep_duplicates=None):
    """Evaluates the run directory ``model`` on ``data`` (default: the data it was trained
    on) by ``protocol``; prints the table, writes ``metrics-<protocol>.json``; returns 0.
    ``keep_duplicates=None`` loads the data as the run did."""
    loaded, train_config, vocab = load_model_dir(model)
    path = data if data else run_dir.training_data_source(model)
    if keep_duplicates is None:
        keep_duplicates = _run_kept_duplicates(model)
    # A preprocessed directory is streamed from its shards, as `train` does.
    sequences = load_dataset(path, format=format, keep_duplicates=keep_duplicates, stream=True)
    if list(sequences.vocab) != list(vocab):
        raise ValueError(
            f"{path or 'the embedded dataset'} does not give the vocabulary {model} was "
            "trained with; evaluate on the data it was trained on."
        )
    evaluator = Evaluator(loaded, train_config)
    results = {
        split: metric_subset(evaluator.evaluate(sequences, split, protocol=protocol,
                                                exclude_history=exclude_history, seed=seed))
        for split in ("valid", "test")
    }
    metrics = {"protocol": protocol, "exclude_history": bool(exclude_history), **results}
    out = run_dir.write_metrics(Path(model), metrics, name=f"metrics-{protocol}.json")
    _log(f"{protocol} protocol (exclude_history={exclude_history}):\n" + format_table(results))
    _log(f"wrote {out}")
    return 0


__all__ = ["train_command", "evaluate_command"]
