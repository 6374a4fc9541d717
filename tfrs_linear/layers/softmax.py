"""`SoftmaxAttention`: Keras' ``MultiHeadAttention`` with a :class:`CounterDropout`.

The softmax baseline of :class:`~tfrs_linear.layers.TransformerBlock`. Everything is
``tf.keras.layers.MultiHeadAttention``'s (arguments, weights and their names, masks,
``use_causal_mask``, ``return_attention_scores``, config) except the dropout on the
attention probabilities, which ``_build_attention`` (the parent's documented hook for a
custom attention) swaps for a :class:`~tfrs_linear.layers.CounterDropout` of the same
rate: the same distribution, but random bits that XLA computes cheaply.

Why: Keras' dropout draws Philox bits for every element of the ``[batch, heads, N, N]``
probabilities. In the retrieval model's XLA training step at ``max_len`` 200 (batch 128,
2 heads) that alone was 530 ms of thunk CPU, about 40% of softmax's whole step
(``scripts/profile_step.py``; ``docs/bench/causal/profile.md``). The linear attentions
never form those probabilities, so leaving Keras' dropout there would make the baseline
they are compared with slower than it need be.

Checkpoints and SavedModels of blocks built with the plain ``MultiHeadAttention`` load
into this one: the variables (the four projections and the dropout's random generator)
are the same objects under the same names.
"""

import tensorflow as tf

from tfrs_linear.layers.dropout import CounterDropoutMixin


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class SoftmaxAttention(CounterDropoutMixin, tf.keras.layers.MultiHeadAttention):
    """``tf.keras.layers.MultiHeadAttention`` whose probability dropout is a
    :class:`~tfrs_linear.layers.CounterDropout`. Same arguments and call."""


__all__ = ["SoftmaxAttention"]
