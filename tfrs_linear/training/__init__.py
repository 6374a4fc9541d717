"""Training and evaluation: the ``tfrs-linear train`` and ``tfrs-linear evaluate`` commands.

``trainer``
    :class:`Trainer` (the resumable training loop, with documented epoch hooks) and
    :func:`train`.
``evaluator``
    :class:`Evaluator` (one model's compiled query tower, reused by every evaluation),
    :func:`evaluate_model`, :func:`format_table`.
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
* ``logs/`` — TensorBoard logs;
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
from tfrs_linear.training.trainer import Trainer, train  # noqa: E402

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
]
