"""layers._common.heads_projection / heads_output: the recurrent forms' projections as
2-D MatMuls, against tf.einsum's definitions in float64."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.layers._common import heads_output, heads_projection


@pytest.mark.parametrize("length", [1, 3])
@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_projections_equal_their_einsums(length, static, bias):
    rng = np.random.default_rng(length)
    x = rng.standard_normal([2, length, 6])
    kernel = rng.standard_normal([6, 3, 4])
    b = rng.standard_normal([3, 4]) if bias else None
    out_kernel = rng.standard_normal([3, 4, 6])
    out_bias = rng.standard_normal([6]) if bias else None
    width = length if static else None

    @tf.function(input_signature=[tf.TensorSpec([None, width, 6], tf.float64)])
    def project(inputs):
        heads = heads_projection(inputs, tf.constant(kernel),
                                 None if b is None else tf.constant(b))
        back = heads_output(heads, tf.constant(out_kernel),
                            None if out_bias is None else tf.constant(out_bias))
        return heads, back

    heads, back = project(tf.constant(x))
    want = np.einsum("bld,dhe->bhle", x, kernel) + (0 if b is None else b[:, None, :])
    np.testing.assert_allclose(heads.numpy(), want, rtol=1e-12, atol=1e-12)
    want_back = np.einsum("bhlv,hvd->bld", want, out_kernel) + (0 if out_bias is None else out_bias)
    np.testing.assert_allclose(back.numpy(), want_back, rtol=1e-12, atol=1e-12)
    assert heads.shape.as_list() == [2, 3, length, 4] and back.shape == x.shape
