"""Training and evaluation: the ``tfrs-linear train`` and ``tfrs-linear evaluate`` commands.

A run's output directory holds everything needed to resume, evaluate and export it:

* ``config.json`` — the effective :class:`~tfrs_linear.config.ModelConfig`;
* ``vocab.txt`` — the vocabulary (line i = index i; 0 = [PAD], 1 = [OOV]);
* ``data.json`` — where the data came from and its statistics;
* ``checkpoints/`` — model + optimizer after every completed epoch, and ``state.json``
  (epoch, best validation NDCG@10, patience counter, history): a second run with the same
  ``--output`` resumes after the last completed epoch;
* ``weights/`` — the best weights by validation NDCG@10 (restored at the end);
* ``logs/`` — TensorBoard logs;
* ``metrics.json`` — validation and test metrics of the best epoch (protocol.md).
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrs_linear import data as data_lib
from tfrs_linear import evaluation
from tfrs_linear.config import ModelConfig
from tfrs_linear.models import SequentialRetrievalModel, load_model_dir

SELECTION_METRIC = "ndcg@10"
# Fields that may differ when a run is resumed (they do not change the model).
_RESUMABLE = {"epochs", "patience", "eval_batch_size", "xla", "exclude_history"}


def _log(message):
    print(message, flush=True)


def _strategy(name):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}; use 'default' or 'mirrored'")


def _xla_train_step_supported(strategy):
    """tf-keras cannot compile a whole train step under MirroredStrategy on CPU replicas
    (``merge_call`` inside XLA): fall back to graph mode there."""
    if strategy.num_replicas_in_sync <= 1:
        return True
    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def make_encode_fn(model, xla):
    """The model's query tower as a (cached) compiled function: one trace and one XLA
    compilation per model, not one per evaluation."""
    cache = model.__dict__.setdefault("_tfrs_linear_encode_fns", {})
    key = bool(xla)
    if key not in cache:
        cache[key] = tf.function(
            lambda ids: model.encode(ids, training=False), jit_compile=key
        )
    return cache[key]


def evaluate_model(model, data, split, config, protocol="full", exclude_history=None, seed=0):
    batches = data_lib.evaluation_batches(data, split, config.max_len, config.eval_batch_size)
    return evaluation.evaluate(
        make_encode_fn(model, config.xla),
        model.item_embeddings(),
        batches,
        protocol=protocol,
        exclude_history=config.exclude_history if exclude_history is None else exclude_history,
        popularity=data.item_popularity,
        seed=seed,
    )


def format_table(results):
    """A plain-text table of ``{"valid": metrics, "test": metrics}``."""
    keys = [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in evaluation.KS]
    lines = ["split  " + " ".join(f"{k:>8}" for k in keys)]
    for split, metrics in results.items():
        lines.append(f"{split:<6} " + " ".join(f"{metrics[k]:8.4f}" for k in keys))
    return "\n".join(lines)


def _metric_subset(metrics):
    return {k: float(v) for k, v in metrics.items() if "@" in k}


class _EpochEnd(tf.keras.callbacks.Callback):
    """Validation NDCG@10, checkpoint, best weights and early stopping after each epoch."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer

    def on_epoch_end(self, epoch, logs=None):
        self.trainer.end_epoch(epoch, logs or {})
        if self.trainer.state["wait"] > self.trainer.config.patience:
            self.model.stop_training = True


