"""Keras (tf-keras, Keras 2) layers, one per module. All are registered for serialization
under the package name ``tfrs_linear``.

* :class:`LinRecAttention` (:mod:`~tfrs_linear.layers.linrec`): LinRec, a
  ``MultiHeadAttention`` drop-in.
* :class:`LinearDispatcherAttention` (:mod:`~tfrs_linear.layers.dispatcher`): ELASTIC's
  linear dispatcher attention.
* :class:`InterestMemory` (:mod:`~tfrs_linear.layers.interest_memory`): ELASTIC's
  product-key interest memory.
* :class:`TransformerBlock` (:mod:`~tfrs_linear.layers.transformer`): the post-LN block
  whose attention is chosen by name (:data:`ATTENTIONS`).
* :class:`SequenceEncoder` (:mod:`~tfrs_linear.layers.encoder`): item ids to per-position
  states (embedding, positions, a stack of blocks); the query tower of the models.
* :class:`SoftmaxAttention` (:mod:`~tfrs_linear.layers.softmax`): Keras'
  ``MultiHeadAttention`` with a :class:`CounterDropout`; the softmax baseline.
* :class:`CounterDropout` (:mod:`~tfrs_linear.layers.dropout`): Keras' ``Dropout`` with
  its random bits from a counter-based hash, cheap under XLA; every dropout above.
* :class:`TableEmbedding` (:mod:`~tfrs_linear.layers.embedding`): Keras' ``Embedding``
  gathering from a dense read of its table (a served model never copies the table per
  request); every embedding above.
"""

from tfrs_linear.keras2 import require_keras2

require_keras2()  # tf.keras must be tf-keras (Keras 2) before any layer is defined.

from tfrs_linear.constants import ATTENTIONS  # noqa: E402,F401
from tfrs_linear.layers.dispatcher import (  # noqa: E402,F401
    MAX_RECENCY_SLOPE,
    LinearDispatcherAttention,
)
from tfrs_linear.layers.dropout import CounterDropout  # noqa: E402,F401
from tfrs_linear.layers.embedding import TableEmbedding  # noqa: E402,F401
from tfrs_linear.layers.interest_memory import InterestMemory  # noqa: E402,F401
from tfrs_linear.layers.linrec import LinRecAttention  # noqa: E402,F401
from tfrs_linear.layers.softmax import SoftmaxAttention  # noqa: E402,F401
from tfrs_linear.layers.transformer import TransformerBlock  # noqa: E402,F401
from tfrs_linear.layers.encoder import SequenceEncoder  # noqa: E402,F401
