"""InterestMemory (:mod:`tfrs_linear.layers.interest_memory`): the selected slots and the
retrieved interests against a brute-force search over all slots, its sparse gradient,
padding, XLA, mixed precision and configuration."""

import numpy as np
import pytest
import tensorflow as tf

from tests.layers.common import DIM, K
from tests.oracles import random_mask
from tfrs_linear.layers import InterestMemory


def make_memory(seed=0, **kw):
    tf.keras.utils.set_random_seed(seed)
    kw.setdefault("num_keys", 8)
    kw.setdefault("top_m", 4)
    kw.setdefault("query_dim", 6)
    memory = InterestMemory(num_interests=K, **kw)
    memory.build([None, None, DIM])
    return memory


def test_memory_selects_true_top_m_and_matches_reference():
    rng = np.random.default_rng(13)
    memory = make_memory(13)
    x = rng.normal(size=[3, 7, DIM]).astype(np.float32)
    mask = random_mask(rng, 3, 7)
    scores, indices = memory.lookup(tf.constant(x), tf.constant(mask))
    out = memory(tf.constant(x), mask=tf.constant(mask)).numpy()
    # Independent brute force over all n² slots.
    xm = x.astype(np.float64) * mask[..., None]
    mean = xm.sum(1) / mask.sum(1, keepdims=True)
    q = mean @ memory.query_kernel.numpy() + memory.query_bias.numpy()
    q = q.reshape(3, K, 6)
    k1, k2 = memory.sub_keys_1.numpy(), memory.sub_keys_2.numpy()
    full = (q[..., :3] @ k1.T)[..., :, None] + (q[..., 3:] @ k2.T)[..., None, :]
    full = full.reshape(3, K, 64)  # slot index i1 * 8 + i2
    best = np.argsort(-full, axis=-1)[..., :4]
    np.testing.assert_array_equal(indices.numpy(), best)
    np.testing.assert_allclose(
        scores.numpy(), np.take_along_axis(full, best, -1), rtol=1e-5, atol=1e-5
    )
    top = np.take_along_axis(full, best, -1)
    wts = np.exp(top - top.max(-1, keepdims=True))
    wts /= wts.sum(-1, keepdims=True)
    rows = memory.memory.numpy()[best]  # [B, k, m, dim]
    expected = memory.base_tokens.numpy()[None] + np.einsum("bkm,bkmd->bkd", wts, rows)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_memory_gradient_reaches_selected_rows_only():
    rng = np.random.default_rng(15)
    memory = make_memory(15)
    x = tf.constant(rng.normal(size=[2, 5, DIM]), tf.float32)
    _, indices = memory.lookup(x)
    with tf.GradientTape() as tape:
        out = memory(x)
        loss = tf.reduce_sum(out * tf.constant(rng.normal(size=[2, K, DIM]), tf.float32))
    grad = tape.gradient(loss, memory.memory)
    assert isinstance(grad, tf.IndexedSlices)
    dense = tf.convert_to_tensor(grad).numpy()
    touched = set(np.nonzero(np.abs(dense).sum(-1))[0].tolist())
    assert touched == set(indices.numpy().ravel().tolist())
    assert len(touched) < 64


def test_memory_all_padding_is_finite():
    memory = make_memory(16)
    x = tf.random.normal([2, 4, DIM])
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = memory(x, mask=tf.zeros([2, 4], tf.bool))
        loss = tf.reduce_sum(out ** 2)
    grads = tape.gradient(loss, [x] + memory.trainable_variables)
    assert np.all(np.isfinite(out.numpy()))
    for g in grads:
        assert np.all(np.isfinite(tf.convert_to_tensor(g).numpy()))


def test_memory_xla_equals_graph_mode():
    memory = make_memory(17)
    x = tf.random.normal([2, 6, DIM])
    mask = tf.constant(random_mask(np.random.default_rng(17), 2, 6))
    graph = tf.function(lambda x, m: memory(x, mask=m))(x, mask)
    xla = tf.function(lambda x, m: memory(x, mask=m), jit_compile=True)(x, mask)
    np.testing.assert_allclose(xla.numpy(), graph.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_memory_mixed_precision(policy, float32_policy):
    tf.keras.mixed_precision.set_global_policy(policy)
    memory = InterestMemory(num_interests=K, num_keys=8, top_m=4, query_dim=6)
    x = tf.random.normal([2, 5, DIM])
    with tf.GradientTape() as tape:
        out = memory(x)
        loss = tf.reduce_sum(tf.cast(out, tf.float32))
    assert out.shape == (2, K, DIM)
    assert out.dtype == tf.as_dtype(policy.split("_")[1])
    assert memory.memory.dtype == tf.float32
    grad = tape.gradient(loss, memory.memory)
    assert isinstance(grad, tf.IndexedSlices)
    assert np.all(np.isfinite(tf.convert_to_tensor(grad).numpy()))


def test_memory_refuses_top_m_above_num_keys():
    # (Split from the dispatcher layer's test_clear_errors.)
    with pytest.raises(ValueError, match="top_m"):
        InterestMemory(2, num_keys=4, top_m=5)


def test_memory_config_round_trip():
    # (Split from the dispatcher layer's test_config_round_trip.)
    memory = InterestMemory(num_interests=5, num_keys=6, top_m=2, query_dim=4)
    clone = InterestMemory.from_config(memory.get_config())
    assert clone.get_config() == memory.get_config()
