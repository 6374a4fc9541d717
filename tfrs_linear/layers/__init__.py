"""Keras (tf-keras, Keras 2) layers. All are registered for serialization under the
package name ``tfrs_linear``."""

from tfrs_linear.layers.linrec import LinRecAttention  # noqa: F401
from tfrs_linear.layers.transformer import ATTENTIONS, TransformerBlock  # noqa: F401

from tfrs_linear.layers.elastic import (  # noqa: F401
    InterestMemory,
    LinearDispatcherAttention,
)
