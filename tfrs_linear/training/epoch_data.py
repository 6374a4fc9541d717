"""The training data of a run, epoch by epoch, in an order fixed by ``(seed, epoch)``.

A reshuffling tf.data iterator gives epoch ``e`` an order that depends on how many
epochs the same iterator has already run: a run resumed after epoch 1 would see another
order in epoch 2 than the run that went straight through. Here every epoch has its own
shuffle, seeded by :func:`epoch_seed` ``(seed, epoch)``, so epoch ``e`` sees the same
batches whether the run started at epoch 0 or resumed at ``e``.
"""

import tensorflow as tf

from tfrs_linear.data.buckets import length_bucketed
from tfrs_linear.data.datasets import training_dataset

# Epochs of one seed get seeds seed * _STRIDE + epoch: distinct for any two
# (seed, epoch) pairs with 0 <= epoch < _STRIDE.
_STRIDE = 1_000_003


def epoch_seed(seed, epoch):
    """The shuffle seed of epoch ``epoch`` (counted from 0) of a run seeded ``seed``."""
    return int(seed) * _STRIDE + int(epoch)


def steps_per_epoch(data, model_config, train_config, cap=None):
    """Batches per epoch: the training pipeline's, or ``cap`` when smaller. Raises
    ``ValueError`` (before anything is written) if the data cannot fill a batch, or if
    ``cap`` is given and not positive."""
    if cap is not None and int(cap) <= 0:
        raise ValueError(f"steps_per_epoch must be a positive number of batches, got {cap}")
    one = training_dataset(data, model_config.max_len, train_config.batch_size,
                           regime=model_config.regime, seed=0)
    steps = int(one.cardinality())
    return steps if cap is None else min(steps, int(cap))


def epochs_dataset(data, model_config, train_config, first_epoch, steps):
    """One ``tf.data.Dataset`` of the batches of epochs ``first_epoch .. epochs - 1``
    (counted from 0), ``steps`` batches each, epoch ``e`` shuffled by
    ``epoch_seed(train_config.seed, e)`` and, with ``train_config.length_buckets > 1``,
    cut to bucket widths (regrouped by length first, by the same seed, when
    ``train_config.bucket_window > 1``: :func:`~tfrs_linear.data.buckets.length_bucketed`);
    give it to ``fit`` with ``steps_per_epoch=steps`` (one iterator across epochs)."""
    max_len, batch_size = model_config.max_len, train_config.batch_size
    regime, seed = model_config.regime, int(train_config.seed)

    def one_epoch(epoch):
        shuffle_seed = tf.cast(epoch, tf.int64) + tf.constant(seed * _STRIDE, tf.int64)
        batches = training_dataset(data, max_len, batch_size, regime=regime,
                                   seed=shuffle_seed).take(steps)
        return length_bucketed(batches, max_len, train_config.length_buckets, shuffle_seed,
                               window=train_config.bucket_window)

    epochs = tf.data.Dataset.range(int(first_epoch), int(train_config.epochs))
    return epochs.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


__all__ = ["epoch_seed", "steps_per_epoch", "epochs_dataset"]