class Trainer:
    """Trains a :class:`SequentialRetrievalModel` into an output directory (resumable)."""

    def __init__(self, config, data, output, strategy="default", verbose=None, steps_per_epoch=None):
        self.config = config.resolved()  # replace() validates
        self.data = data
        self.output = Path(output)
        self.strategy = _strategy(strategy)
        self.verbose = (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
        self.steps_per_epoch = steps_per_epoch
        self.state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0, "history": []}

    # -- setup ----------------------------------------------------------------------
    def _check_output(self):
        self.output.mkdir(parents=True, exist_ok=True)
        existing = self.output / "config.json"
        if existing.exists():
            old = ModelConfig.load_saved(existing).to_dict()
            new = self.config.to_dict()
            diff = sorted(k for k in new if k not in _RESUMABLE and old.get(k) != new[k])
            if diff:
                raise ValueError(
                    f"{self.output} holds a run with a different configuration "
                    f"({', '.join(f'{k}: {old.get(k)!r} -> {new[k]!r}' for k in diff)}); "
                    "use another --output, or the same flags to resume it."
                )
            old_vocab = data_lib.load_vocabulary(self.output / "vocab.txt")
            if old_vocab != list(self.data.vocab):
                raise ValueError(
                    f"{self.output} was trained on other data (its vocabulary differs); "
                    "use another --output."
                )

    def _write_metadata(self):
        self.config.save(self.output / "config.json")
        data_lib.save_vocabulary(self.data.vocab, self.output / "vocab.txt")
        source = str(self.data.source)
        if source and Path(source).exists():
            source = str(Path(source).resolve())  # `evaluate` may run from elsewhere
        info = {
            "source": source,
            "num_users": int(self.data.num_users),
            "num_items": int(self.data.num_items - 2),
            "num_interactions": int(self.data.num_interactions),
            "dropped_users": int(self.data.dropped_users),
        }
        (self.output / "data.json").write_text(json.dumps(info, indent=2) + "\n")
        return info

    def _build(self):
        with self.strategy.scope():
            self.model = SequentialRetrievalModel(self.config, self.data.num_items).build_all()
            optimizer = tf.keras.optimizers.Adam(self.config.learning_rate)
            jit = self.config.xla and _xla_train_step_supported(self.strategy)
            if self.config.xla and not jit:
                _log(
                    "note: XLA is off for the train step: tf-keras cannot compile a whole "
                    "train step under MirroredStrategy on CPU replicas (merge_call inside "
                    "XLA). It stays on for evaluation."
                )
            self.model.compile(optimizer=optimizer, jit_compile=jit)
            optimizer.build(self.model.trainable_variables)
            self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.checkpoint = tf.train.Checkpoint(
                model=self.model, optimizer=optimizer, epoch=self.epoch_var
            )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.output / "checkpoints"), max_to_keep=2
        )

    def _restore(self):
        state_path = self.output / "checkpoints" / "state.json"
        if self.manager.latest_checkpoint and state_path.exists():
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            self.state = json.loads(state_path.read_text())
            if int(self.epoch_var.numpy()) != self.state["epoch"]:
                raise RuntimeError(
                    f"{self.output}: the checkpoint (epoch {int(self.epoch_var.numpy())}) and "
                    f"state.json (epoch {self.state['epoch']}) disagree; remove "
                    f"{self.output / 'checkpoints'} to restart."
                )
            _log(f"resuming {self.output} after epoch {self.state['epoch']} "
                 f"(best valid {SELECTION_METRIC} {self.state['best']:.4f} at epoch {self.state['best_epoch']})")

    # -- per epoch --------------------------------------------------------------------
    def end_epoch(self, epoch, logs):
        t0 = time.time()
        valid = evaluate_model(self.model, self.data, "valid", self.config)
        score = float(valid[SELECTION_METRIC])
        record = {"epoch": epoch + 1, "loss": float(logs.get("loss", np.nan)),
                  "valid": _metric_subset(valid), "eval_seconds": round(time.time() - t0, 2)}
        self.state["history"].append(record)
        self.state["epoch"] = epoch + 1
        if score > self.state["best"]:
            self.state.update(best=score, best_epoch=epoch + 1, wait=0)
            self._save_best()
        else:
            self.state["wait"] += 1
        self.epoch_var.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        tmp = self.output / "checkpoints" / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.output / "checkpoints" / "state.json")
        with self.writer.as_default():
            for k, v in valid.items():
                if "@" in k:
                    tf.summary.scalar(f"valid/{k}", v, step=epoch + 1)
        _log(f"epoch {epoch + 1}: loss {record['loss']:.4f}  valid {SELECTION_METRIC} {score:.4f}  "
             f"hr@10 {valid['hr@10']:.4f}  (best {self.state['best']:.4f} at epoch "
             f"{self.state['best_epoch']}, patience {self.state['wait']}/{self.config.patience})")

    def _save_best(self):
        weights = self.output / "weights"
        tmp = self.output / "weights.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_weights(str(tmp / "model"))
        if weights.exists():
            shutil.rmtree(weights)
        os.replace(tmp, weights)

    # -- main -----------------------------------------------------------------------
    def run(self):
        self._check_output()
        info = self._write_metadata()
        _log(f"data: {info['source']}: {info['num_users']} users, {info['num_items']} items, "
             f"{info['num_interactions']} events; {info['dropped_users']} users with fewer than "
             "3 events dropped")
        tf.keras.utils.set_random_seed(self.config.seed)
        self._build()
        self._restore()
        self.writer = tf.summary.create_file_writer(str(self.output / "logs" / "validation"))
        done = self.state["epoch"] >= self.config.epochs or self.state["wait"] > self.config.patience
        if not done:
            dataset = data_lib.training_dataset(
                self.data, self.config.max_len, self.config.batch_size,
                regime=self.config.regime, seed=self.config.seed + self.state["epoch"],
            )
            if self.steps_per_epoch:
                dataset = dataset.take(self.steps_per_epoch)
            _log(f"training {self.config.attention} ({self.config.regime}/{self.config.loss}, "
                 f"max_len {self.config.max_len}, xla {self.config.xla}) for up to "
                 f"{self.config.epochs} epochs, {int(dataset.cardinality())} batches each")
            callbacks = [
                tf.keras.callbacks.TensorBoard(log_dir=str(self.output / "logs"), profile_batch=0),
                _EpochEnd(self),
            ]
            self.model.fit(dataset, epochs=self.config.epochs, initial_epoch=self.state["epoch"],
                           callbacks=callbacks, verbose=self.verbose)
        if not (self.output / "weights").exists():
            raise RuntimeError(f"{self.output}: no epoch completed, nothing to evaluate")
        self.model.load_weights(str(self.output / "weights" / "model")).expect_partial()
        results = {
            "valid": _metric_subset(evaluate_model(self.model, self.data, "valid", self.config)),
            "test": _metric_subset(evaluate_model(self.model, self.data, "test", self.config)),
        }
        metrics = {"protocol": "full", "exclude_history": bool(self.config.exclude_history),
                   "best_epoch": self.state["best_epoch"], "epochs_run": self.state["epoch"],
                   **results}
        (self.output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _log(f"best epoch {self.state['best_epoch']} (full ranking, exclude_history="
             f"{self.config.exclude_history}):\n" + format_table(results))
        return metrics


def train(config, data, output, **kwargs):
    """Trains ``config`` on ``data`` (a :class:`~tfrs_linear.data.SequenceData`) into
    ``output``; returns the metrics dict also written to ``output/metrics.json``."""
    return Trainer(config, data, output, **kwargs).run()


# ------------------------------------------------------------------------------ CLI
def add_train_arguments(p):
    p.add_argument("--data", help="interactions file (default: the embedded synthetic dataset)")
    p.add_argument("--format", default="auto", choices=data_lib.FORMATS)
    p.add_argument("--config", help="a JSON configuration (see models/); flags override it")
    p.add_argument("--attention", choices=("softmax", "linrec", "elastic"))
    p.add_argument("--normalization", choices=("paper", "token"))
    p.add_argument("--regime", choices=("all", "last"))
    p.add_argument("--loss", choices=("full", "sampled"))
    p.add_argument("--num-negatives", type=int,
                   help="shared log-uniform negatives per batch of the sampled loss")
    p.add_argument("--max-len", type=int)
    p.add_argument("--d-model", type=int)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--num-interests", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-xla", action="store_true", help="train without jit_compile")
    p.add_argument("--exclude-history", action="store_true",
                   help="remove history items from the ranking (protocol.md)")
    p.add_argument("--strategy", default="default", choices=("default", "mirrored"),
                   help="tf.distribute strategy (mirrored: all local GPUs)")
    p.add_argument("--steps-per-epoch", type=int, help="cap batches per epoch (quick runs)")
    p.add_argument("--output", required=True, help="the run's directory (resumable)")


