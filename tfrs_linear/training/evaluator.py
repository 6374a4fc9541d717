"""Evaluating a trained model on a data split, by the protocol (docs/protocol.md).

:class:`Evaluator` owns one model's compiled query tower, so that every evaluation of
that model (each epoch's validation, the final valid and test scores) reuses one trace
and one XLA compilation. :func:`evaluate_model` is the one-off form.
"""

import tensorflow as tf

from tfrs_linear import evaluation
from tfrs_linear.data.datasets import evaluation_batches

# The metric that selects the best epoch (and drives early stopping).
SELECTION_METRIC = "ndcg@10"


def make_encode_fn(model, xla):
    """The model's query tower, ``ids [B, max_len] -> [B, d]``, as a new ``tf.function``
    (XLA-compiled if ``xla``). Each call makes a new function, traced and compiled at its
    first use: keep it (as :class:`Evaluator` does) to evaluate a model more than once.
    A model with ``positions="from_start"`` takes the batches' ``offsets`` as a second
    argument (:func:`uses_offsets`)."""
    if uses_offsets(model):
        return tf.function(lambda ids, offsets: model.encode(ids, training=False,
                                                             offsets=offsets),
                           jit_compile=bool(xla))
    return tf.function(lambda ids: model.encode(ids, training=False), jit_compile=bool(xla))


def uses_offsets(model):
    """Whether ``model``'s query tower needs the rows' ``offsets`` (positions counted from
    the user's first event)."""
    return model.config.positions == "from_start"


class Evaluator:
    """Evaluates one model by the protocol, one batch of users at a time.

    It compiles the model's query tower once (:func:`make_encode_fn`) and reuses it for
    every split, protocol and call.

    Args:
        model: a :class:`~tfrs_linear.models.SequentialRetrievalModel`; its
            ``config.max_len`` sets the padded history length.
        train_config: the :class:`~tfrs_linear.config.TrainConfig` whose ``xla``,
            ``eval_batch_size`` and ``exclude_history`` (the default) apply.
    """

    def __init__(self, model, train_config):
        self.model = model
        self.train_config = train_config
        self.encode_fn = make_encode_fn(model, train_config.xla)

    def evaluate(self, data, split, protocol="full", exclude_history=None, seed=0):
        """Metrics ``{"hr@5": ..., "ndcg@10": ..., ...}`` of ``split`` (``"valid"`` or
        ``"test"``) of ``data`` (a :class:`~tfrs_linear.data.SequenceData`) under
        ``protocol``; ``exclude_history=None`` takes the train config's."""
        if exclude_history is None:
            exclude_history = self.train_config.exclude_history
        batches = evaluation_batches(data, split, self.model.config.max_len,
                                     self.train_config.eval_batch_size)
        return evaluation.evaluate(
            self.encode_fn,
            self.model.item_embeddings(),
            batches,
            protocol=protocol,
            exclude_history=exclude_history,
            popularity=data.item_popularity,
            seed=seed,
            with_offsets=uses_offsets(self.model),
        )


def evaluate_model(model, data, split, train_config, protocol="full", exclude_history=None, seed=0):
    """One evaluation of ``model`` (see :meth:`Evaluator.evaluate`); it compiles the query
    tower for this call alone: use an :class:`Evaluator` to evaluate a model repeatedly."""
    return Evaluator(model, train_config).evaluate(
        data, split, protocol=protocol, exclude_history=exclude_history, seed=seed
    )


def metric_subset(metrics):
    """The ``"name@k"`` metrics of an evaluation result, as Python floats."""
    return {k: float(v) for k, v in metrics.items() if "@" in k}


def format_table(results):
    """A plain-text table of ``{"valid": metrics, "test": metrics}``."""
    keys = [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in evaluation.KS]
    lines = ["split  " + " ".join(f"{k:>8}" for k in keys)]
    for split, metrics in results.items():
        lines.append(f"{split:<6} " + " ".join(f"{metrics[k]:8.4f}" for k in keys))
    return "\n".join(lines)


__all__ = ["Evaluator", "evaluate_model", "make_encode_fn", "uses_offsets", "metric_subset", "format_table",
           "SELECTION_METRIC"]
