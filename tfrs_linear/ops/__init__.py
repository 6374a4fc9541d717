"""Pure TensorFlow attention math (no Keras): the layers are thin wrappers around these.

Keeping this module free of Keras lets the same functions serve Keras 3 users later.
"""

from tfrs_linear.ops.linrec import (  # noqa: F401
    NORMALIZATIONS,
    causal_linear_attention,
    linrec_attention,
    linrec_attention_scores,
    linrec_features,
    safe_norm,
)

from tfrs_linear.ops.elastic import *  # noqa: F401,F403,E402