def config_from_args(args):
    config = ModelConfig.load(args.config) if args.config else ModelConfig()
    overrides = {
        name: getattr(args, name, None)
        for name in ("attention", "normalization", "regime", "loss", "max_len", "d_model",
                     "num_layers", "num_heads", "num_interests", "dropout", "epochs",
                     "batch_size", "learning_rate", "patience", "seed", "num_negatives")
    }
    if getattr(args, "no_xla", False):
        overrides["xla"] = False
    if getattr(args, "exclude_history", False):
        overrides["exclude_history"] = True
    return config.replace(**overrides)


def run_train(args):
    config = config_from_args(args)
    data = data_lib.load_dataset(args.data, format=args.format)
    train(config, data, args.output, strategy=args.strategy, steps_per_epoch=args.steps_per_epoch)
    return 0


def add_evaluate_arguments(p):
    p.add_argument("--model", required=True, help="a directory written by `tfrs-linear train`")
    p.add_argument("--data", help="interactions file (default: the one the model was trained on)")
    p.add_argument("--format", default="auto", choices=data_lib.FORMATS)
    p.add_argument("--protocol", default="full", choices=evaluation.PROTOCOLS)
    p.add_argument("--exclude-history", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled protocols")


def _training_data_source(model_dir):
    info = json.loads((Path(model_dir) / "data.json").read_text())
    source = info.get("source")
    return None if source in (None, "None", "synthetic", "") or source.startswith("synthetic") else source


def run_evaluate(args):
    model, config, vocab = load_model_dir(args.model)
    path = args.data if args.data else _training_data_source(args.model)
    data = data_lib.load_dataset(path, format=args.format)
    if list(data.vocab) != list(vocab):
        raise ValueError(
            f"{path or 'the embedded dataset'} does not give the vocabulary {args.model} was "
            "trained with; evaluate on the data it was trained on."
        )
    results = {
        split: _metric_subset(
            evaluate_model(model, data, split, config, protocol=args.protocol,
                           exclude_history=args.exclude_history, seed=args.seed)
        )
        for split in ("valid", "test")
    }
    metrics = {"protocol": args.protocol, "exclude_history": bool(args.exclude_history), **results}
    out = Path(args.model) / f"metrics-{args.protocol}.json"
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    _log(f"{args.protocol} protocol (exclude_history={args.exclude_history}):\n" + format_table(results))
    _log(f"wrote {out}")
    return 0


__all__ = ["Trainer", "train", "evaluate_model", "format_table"]
