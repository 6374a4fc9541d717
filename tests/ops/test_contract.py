"""ops.contract: two-operand einsums as broadcast products when small, against
tf.einsum in float64 (and NumPy's einsum as the independent oracle)."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.ops.contract import MAX_BROADCAST_ELEMENTS, contract

# Every equation the recurrent forms contract, with a served step's sizes (one event).
EQUATIONS = [
    ("bhsd,bhse->bhde", [3, 2, 1, 4], [3, 2, 1, 5]),
    ("bhtd,bhde->bhte", [3, 2, 1, 4], [3, 2, 4, 5]),
    ("bhtd,bhsd->bhts", [3, 2, 2, 4], [3, 2, 2, 4]),
    ("bhts,bhse->bhte", [3, 2, 2, 2], [3, 2, 2, 5]),
    ("bhkt,bhkgd->bhktgd", [3, 2, 4, 1], [3, 2, 4, 2, 5]),
    ("bhkts,bhsgd->bhktgd", [3, 2, 4, 1, 1], [3, 2, 1, 2, 5]),
    ("bgtd,bgtkd->bgtk", [3, 2, 1, 5], [3, 2, 1, 4, 5]),
    ("bgtk,bgtkd->bgtd", [3, 2, 1, 4], [3, 2, 1, 4, 5]),
    ("bhks,bhsgd->bhkgd", [3, 2, 4, 1], [3, 2, 1, 2, 5]),
    ("bhid,bhnd->bhin", [3, 2, 4, 5], [3, 2, 1, 5]),
    ("bhnv,hvge->bhnge", [3, 2, 1, 4], [2, 4, 2, 5]),
]


def _graph_ops(fn, *specs):
    return {op.type for op in tf.function(fn).get_concrete_function(*specs).graph.get_operations()}


@pytest.mark.parametrize("equation,shape_a,shape_b", EQUATIONS)
def test_small_products_equal_einsum_without_an_einsum_op(equation, shape_a, shape_b):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    got = contract(equation, tf.constant(a), tf.constant(b))
    np.testing.assert_allclose(got.numpy(), np.einsum(equation, a, b), rtol=1e-12, atol=1e-12)
    # In a graph with the batch unknown: the broadcast form, no Einsum (nor MatMul) op.
    specs = [tf.TensorSpec([None] + shape_a[1:], tf.float64),
             tf.TensorSpec([None] + shape_b[1:] if equation[equation.index(",") + 1] == "b"
                           else shape_b, tf.float64)]
    ops = _graph_ops(lambda x, y: contract(equation, x, y), *specs)
    assert not ops & {"Einsum", "BatchMatMulV2", "MatMul"}, ops


def test_large_unknown_or_transposing_products_are_einsums():
    x = tf.TensorSpec([None, 2, None, 4], tf.float32)  # a dynamic number of events
    s = tf.TensorSpec([None, 2, 4, 5], tf.float32)
    assert "Einsum" in _graph_ops(lambda a, b: contract("bhtd,bhde->bhte", a, b), x, s)
    big = [None, 2, 64, 64]  # 2 * 64 * 64 * 64 elements per row > MAX_BROADCAST_ELEMENTS
    assert 2 * 64 ** 3 > MAX_BROADCAST_ELEMENTS
    ops = _graph_ops(lambda a, b: contract("bhtd,bhde->bhte", a, b),
                     tf.TensorSpec(big, tf.float32), tf.TensorSpec(big, tf.float32))
    assert "Einsum" in ops
    # No order keeps both operands' subscripts in place (i before j, and j before i).
    spec = tf.TensorSpec([None, 3, 3], tf.float32)
    assert "Einsum" in _graph_ops(lambda a, b: contract("bij,bji->bi", a, b), spec, spec)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal([2, 3, 3]), rng.standard_normal([2, 3, 3])
    np.testing.assert_allclose(contract("bij,bji->bi", tf.constant(a), tf.constant(b)).numpy(),
                               np.einsum("bij,bji->bi", a, b), rtol=1e-12)


def test_mismatched_sizes_fail_as_einsum_does():
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        contract("bhtd,bhde->bhte", tf.zeros([1, 2, 1, 4]), tf.zeros([1, 2, 3, 5]))
