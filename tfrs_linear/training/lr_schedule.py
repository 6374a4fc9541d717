"""The learning rate of a training run: constant or cosine decay, after a linear warm-up.

``TrainConfig.lr_schedule`` and ``warmup_steps`` choose it; :func:`learning_rate` turns
them into what a Keras optimizer takes (a float, or a Keras ``CosineDecay`` schedule). The
schedule is a function of the optimizer's step counter (``optimizer.iterations``), which
the run's checkpoint holds: a resumed run continues the same curve.

Over ``total = epochs * steps_per_epoch`` steps (the epoch cap, whether or not early
stopping ends the run sooner), with ``w = warmup_steps`` and ``lr = learning_rate``, the
rate at step ``s`` (0 for the first update) is::

    s < w:            lr * s / w                               (warm-up; 0 at step 0)
    constant, s >= w: lr
    cosine,   s >= w: lr * (1 + cos(pi * min(s - w, total - w) / (total - w))) / 2
"""

import tensorflow as tf

from tfrs_linear.constants import LR_SCHEDULES


def learning_rate(train_config, steps_per_epoch):
    """``train_config``'s learning rate: its ``learning_rate`` (a float) for a constant
    schedule without warm-up, else a ``tf.keras.optimizers.schedules.CosineDecay``.

    Args:
      train_config: a :class:`~tfrs_linear.config.TrainConfig`.
      steps_per_epoch: the optimizer steps of one epoch (the run's batches per epoch).

    Raises ``ValueError`` when the warm-up does not end before the epoch cap does.
    """
    schedule, warmup = train_config.lr_schedule, int(train_config.warmup_steps)
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    lr = float(train_config.learning_rate)
    if schedule == "constant" and warmup == 0:
        return lr
    total = int(train_config.epochs) * int(steps_per_epoch)
    if warmup >= total:
        raise ValueError(
            f"warmup_steps ({warmup}) must be fewer than the run's train steps (epochs "
            f"{train_config.epochs} x {steps_per_epoch} steps per epoch = {total})")
    cosine = tf.keras.optimizers.schedules.CosineDecay
    # alpha is the floor as a fraction of the peak: 1 holds the peak (constant).
    alpha = 1.0 if schedule == "constant" else 0.0
    if warmup:
        return cosine(initial_learning_rate=0.0, decay_steps=total - warmup, alpha=alpha,
                      warmup_target=lr, warmup_steps=warmup)
    return cosine(initial_learning_rate=lr, decay_steps=total, alpha=alpha)


__all__ = ["learning_rate"]
