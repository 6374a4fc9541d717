"""Pure TensorFlow attention math (no Keras): the layers are thin wrappers around these.

Keeping this package free of Keras lets the same functions serve Keras 3 users later.
One concept per module, each opening with its numerics contract:

* :mod:`~tfrs_linear.ops.linrec`: LinRec, chunked causal linear attention.
* :mod:`~tfrs_linear.ops.dispatcher`: ELASTIC's linear dispatcher attention (aggregate,
  dispatch, the fused form) and its masked softmax.
* :mod:`~tfrs_linear.ops.dispatcher_causal`: the causal dispatcher's fast path and exact
  fallback (``causal_path``); :mod:`~tfrs_linear.ops.causal_scans`: their prefix scans.
* :mod:`~tfrs_linear.ops.linrec_recurrent`, :mod:`~tfrs_linear.ops.dispatcher_recurrent`:
  the per-event (recurrent) forms of the causal ops: a constant-size float32 state per
  user, updated by m new events at a time (streaming inference);
  :mod:`~tfrs_linear.ops.contract`: their small products without einsum kernels.
* :mod:`~tfrs_linear.ops.product_keys`: product-key top-m lookup.
* :mod:`~tfrs_linear.ops.catalogue_loss`: softmax cross-entropy over a whole catalogue,
  on the real rows only, a chunk of rows at a time (the full loss).
* :mod:`~tfrs_linear.ops.reference`: dense O(N²) references of LinRec and the
  dispatcher, for inspection and tests.
"""

from tfrs_linear.constants import NORMALIZATIONS  # noqa: F401
from tfrs_linear.ops.catalogue_loss import catalogue_cross_entropy, rows_per_chunk  # noqa: F401
from tfrs_linear.ops.contract import contract  # noqa: F401
from tfrs_linear.ops.dispatcher import (  # noqa: F401
    dispatcher_aggregate,
    dispatcher_attention,
    dispatcher_attention_from_values,
    dispatcher_dispatch,
    masked_softmax_weights,
)
from tfrs_linear.ops.dispatcher_causal import (  # noqa: F401
    CAUSAL_PATHS,
    causal_fast_path_ok,
    fold_values,
)
from tfrs_linear.ops.dispatcher_recurrent import (  # noqa: F401
    DISPATCHER_STATE_SUMS,
    dispatcher_advance,
    dispatcher_advance_from_values,
    dispatcher_initial_state,
    dispatcher_step,
)
from tfrs_linear.ops.linrec import (  # noqa: F401
    causal_linear_attention,
    linrec_attention,
    linrec_features,
    safe_norm,
)
from tfrs_linear.ops.linrec_recurrent import (  # noqa: F401
    LINREC_STATE_SUMS,
    compensated_add,
    linrec_advance,
    linrec_initial_state,
    linrec_step,
)
from tfrs_linear.ops.product_keys import product_key_lookup  # noqa: F401
from tfrs_linear.ops.reference import (  # noqa: F401
    dispatcher_aggregate_weights,
    dispatcher_attention_reference,
    linrec_attention_reference,
    linrec_attention_scores,
)
