"""The global Keras settings a :class:`~tfrs_linear.training.Trainer` builds its model
under, set for the build and restored afterwards (a Python caller is not left with a
changed global state):

* the dtype policy of ``TrainConfig.precision`` (``"float32"``, ``"mixed_float16"``,
  ``"mixed_bfloat16"``): each layer keeps the policy it was built with;
* ``tf.random.Generator`` as Keras' random number generator, so every ``Dropout`` of
  the model draws from a generator whose state is a variable. Keras keeps those
  generators out of the model's checkpoints on purpose (the weights files stay as they
  were); :func:`random_generators` lists them for the run's checkpoint, so that a
  resumed run continues the same random stream. The sampled loss's generator
  (``SequentialRetrievalModel.sampler_generator``, seeded by the Trainer with the run's
  seed) is kept out of the weights the same way and listed there too.

:func:`make_optimizer` makes ``TrainConfig.optimizer`` and wraps it in a ``LossScaleOptimizer`` for
``mixed_float16`` (the model's ``train_step`` scales the loss through it).
"""

import contextlib

import tensorflow as tf

from tfrs_linear.constants import OPTIMIZERS, PRECISIONS
from tfrs_linear.training.lazy_adam import LazyAdam


def train_precision(train_config):
    """The run's precision (``"float32"`` for a configuration that predates the field)."""
    return getattr(train_config, "precision", "float32")


@contextlib.contextmanager
def model_scope(precision):
    """Builds under ``precision``'s global dtype policy and Keras' ``tf.random.Generator``
    RNG; both global settings are restored on exit."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    previous_policy = tf.keras.mixed_precision.global_policy()
    experimental = tf.keras.backend.experimental
    previous_rng = experimental.is_tf_random_generator_enabled()
    tf.keras.mixed_precision.set_global_policy(precision)
    experimental.enable_tf_random_generator()
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)
        if not previous_rng:
            experimental.disable_tf_random_generator()


def random_generators(model):
    """The ``tf.random.Generator`` of every random layer (``Dropout``) of ``model``, in
    a fixed order (``model.submodules``), each created if its layer was not built yet,
    then the model's own ``sampler_generator`` (the sampled loss's negatives) when it
    has one: what a checkpoint needs to hold the model's random state. The layers' part
    is empty for a model built without :func:`model_scope` (Keras' legacy stateful RNG
    has no state to save). The sampler comes last, so a checkpoint written before it
    was listed holds a prefix of this list."""
    generators = []
    for layer in model.submodules:
        # Keras exposes no public handle on a layer's generator: BaseRandomLayer's
        # `_random_generator` (a backend.RandomGenerator) holds it.
        rng = getattr(layer, "_random_generator", None)
        if rng is None or not isinstance(layer, tf.keras.layers.Layer):
            continue
        rng._maybe_init()
        if isinstance(getattr(rng, "_generator", None), tf.random.Generator):
            generators.append(rng._generator)
    sampler = getattr(model, "sampler_generator", None)
    if isinstance(sampler, tf.random.Generator):
        generators.append(sampler)
    return generators


def make_optimizer(learning_rate, precision, optimizer="adam"):
    """``optimizer`` (``"adam"`` or ``"lazy_adam"``, :class:`LazyAdam`), in a
    ``LossScaleOptimizer`` (dynamic loss scale) for ``mixed_float16``."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    kind = LazyAdam if optimizer == "lazy_adam" else tf.keras.optimizers.Adam
    optimizer = kind(learning_rate)
    if precision == "mixed_float16":
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


__all__ = ["model_scope", "make_optimizer", "random_generators", "train_precision"]
