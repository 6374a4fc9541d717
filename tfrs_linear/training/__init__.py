"""Training and evaluation: the ``tfrs-linear train`` and ``tfrs-linear evaluate`` commands.

``trainer``
    :class:`Trainer` (the resumable training loop, with documented epoch hooks) and
    :func:`train`.
``strategy``
    The ``tf.distribute`` strategies of ``--strategy`` (:func:`make_strategy`),
    ``TF_CONFIG`` parsing, this process's worker index, and whether the train step may be
    one XLA computation under a strategy.
``evaluator``
    :class:`Evaluator` (one model's compiled query tower, reused by every evaluation),
    :func:`evaluate_model`, :func:`format_table`.
``fit_model``
    :class:`FitRetrievalModel`: the model whose ``fit`` validation computes the protocol's
    HR/NDCG/MRR@K, so they reach Keras's logs as ``val_ndcg@10`` etc. (the progress bar,
    ``History``, ``EarlyStopping(monitor="val_ndcg@10", mode="max")``, TensorBoard).
``epoch_data``
    Training batches shuffled per epoch from (seed, epoch): a resumed run sees the same
    batches as an uninterrupted one.
``lazy_adam``
    :class:`LazyAdam`: Adam on the rows a sparse gradient touches (``--optimizer
    lazy_adam``; the item table of a large catalogue under the sampled loss).
``model_scope``
    The dtype policy and the checkpointed random generators a model is built under.
``run_dir``
    The files of a run directory, written atomically.
``commands``
    What ``tfrs-linear train`` and ``evaluate`` run (their flags are in
    :mod:`tfrs_linear.cli`): :func:`train_command`, :func:`evaluate_command`.

A run's output directory holds everything needed to resume, evaluate and export it:

* ``config.json`` — the effective configuration (flat: ModelConfig and TrainConfig);
* ``vocab.txt`` — the vocabulary (line i = index i; 0 = [PAD], 1 = [OOV]);
* ``data.json`` — where the data came from and its statistics;
* ``checkpoints/`` — model + optimizer after every completed epoch, and ``state.json``
  (epoch, best validation NDCG@10, patience counter, history): a second run with the same
  ``--output`` resumes after the last completed epoch;
* ``weights/`` — the best weights by validation NDCG@10 (restored at the end);
* ``logs/`` — TensorBoard logs (``train/epoch_loss``, the epoch mean, and
  ``validation/epoch_ndcg@10`` etc. on one step axis: the epoch, from 0);
* ``metrics.json`` — validation and test metrics of the best epoch (docs/protocol.md).
"""

from tfrs_linear.keras2 import require_keras2

require_keras2()  # training builds TFRS models: tf-keras behind tf.keras first.

from tfrs_linear.training.commands import evaluate_command, train_command  # noqa: E402
from tfrs_linear.training.evaluator import (  # noqa: E402
    SELECTION_METRIC,
    Evaluator,
    evaluate_model,
    format_table,
    make_encode_fn,
)
from tfrs_linear.training.lazy_adam import LazyAdam  # noqa: E402
from tfrs_linear.training.trainer import Trainer, train  # noqa: E402
from tfrs_linear.training.fit_model import FitRetrievalModel  # noqa: E402,F401

__all__ = [
    "Trainer",
    "train",
    "Evaluator",
    "evaluate_model",
    "format_table",
    "make_encode_fn",
    "SELECTION_METRIC",
    "train_command",
    "evaluate_command",
    "LazyAdam",
]
