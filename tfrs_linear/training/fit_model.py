"""The retrieval model as Keras ``fit`` sees it: the epoch's mean loss and the protocol's
validation metrics in Keras' ``logs``.

:class:`FitRetrievalModel` is a :class:`~tfrs_linear.models.SequentialRetrievalModel`
(same weights, same checkpoints keys, same ``config.json``) whose ``train_step`` and
``test_step`` report what a Keras user expects:

* ``train_step``: ``logs["loss"]`` is the running mean of the epoch's batch losses (what
  the progress bar shows, what ``History`` and TensorBoard record at the epoch's end,
  not the last batch's). The gradient goes through ``optimizer.minimize`` with the tape,
  so a ``LossScaleOptimizer`` (``mixed_float16``) scales the loss and unscales the
  gradients.
* ``test_step``: on the batches of :func:`tfrs_linear.data.evaluation_batches` it ranks
  each user's target among the whole catalogue exactly as
  :func:`tfrs_linear.evaluation.evaluate` does under protocol ``"full"`` (pessimistic
  ties, padding and OOV never ranked, the history removed when ``exclude_history``) and
  averages HR/NDCG/MRR@K over the real users in float64. Passed as ``fit``'s
  ``validation_data``, they reach ``logs`` as ``val_hr@10``, ``val_ndcg@10``, ... before
  any callback runs, so the progress bar, ``History``, TensorBoard and stock callbacks
  (``EarlyStopping(monitor="val_ndcg@10", mode="max")``, ``ModelCheckpoint``) see them::

      model = FitRetrievalModel(model_config, data.num_items)
      model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
      model.fit(training_dataset(data, max_len, 128), epochs=30,
                validation_data=evaluation_batches(data, "valid", max_len, 256),
                callbacks=[tf.keras.callbacks.EarlyStopping(
                    monitor="val_ndcg@10", mode="max", patience=5,
                    restore_best_weights=True)])

The sampled protocols (``pop100``, ``uniform100``) draw their negatives in NumPy: they
stay with :class:`~tfrs_linear.training.Evaluator`.
"""

import tensorflow as tf

from tfrs_linear import evaluation
from tfrs_linear.models.retrieval import SequentialRetrievalModel

# The metrics of the validation logs, in this order (``val_`` + these keys).
METRIC_NAMES = tuple(f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in evaluation.KS)


def metric_values(ranks, k):
    """Per-user ``(hr, ndcg, mrr)`` at ``k`` of 1-based ``ranks`` (float64), the
    definitions of :func:`tfrs_linear.evaluation.metrics_from_ranks`."""
    r = tf.cast(ranks, tf.float64)
    hit = r <= k
    zero = tf.zeros_like(r)
    ndcg = tf.where(hit, 1.0 / (tf.math.log(r + 1.0) / tf.math.log(tf.constant(2.0, tf.float64))), zero)
    return tf.cast(hit, tf.float64), ndcg, tf.where(hit, 1.0 / tf.maximum(r, 1.0), zero)


class FitRetrievalModel(SequentialRetrievalModel):
    """A :class:`~tfrs_linear.models.SequentialRetrievalModel` whose ``fit`` logs the
    epoch's mean loss and, on ``validation_data``, the protocol's metrics (module
    docstring).

    Args:
        config: the :class:`~tfrs_linear.config.ModelConfig`.
        vocab_size: the vocabulary size.
        exclude_history: remove each user's history from the validation ranking
            (``TrainConfig.exclude_history``).
        **kwargs: ``tfrs.Model`` arguments.
    """

    def __init__(self, config, vocab_size, exclude_history=False, **kwargs):
        super().__init__(config, vocab_size, **kwargs)
        self.exclude_history = bool(exclude_history)
        self._make_metrics()

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _make_metrics(self):
        # Not checkpoint dependencies: the weights files stay those of a
        # SequentialRetrievalModel. `metrics` lists them, so Keras resets them at every
        # epoch and every evaluation.
        self._loss_tracker = tf.keras.metrics.Mean(name="loss")
        self._protocol_metrics = [tf.keras.metrics.Mean(name=name, dtype=tf.float64)
                                  for name in METRIC_NAMES]

    @property
    def metrics(self):
        return super().metrics + [self._loss_tracker] + self._protocol_metrics

    def train_step(self, inputs):
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            total = loss + tf.add_n([tf.reduce_sum(x) for x in self.losses] or [tf.zeros([])])
        self.optimizer.minimize(total, self.trainable_variables, tape=tape)
        self._loss_tracker.update_state(loss)
        return {"loss": self._loss_tracker.result()}

    def test_step(self, batch):
        """The protocol's metrics of one batch of :func:`~tfrs_linear.data.evaluation_batches`
        (running means over the evaluation)."""
        users = self.encode(batch["inputs"], training=False, offsets=self.position_offsets(batch))
        scores = tf.matmul(users, self.item_embeddings(), transpose_b=True)
        exclude = evaluation.history_mask(batch["history"], self.vocab_size) if self.exclude_history else None
        ranks = evaluation.ranks(scores, batch["targets"], exclude)
        weights = tf.cast(batch["weights"], tf.float64)
        by_name = {m.name: m for m in self._protocol_metrics}
        for k in evaluation.KS:
            for name, values in zip(("hr", "ndcg", "mrr"), metric_values(ranks, k)):
                by_name[f"{name}@{k}"].update_state(values, sample_weight=weights)
        return {name: by_name[name].result() for name in METRIC_NAMES}


__all__ = ["FitRetrievalModel", "METRIC_NAMES", "metric_values"]
