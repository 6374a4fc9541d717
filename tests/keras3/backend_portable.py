"""tfrs_linear.keras3._portable: the ops whose results Keras 3 leaves backend-dependent.

Run on every backend by tests/keras3/test_backends.py. On PyTorch, ``keras.ops.maximum``,
``minimum``, ``matmul`` and ``cumsum`` compute float64 tensors in float32 and
``torch.topk`` leaves the order of ties open; these checks fail there without
``_portable``.
"""

import numpy as np
import pytest
from keras import ops

from tests.keras3._harness import to_numpy
from tfrs_linear.keras3 import _portable as P

RNG = np.random.default_rng(3)
A = RNG.normal(size=(3, 4))
B = RNG.normal(size=(4, 5))
# Differences of 1e-12 are lost in float32 (its spacing near 1 is 1.2e-7).
FINE = 1.0 + 1e-12 * np.arange(4.0)


@pytest.mark.parametrize("name, args, want", [
    ("maximum", (FINE, 1.0 + 1.5e-12), np.maximum(FINE, 1.0 + 1.5e-12)),
    ("minimum", (FINE, 1.0 + 1.5e-12), np.minimum(FINE, 1.0 + 1.5e-12)),
    ("matmul", (A + FINE[None, :], B), (A + FINE[None, :]) @ B),
])
def test_float64_stays_float64(name, args, want):
    tensors = [ops.convert_to_tensor(np.asarray(a, np.float64)) if isinstance(a, np.ndarray)
               else a for a in args]
    got = to_numpy(getattr(P, name)(*tensors))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)  # float32: ~1e-7


def test_cumsum_stays_float64():
    x = np.stack([FINE, -FINE, FINE])
    got = to_numpy(P.cumsum(ops.convert_to_tensor(x), axis=0))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.cumsum(x, axis=0), rtol=0, atol=1e-15)
    got = to_numpy(P.cumsum(ops.convert_to_tensor(x), axis=1))
    np.testing.assert_allclose(got, np.cumsum(x, axis=1), rtol=0, atol=1e-15)


def test_float32_stays_float32():
    x = ops.convert_to_tensor(A.astype(np.float32))
    assert to_numpy(P.maximum(x, 0.0)).dtype == np.float32
    assert to_numpy(P.matmul(x, ops.convert_to_tensor(B.astype(np.float32)))).dtype == np.float32


def test_top_k_puts_ties_in_index_order():
    scores = np.zeros((2, 9))
    scores[1, [2, 7]] = 1.0  # two tied leaders, then seven tied zeros
    values, indices = (to_numpy(t) for t in P.top_k(ops.convert_to_tensor(scores), 4))
    assert indices.tolist() == [[0, 1, 2, 3], [2, 7, 0, 1]]
    np.testing.assert_array_equal(values, [[0, 0, 0, 0], [1, 1, 0, 0]])
