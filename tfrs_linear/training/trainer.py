"""The training loop: :class:`Trainer` trains a model into a resumable run directory.

Each epoch: Keras ``fit`` trains it (the train step XLA-compiled) and validates it
in its own validation (:class:`~tfrs_linear.training.fit_model.FitRetrievalModel`:
``val_hr@10``, ``val_ndcg@10``, ... in Keras' logs, by the protocol's full ranking);
then a checkpoint (model with its dropout and sampler RNG state, optimizer with its step)
and ``state.json``, the best weights kept, early stopping with ``patience``. Epoch ``e``
trains on an order fixed by ``(seed, e)`` (:mod:`~tfrs_linear.training.epoch_data`), so
a run resumed after an interruption ends exactly as the uninterrupted run. At the end
the best weights are restored and scored on validation and test (``metrics.json``, with
the per-epoch ``history``: the training clock and the validation metrics). A ``full``-loss
run whose logits cannot fit in memory is refused before it starts
(:func:`~tfrs_linear.models.retrieval.check_full_loss_fits`). Nothing is written to the
output directory before the data and the configuration were found valid. The files are
those of :mod:`tfrs_linear.training.run_dir`.
"""

import numbers
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.data.buckets import length_bucketed, regroups
from tfrs_linear.data.datasets import (evaluation_batches, targets_per_example,
                                       training_dataset)
from tfrs_linear.data.sharded import ShardedSequences
from tfrs_linear.models.model_dir import WEIGHTS_DIR
from tfrs_linear.models.retrieval import check_full_loss_fits
from tfrs_linear.training import epoch_data, run_dir
from tfrs_linear.training.evaluator import SELECTION_METRIC, Evaluator, format_table, metric_subset
from tfrs_linear.training.fit_model import FitRetrievalModel
from tfrs_linear.training.lr_schedule import learning_rate
from tfrs_linear.training.model_scope import (make_optimizer, model_scope, random_generators,
                                              train_precision)
# The strategy helpers lived here before strategy.py: their names stay importable from here.
from tfrs_linear.training.strategy import (STRATEGY_NAMES, barrier, loopback_tf_configs,
                                           make_strategy, parse_tf_config, worker_of,
                                           xla_train_step_supported)


def _log(message):
    print(message, flush=True)


class TrainingClock:
    """Seconds of training since the command started: evaluation excluded, continued
    across resumes.

    ``started`` is the ``time.monotonic()`` reading when the command started;
    :meth:`resume` adds the seconds of the run's earlier processes (the clock of its last
    completed epoch, from ``state.json``), :meth:`exclude` removes an evaluation's."""

    def __init__(self, started=None):
        self.started = time.monotonic() if started is None else float(started)
        self.offset = 0.0
        self.excluded = 0.0

    def resume(self, seconds):
        self.offset = float(seconds)

    def exclude(self, seconds):
        self.excluded += float(seconds)

    def seconds(self):
        return self.offset + time.monotonic() - self.started - self.excluded


