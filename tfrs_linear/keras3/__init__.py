"""Keras 3 layers (TensorFlow, JAX and PyTorch backends): LinRec and ELASTIC.

The Keras 3 twins of :mod:`tfrs_linear.layers` (which are tf-keras, Keras 2, for TFRS),
with the same math, arguments, defaults and configuration keys, written against
``keras.ops``. Importing this package never sets ``TF_USE_LEGACY_KERAS`` and never
imports tf-keras, TensorFlow Recommenders or ``tf.keras``; on the TensorFlow backend the
causal ELASTIC path calls the pure-TensorFlow :mod:`tfrs_linear.ops`. Float64 layers
compute in float64 on every backend (:mod:`tfrs_linear.keras3._portable` on PyTorch,
where Keras 3 computes some float64 ops in float32). Every layer is registered for
serialization under the package name ``tfrs_linear_keras3``.

```python
import keras
from tfrs_linear.keras3 import LinRecAttention, TransformerBlock

ids = keras.Input((200,), dtype="int32")
x = keras.layers.Embedding(10_000, 64, mask_zero=True)(ids)
y = LinRecAttention(num_heads=2, key_dim=32)(x, x, use_causal_mask=True)
y = TransformerBlock(num_heads=2, attention="elastic", causal=True, num_interests=16)(y)
```
"""

import keras as _keras

if not _keras.__version__.startswith("3."):  # pragma: no cover - Keras 2 installed as keras
    raise ImportError(
        f"tfrs_linear.keras3 needs Keras 3 (the `keras` package), got keras "
        f"{_keras.__version__}. The tf-keras (Keras 2) layers are in tfrs_linear.layers."
    )

from tfrs_linear.keras3.dispatcher import LinearDispatcherAttention  # noqa: E402
from tfrs_linear.keras3.dropout import CounterDropout  # noqa: E402
from tfrs_linear.keras3.encoder import SequenceEncoder, embedding_initializer  # noqa: E402
from tfrs_linear.keras3.linrec import LinRecAttention  # noqa: E402
from tfrs_linear.keras3.memory import InterestMemory  # noqa: E402
from tfrs_linear.keras3.transformer import TransformerBlock  # noqa: E402

__all__ = [
    "CounterDropout",
    "InterestMemory",
    "LinRecAttention",
    "LinearDispatcherAttention",
    "SequenceEncoder",
    "TransformerBlock",
    "embedding_initializer",
]
