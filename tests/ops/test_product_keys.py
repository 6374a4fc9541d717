"""Product-key lookup (:mod:`tfrs_linear.ops.product_keys`) against a brute-force search
over every slot."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear import ops


def test_product_key_lookup_brute_force_leading_dims():
    rng = np.random.default_rng(14)
    q = rng.normal(size=[2, 3, 4, 8])
    k1, k2 = rng.normal(size=[5, 4]), rng.normal(size=[5, 4])
    scores, idx = ops.product_key_lookup(q, k1, k2, 3)
    full = (q[..., :4] @ k1.T)[..., :, None] + (q[..., 4:] @ k2.T)[..., None, :]
    full = full.reshape(2, 3, 4, 25)
    best = np.argsort(-full, axis=-1)[..., :3]
    assert idx.dtype == tf.int32 and scores.dtype == tf.float64
    np.testing.assert_array_equal(idx.numpy(), best)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(full, best, -1), rtol=1e-12)
    with pytest.raises(ValueError, match="twice the sub-key width"):
        ops.product_key_lookup(q[..., :6], k1, k2, 3)