class _EpochEnd(tf.keras.callbacks.Callback):
    """Hands each Keras epoch to the :class:`Trainer`: :meth:`Trainer.on_epoch_end` when
    its training is done (fit's validation starts), :meth:`Trainer.end_epoch` after the
    validation; stops early. The training clock stops from the end of the epoch's
    training to the end of its validation."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer
        self.epoch = 0
        self.stopped = self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_test_begin(self, logs=None):
        self.trainer.epoch_seconds = self.trainer.clock.seconds()
        self.stopped = time.monotonic()
        loss = {m.name: m for m in self.model.metrics}["loss"].result()
        self.trainer.on_epoch_end(self.epoch + 1, {"loss": float(loss)})
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        self.trainer.clock.exclude(now - self.stopped)
        self.trainer.end_epoch(epoch, logs or {}, eval_seconds=now - self.started)
        if self.trainer.state["wait"] > self.trainer.train_config.patience:
            self.model.stop_training = True


class _ReplicaMeans(tf.keras.callbacks.Callback):
    """Under several replicas, tf-keras reduces the outputs of a custom ``train_step`` /
    ``test_step`` by summing the replicas' (``reduce_per_replica``, ``"sum"``): the
    epoch's ``loss`` and ``val_*`` would be ``num_replicas`` times the real ones. Given
    first to ``fit``, this replaces them in the epoch's logs with the metrics'
    cross-replica results (every replica's updates), so the later callbacks
    (TensorBoard, the Trainer's, the user's) see the global values. The loss is read
    when validation starts (``evaluate`` resets the metrics)."""

    def __init__(self):
        super().__init__()
        self.loss = None

    def _metrics(self):
        return {m.name: m for m in self.model.metrics}

    def on_epoch_begin(self, epoch, logs=None):
        self.loss = None

    def on_test_begin(self, logs=None):
        if self.loss is None:  # fit's validation, not a user's evaluate
            self.loss = float(self._metrics()["loss"].result())

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        metrics = self._metrics()
        if "loss" in logs:
            logs["loss"] = self.loss if self.loss is not None else float(metrics["loss"].result())
        for key in [k for k in logs if k.startswith("val_") and k[len("val_"):] in metrics]:
            logs[key] = float(metrics[key[len("val_"):]].result())


class Trainer:
    """Trains a :class:`~tfrs_linear.models.SequentialRetrievalModel` into an output
    directory, resumably.

    Run the same training again with the same ``output`` after an interruption (a clean
    stop or a kill) and it resumes after the last completed epoch, and ends with the
    metrics and best epoch of the run that went straight through (on CPU; the
    configuration may differ only in ``epochs``, ``patience``, ``eval_batch_size``,
    ``xla`` and ``exclude_history``).

    Keras' ``logs`` carry the epoch's mean ``loss`` and the validation metrics
    ``val_hr@10``, ``val_ndcg@10``, ... (see
    :class:`~tfrs_linear.training.fit_model.FitRetrievalModel`): the progress bar,
    TensorBoard (``logs/train`` and ``logs/validation``, one step per epoch) and the
    ``callbacks`` given here see them.

    Hooks: a subclass may override these methods (the defaults do nothing); ``epoch``
    counts from 1, as in ``state.json`` and the logs.

    * :meth:`on_train_begin` ``(state)``: once per :meth:`run`, after the run directory's
      checkpoint was restored, before the first epoch of this run trains.
    * :meth:`on_epoch_end` ``(epoch, logs)``: the epoch has finished training, nothing
      of its bookkeeping (validation, checkpoint, ``state.json``) has run yet.
    * :meth:`on_epoch_saved` ``(epoch, record)``: the epoch's bookkeeping is done and on
      disk; the next epoch (if any) trains right after.

    So the time from :meth:`on_train_begin` or :meth:`on_epoch_saved` to the next
    :meth:`on_epoch_end` is the training of one epoch alone (``scripts/quality_ml100k.py``
    records it this way, across resumes). The Trainer's own clock (:class:`TrainingClock`)
    counts from the command's start instead, validations excluded, and is recorded per
    epoch in ``state.json`` and in ``metrics.json``'s ``history`` (``seconds``).

    Args:
        model_config: the model's :class:`~tfrs_linear.config.ModelConfig`.
        train_config: the run's :class:`~tfrs_linear.config.TrainConfig` (its
            ``precision`` sets the dtype policy the model is built with; the global
            policy is restored afterwards).
        data: a :class:`~tfrs_linear.data.SequenceData`.
        output: the run directory.
        strategy: a name of :data:`STRATEGY_NAMES` (``"mirrored"``:
            ``tf.distribute.MirroredStrategy``; ``"multiworker"``: see below) or a
            ``tf.distribute.Strategy``.
        verbose: Keras ``fit`` verbosity; ``None``: 1 on a terminal, else 2.
        steps_per_epoch: a cap on the batches per epoch (quick runs), ``>= 1``.
        callbacks: more Keras callbacks for ``fit`` (they run after the Trainer's own).
        started: the ``time.monotonic()`` reading when the command started, the zero of
            the training clock (``metrics.json``'s ``history``); default: when
            :meth:`run` is called. ``tfrs-linear train`` passes its own start, so that
            loading the data counts.

    Multi-worker (``MultiWorkerMirroredStrategy``, :func:`make_strategy`): every worker
    runs the same Trainer with the same ``output``, a path all of them can read (a
    shared file system or ``gs://``). ``batch_size`` is the global batch, split across
    the replicas. The input is sharded by file (:meth:`ShardedSequences.shard
    <tfrs_linear.data.sharded.ShardedSequences.shard>`, each worker reads its own
    shards) when the data is a preprocessed directory with at least as many shards as
    workers, else by data (every worker reads everything and keeps its part of each
    global batch: the same global batches as one worker). Only the chief (worker 0)
    writes ``output``; the others write their checkpoints, weights and logs (TensorFlow
    saves on every worker) into a temporary directory removed at the end. All workers
    restore from ``output``'s checkpoint, so starting all of them again resumes.
    """

    def __init__(self, model_config, train_config, data, output, strategy="default", verbose=None,
                 steps_per_epoch=None, callbacks=None, started=None):
        if not isinstance(model_config, ModelConfig) or not isinstance(train_config, TrainConfig):
            raise TypeError(
                "Trainer(model_config, train_config, data, output, ...) takes a ModelConfig and "
                f"a TrainConfig, got {type(model_config).__name__} and "
                f"{type(train_config).__name__} (see tfrs_linear.config.load_config)"
            )
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, numbers.Integral)
                                            or isinstance(steps_per_epoch, bool)
                                            or steps_per_epoch < 1):
            raise ValueError(
                f"steps_per_epoch must be a whole number of batches >= 1 (or None for whole "
                f"epochs), got {steps_per_epoch!r}")
        self.model_config = model_config.resolved()  # replace() validates
        self.train_config = train_config.validate()
        self.precision = train_precision(self.train_config)
        self.data = data
        self.output = Path(output)
        self.strategy = (strategy if isinstance(strategy, tf.distribute.Strategy)
                         else make_strategy(strategy))
        self.worker, self.num_workers = worker_of(self.strategy)
        self.is_chief = self.worker == 0
        self.write_dir = self.output  # a temporary directory on the other workers (run)
        self.verbose = (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
        self.steps_per_epoch = steps_per_epoch
        self.callbacks = list(callbacks or [])
        self.started = started
        self.clock = TrainingClock(started)
        self.epoch_seconds = None  # the clock at the end of the current epoch's training
        self.state = run_dir.new_state()

    # -- hooks ------------------------------------------------------------------------
    def on_train_begin(self, state):
        """Called once per :meth:`run` after restoring; ``state`` is the run's state
        (``state["epoch"]`` epochs completed, 0 for a new run). Does nothing by default."""

    def on_epoch_end(self, epoch, logs):
        """Called when epoch ``epoch`` has finished training, before its validation,
        checkpoint and ``state.json``; ``logs["loss"]`` is the epoch's mean loss. Does
        nothing by default."""

    def on_epoch_saved(self, epoch, record):
        """Called after epoch ``epoch``'s validation, checkpoint and ``state.json``;
        ``record`` is its history entry (``loss``, ``valid`` metrics, ``eval_seconds``).
        Does nothing by default."""

    # -- setup ------------------------------------------------------------------------
    def _write_metadata(self):
        """The first files of the run (the chief only), written once the data, the model
        and ``output`` were found valid, after every worker has read ``output``."""
        barrier(self.strategy)
        if self.is_chief:
            self.output.mkdir(parents=True, exist_ok=True)
            run_dir.write_metadata(self.output, self.model_config, self.train_config, self.data)
            _log(f"data: {self.data.describe()}")

    def _build(self):
        """The model, its optimizer and the checkpoint (nothing is written)."""
        with self.strategy.scope(), model_scope(self.precision):
            self.model = FitRetrievalModel(
                self.model_config, self.data.num_items,
                exclude_history=self.train_config.exclude_history,
                sampler_seed=self.train_config.seed,
            ).build_all()
            if regroups(self.model_config.max_len, self.train_config.length_buckets,
                        self.train_config.bucket_window):
                # Batches regrouped by length: every target weighs the same (the model's
                # compute_loss).
                self.model.targets_per_row = targets_per_example(
                    self.data, self.model_config.max_len, self.model_config.regime)
            optimizer = make_optimizer(learning_rate(self.train_config, self.steps),
                                       self.precision, self.train_config.optimizer)
            jit = self.train_config.xla and xla_train_step_supported(self.strategy)
            if self.train_config.xla and not jit:
                _log(
                    "note: XLA is off for the train step: tf-keras cannot compile a whole "
                    f"train step under {type(self.strategy).__name__} on CPU replicas "
                    "(merge_call inside XLA). It stays on for evaluation."
                )
            self.model.compile(optimizer=optimizer, jit_compile=jit)
            optimizer.build(self.model.trainable_variables)
            self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.checkpoint = tf.train.Checkpoint(
                model=self.model, optimizer=optimizer, epoch=self.epoch_var,
                rng=random_generators(self.model),
            )
        self.evaluator = Evaluator(self.model, self.train_config)

    def _restore(self):
        """Restores the checkpoint of ``output`` (every worker reads the chief's); saves
        go to ``write_dir``."""
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.write_dir / run_dir.CHECKPOINTS_DIR), max_to_keep=2
        )
        latest = tf.train.latest_checkpoint(str(self.output / run_dir.CHECKPOINTS_DIR))
        saved = run_dir.read_state(self.output)
        if not (latest and saved is not None and saved["epoch"] > 0):
            return
        checkpoint = self.checkpoint
        keys = tf.train.load_checkpoint(latest).get_variable_to_shape_map()
        saved_rngs = len({key.split("/")[1] for key in keys if key.startswith("rng/")})
        if saved_rngs < len(self.checkpoint.rng):
            # Written before the dropout RNG (none saved) or the sampler's generator (the
            # last one) was checkpointed: resume with the generators it holds.
            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer,
                                             epoch=self.epoch_var,
                                             **({"rng": self.checkpoint.rng[:saved_rngs]}
                                                if saved_rngs else {}))
        checkpoint.restore(latest).assert_existing_objects_matched()
        self.state = saved
        self.clock.resume(run_dir.elapsed_seconds(saved))
        if int(self.epoch_var.numpy()) != self.state["epoch"]:
            raise RuntimeError(
                f"{self.output}: the checkpoint (epoch {int(self.epoch_var.numpy())}) and "
                f"state.json (epoch {self.state['epoch']}) disagree; remove "
                f"{self.output / run_dir.CHECKPOINTS_DIR} to restart."
            )
        _log(f"resuming {self.output} after epoch {self.state['epoch']} "
             f"(best valid {SELECTION_METRIC} {self.state['best']:.4f} at epoch {self.state['best_epoch']})")

    # -- per epoch --------------------------------------------------------------------
    def end_epoch(self, epoch, logs, eval_seconds=0.0):
        """The bookkeeping after Keras epoch ``epoch`` (counted from 0, as Keras does),
        whose ``logs`` hold the training ``loss`` and fit's validation (``val_ndcg@10``,
        ...): the best weights, the checkpoint, ``state.json``, the ``epoch N:`` line and
        :meth:`on_epoch_saved`."""
        valid = {k[len("val_"):]: float(v) for k, v in logs.items()
                 if k.startswith("val_") and "@" in k}
        if SELECTION_METRIC not in valid:
            raise RuntimeError(f"Keras' logs of epoch {epoch + 1} have no val_{SELECTION_METRIC} "
                               f"(got {sorted(logs)}): fit ran without the validation data")
        record = self._record(epoch + 1, logs, valid, eval_seconds)
        self._save_epoch(epoch + 1)
        _log(f"epoch {epoch + 1}: loss {record['loss']:.4f}  valid {SELECTION_METRIC} "
             f"{valid[SELECTION_METRIC]:.4f}  hr@10 {valid['hr@10']:.4f}  (best "
             f"{self.state['best']:.4f} at epoch {self.state['best_epoch']}, patience "
             f"{self.state['wait']}/{self.train_config.patience})")
        self.on_epoch_saved(epoch + 1, record)

    def _record(self, epoch, logs, valid, eval_seconds):
        """Records the epoch in the state; keeps the best weights."""
        score = valid[SELECTION_METRIC]
        seconds = self.clock.seconds() if self.epoch_seconds is None else self.epoch_seconds
        self.epoch_seconds = None
        record = {"epoch": epoch, "loss": float(logs.get("loss", np.nan)), "valid": valid,
                  "seconds": round(seconds, 3), "eval_seconds": round(eval_seconds, 2)}
        self.state["history"].append(record)
        self.state["epoch"] = epoch
        if score > self.state["best"]:
            self.state.update(best=score, best_epoch=epoch, wait=0)
            run_dir.save_best_weights(self.model, self.write_dir)
        else:
            self.state["wait"] += 1
        return record

    def _save_epoch(self, epoch):
        """The checkpoint (model, its RNG state, optimizer) and ``state.json``."""
        self.epoch_var.assign(epoch)
        self.manager.save(checkpoint_number=epoch)  # on every worker (TensorFlow's rule)
        if self.is_chief:
            run_dir.write_state(self.output, self.state)

    # -- main -------------------------------------------------------------------------
    @property
    def finished(self):
        """Whether the run has nothing left to train (epoch cap or early stop)."""
        return (self.state["epoch"] >= self.train_config.epochs
                or self.state["wait"] > self.train_config.patience)

    def _training_input(self, first):
        """What ``fit`` trains on from epoch ``first``: :func:`epoch_data.epochs_dataset`'s
        global batches; with several workers, sharded by file or by data (class
        docstring)."""
        if self.num_workers > 1 and isinstance(self.data, ShardedSequences) \
                and len(self.data.shards) >= self.num_workers:
            return self._file_sharded_input(first)
        dataset = epoch_data.epochs_dataset(self.data, self.model_config, self.train_config,
                                            first, self.steps)
        return _shard_by_data(dataset) if self.num_workers > 1 else dataset

    def _file_sharded_input(self, first):
        """Each worker reads its own shards, ``batch_size / replicas`` examples per
        replica and step, ``steps`` steps per epoch (a worker whose shards hold fewer
        examples than its share starts them again), epoch ``e`` shuffled by
        ``epoch_seed(seed, e)``."""
        replicas, batch = self.strategy.num_replicas_in_sync, self.train_config.batch_size
        if batch % replicas:
            raise ValueError(f"--batch-size {batch} must be a multiple of the {replicas} "
                             "replicas to split it across workers reading their own shards")
        max_len, regime = self.model_config.max_len, self.model_config.regime
        buckets, window = self.train_config.length_buckets, self.train_config.bucket_window
        seed0, steps = epoch_data.epoch_seed(self.train_config.seed, 0), self.steps
        epochs = tf.data.Dataset.range(int(first), int(self.train_config.epochs))

        def per_worker(context):
            shard = self.data.shard(context.num_input_pipelines, context.input_pipeline_id)
            take = steps * (replicas // context.num_input_pipelines)
            shard.lengths  # its counting pass, eagerly (not inside the epochs' graph)

            def one_epoch(epoch):
                seed = tf.cast(epoch, tf.int64) + seed0
                batches = training_dataset(shard, max_len, batch // replicas, regime=regime,
                                           seed=seed).repeat().take(take)
                return length_bucketed(batches, max_len, buckets, seed, window=window)

            return epochs.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)

        return self.strategy.distribute_datasets_from_function(per_worker)

    def _fit(self):
        first = self.state["epoch"]
        dataset = self.training_input
        validation = evaluation_batches(self.data, "valid", self.model_config.max_len,
                                        self.train_config.eval_batch_size)
        if self.num_workers > 1:
            validation = _shard_by_data(validation)
        _log(f"training {self.model_config.attention} ({self.model_config.regime}/"
             f"{self.model_config.loss}, max_len {self.model_config.max_len}, xla "
             f"{self.train_config.xla}, {self.precision}) for up to {self.train_config.epochs} "
             f"epochs, {self.steps} batches each")
        # tf-keras appends its progress bar after the callbacks given to fit: given here
        # before _EpochEnd, Keras' epoch line ends before the "epoch N:" line starts.
        progbar = [tf.keras.callbacks.ProgbarLogger(count_mode="steps")] if self.verbose else []
        replicas = [_ReplicaMeans()] if self.strategy.num_replicas_in_sync > 1 else []
        callbacks = [
            *replicas,
            tf.keras.callbacks.TensorBoard(log_dir=str(self.write_dir / "logs"),
                                           profile_batch=0),
            *progbar,
            _EpochEnd(self),
            *self.callbacks,
        ]
        self.model.fit(dataset, epochs=self.train_config.epochs, initial_epoch=first,
                       steps_per_epoch=self.steps, validation_data=validation,
                       callbacks=callbacks, verbose=self.verbose)

    def _final_metrics(self):
        """Restores the best weights, scores valid and test, writes ``metrics.json`` (the
        chief; every worker scores, from the chief's best weights)."""
        barrier(self.strategy)  # the chief's last weights are written
        if not (self.output / WEIGHTS_DIR).exists():
            raise RuntimeError(f"{self.output}: no epoch completed, nothing to evaluate")
        self.model.load_weights(str(self.output / WEIGHTS_DIR / "model")).expect_partial()
        results = {split: metric_subset(self.evaluator.evaluate(self.data, split))
                   for split in ("valid", "test")}
        exclude_history = self.train_config.exclude_history
        metrics = {"protocol": "full", "exclude_history": bool(exclude_history),
                   "best_epoch": self.state["best_epoch"], "epochs_run": self.state["epoch"],
                   **results, "history": run_dir.metrics_history(self.state)}
        if self.is_chief:
            run_dir.write_metrics(self.output, metrics)
        _log(f"best epoch {self.state['best_epoch']} (full ranking, exclude_history="
             f"{exclude_history}):\n" + format_table(results))
        return metrics

    def run(self):
        """Trains (or resumes) to the end; returns the metrics dict of ``metrics.json``.

        The data and the model are checked (and the model built) before anything is
        written to ``output``: a ``full``-loss configuration whose logits would not fit
        in the host's memory (training on CPU) is refused, naming ``--loss sampled``."""
        if self.started is None:
            self.clock = TrainingClock()
        self.steps = epoch_data.steps_per_epoch(self.data, self.model_config, self.train_config,
                                                self.steps_per_epoch)
        check_full_loss_fits(self.model_config, self.train_config.batch_size, self.data.num_items)
        tf.keras.utils.set_random_seed(self.train_config.seed)
        self._build()
        run_dir.check_resumable(self.output, self.model_config, self.train_config,
                                self.data.vocab)
        if not self.is_chief:
            self.write_dir = Path(tempfile.mkdtemp(prefix=f"tfrs-linear-worker{self.worker}-"))
        try:
            self._restore()
            self.training_input = None if self.finished else self._training_input(self.state["epoch"])
            self._write_metadata()
            self.on_train_begin(self.state)
            if not self.finished:
                self._fit()
            return self._final_metrics()
        finally:
            if not self.is_chief:
                shutil.rmtree(self.write_dir, ignore_errors=True)


def _shard_by_data(dataset):
    """``dataset`` auto-sharded by data: each worker keeps its part of every batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def train(model_config, train_config, data, output, **kwargs):
    """Trains ``model_config`` by ``train_config`` on ``data`` (a
    :class:`~tfrs_linear.data.SequenceData`) into ``output``; returns the metrics dict
    also written to ``output/metrics.json``. ``kwargs``: those of :class:`Trainer`."""
    return Trainer(model_config, train_config, data, output, **kwargs).run()


__all__ = ["Trainer", "TrainingClock", "train", "make_strategy", "parse_tf_config", "worker_of",
           "loopback_tf_configs", "STRATEGY_NAMES"]
