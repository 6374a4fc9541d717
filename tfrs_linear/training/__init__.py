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
    The two subcommands' arguments and entry points.

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

from tfrs_linear.training.commands import (  # noqa: E402
    add_evaluate_arguments,
    add_train_arguments,
    config_from_args,
    run_evaluate,
    run_train,
)
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
    "add_train_arguments",
    "config_from_args",
    "run_train",
    "add_evaluate_arguments",
    "run_evaluate",
]
