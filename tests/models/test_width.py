"""A batch cut to a narrower width (the length buckets' batches) gives the states and the
loss of the same batch at ``max_len``: the encoder computes at its input's width and the
left padding it no longer sees was masked. Eagerly for every case, and for three of them
in one XLA-compiled function traced with an unknown width (as ``fit`` traces the
bucketed pipeline) at two widths."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.config import ModelConfig
from tfrs_linear.models import SequentialRetrievalModel

MAX_LEN, VOCAB, BATCH = 24, 40, 6
# "xla": also compiled (one compilation per width and case: a few cases only).
CASES = [
    dict(attention="softmax", xla=True),
    dict(attention="softmax", positions="from_start"),
    dict(attention="linrec"),
    dict(attention="linrec", normalization="token", positions="from_start", chunk_size=4,
         xla=True),
    dict(attention="elastic", num_interests=4, chunk_size=4, xla=True),  # recency, no positions
    dict(attention="elastic", num_interests=4, positions="from_end", recency_bias=False),
    dict(attention="linrec", regime="last"),  # non-causal
    dict(attention="elastic", num_interests=4, regime="last"),
]


def _batch(longest, seed=0):
    """Left-padded ``[B, MAX_LEN]`` rows of 1..longest items, their next-item targets and
    offsets."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, longest + 1, BATCH)
    lengths[0] = longest
    inputs = np.zeros([BATCH, MAX_LEN], np.int32)
    targets = np.zeros([BATCH, MAX_LEN], np.int32)
    for row, n in enumerate(lengths):
        items = rng.integers(2, VOCAB, n + 1)
        inputs[row, MAX_LEN - n:] = items[:-1]
        targets[row, MAX_LEN - n:] = items[1:]
    offsets = rng.integers(0, 5, BATCH).astype(np.int32)
    return inputs, targets, offsets


def _model(case):
    fields = {k: v for k, v in case.items() if k != "xla"}
    config = ModelConfig(max_len=MAX_LEN, d_model=16, num_layers=2, num_heads=2, ffn_dim=32,
                         **fields)
    tf.keras.utils.set_random_seed(1)
    return SequentialRetrievalModel(config, VOCAB).build_all()


def _inputs(inputs, targets, offsets, width, regime):
    cut = {"inputs": tf.constant(inputs[:, MAX_LEN - width:]),
           "offsets": tf.constant(offsets)}
    if regime == "all":
        cut["targets"] = tf.constant(targets[:, MAX_LEN - width:])
    else:
        cut["targets"] = tf.constant(targets[:, -1])
    return cut


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(
    f"{v}" if k != "xla" else "xla" for k, v in c.items()))
def test_a_cut_batch_gives_the_full_width_states_and_loss(case):
    model = _model(case)
    regime = case.get("regime", "all")
    inputs, targets, offsets = _batch(longest=7)
    full = _inputs(inputs, targets, offsets, MAX_LEN, regime)
    sequence = model.encoder(full["inputs"], position_offsets=full["offsets"]).numpy()
    loss = float(model.compute_loss(full))
    scale = np.abs(sequence).max()
    for width in (7, 8, 12):
        cut = _inputs(inputs, targets, offsets, width, regime)
        got = model.encoder(cut["inputs"], position_offsets=cut["offsets"]).numpy()
        assert got.shape == (BATCH, width, 16)
        np.testing.assert_allclose(got, sequence[:, MAX_LEN - width:], atol=2e-6 * scale)
        assert float(model.compute_loss(cut)) == pytest.approx(loss, rel=2e-6)

    if not case.get("xla"):
        return
    # One trace with an unknown width, compiled by XLA for each width it meets.
    spec = {"inputs": tf.TensorSpec([BATCH, None], tf.int32),
            "offsets": tf.TensorSpec([BATCH], tf.int32),
            "targets": tf.TensorSpec([BATCH, None] if regime == "all" else [BATCH], tf.int32)}
    compiled = tf.function(model.compute_loss, jit_compile=True, input_signature=[spec])
    for width in (8, MAX_LEN):
        got = float(compiled(_inputs(inputs, targets, offsets, width, regime)))
        assert got == pytest.approx(loss, rel=2e-6)
    assert len(compiled._list_all_concrete_functions()) == 1

