"""SequentialRetrievalModel: its two losses against numpy oracles, the log-uniform sampler,
the query tower (the newest position) and XLA training."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_linear import data as data_lib
from tfrs_linear.config import ModelConfig
from tfrs_linear.models import SequentialRetrievalModel, log_uniform_probability, sample_log_uniform
from tfrs_linear.models import retrieval
from tests.models.common import TINY_MODEL, TINY_TRAIN, tiny_sequences


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_sequences()


# --------------------------------------------------------------------------- losses
def _numpy_softmax_ce(logits, target):
    logits = logits - logits.max()
    return -(logits[target] - np.log(np.exp(logits).sum()))


@pytest.mark.parametrize("regime", ["all", "last"])
def test_full_loss_equals_cross_entropy_over_the_catalogue(regime):
    config = ModelConfig(attention="linrec", regime=regime, loss="full", dropout=0.0,
                         attention_dropout=0.0, **TINY_MODEL)
    model = SequentialRetrievalModel(config, vocab_size=9).build_all()
    rng = np.random.default_rng(0)
    inputs = np.concatenate([np.zeros((3, 5), np.int32), rng.integers(2, 9, (3, 7), dtype=np.int32)], 1)
    targets = (np.concatenate([np.zeros((3, 6), np.int32), rng.integers(2, 9, (3, 6), dtype=np.int32)], 1)
               if regime == "all" else rng.integers(2, 9, (3,), dtype=np.int32))
    loss = model.compute_loss({"inputs": inputs, "targets": targets}).numpy()
    seq = model.encoder(inputs, training=False).numpy().astype(np.float64)
    table = model.item_embeddings().numpy().astype(np.float64)
    queries = seq.reshape(-1, 16) if regime == "all" else seq[:, -1]
    flat_targets = targets.reshape(-1)
    losses = [_numpy_softmax_ce((q @ table.T)[2:], t - 2) for q, t in zip(queries, flat_targets) if t > 1]
    np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
    # With targets_per_row (length-regrouped batches): the sum over rows x that constant.
    model.targets_per_row = 2.5
    fixed = model.compute_loss({"inputs": inputs, "targets": targets}).numpy()
    np.testing.assert_allclose(fixed, np.sum(losses) / (3 * 2.5), rtol=1e-5)


def _numpy_sampled_block(q, targets, negatives, table, catalogue):
    """Oracle of one Retrieval block: rows = queries, candidates = [targets; negatives]."""
    ids = np.concatenate([targets, negatives])
    p = lambda rank: np.log((rank + 2) / (rank + 1)) / np.log(catalogue + 1)  # noqa: E731
    losses, weights = [], []
    for row, target in enumerate(targets):
        if target <= 1:  # padding / OOV target: weight 0
            continue
        logits, label = [], None
        for col, cid in enumerate(ids):
            if cid <= 1:
                continue  # padding / OOV never compete
            if cid == target and col != row:
                continue  # accidental hit: the row's own target in another column
            if col == row:
                label = len(logits)
            logits.append(q[row] @ table[cid] - np.log(p(cid - 2)))
        losses.append(_numpy_softmax_ce(np.array(logits), label))
    return losses


@pytest.mark.parametrize("regime", ["last", "all"])
def test_sampled_loss_is_tfrs_retrieval_with_in_batch_and_shared_negatives(monkeypatch, regime):
    config = ModelConfig(attention="softmax", regime=regime, loss="sampled", dropout=0.0,
                         attention_dropout=0.0, **{**TINY_MODEL, "num_negatives": 4})
    model = SequentialRetrievalModel(config, vocab_size=12).build_all()
    assert isinstance(model.task, tfrs.tasks.Retrieval)
    negatives = np.array([0, 3, 5, 9], np.int32)  # ranks; ids = ranks + 2
    # The loss draws its shared negatives with the retrieval module's sampler.
    monkeypatch.setattr(retrieval, "sample_log_uniform",
                        lambda n, r, seed=None, generator=None: tf.constant(negatives))
    inputs = np.array([[0] * 8 + [2, 3, 4, 5], [0] * 10 + [6, 7], [0] * 9 + [8, 9, 5]], np.int32)
    if regime == "last":
        # target 5 is also sampled (rank 3): an accidental hit; row 2's target repeats row 0's.
        targets = np.array([5, 9, 5], np.int32)
    else:
        targets = np.zeros((3, 12), np.int32)
        targets[0, 8:] = [3, 4, 5, 11]
        targets[1, 10:] = [7, 5]
        targets[2, 9:] = [9, 5, 1]  # an OOV target: weight 0
    loss = model.compute_loss({"inputs": inputs, "targets": targets}).numpy()
    table = model.item_embeddings().numpy().astype(np.float64)
    seq = model.encoder(inputs).numpy().astype(np.float64)
    want = []
    if regime == "last":
        want += _numpy_sampled_block(seq[:, -1], targets, negatives + 2, table, 10)
    else:
        for n in range(12):
            want += _numpy_sampled_block(seq[:, n], targets[:, n], negatives + 2, table, 10)
    assert len(want) == (3 if regime == "last" else 8)
    np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)


def test_sampled_loss_trains_xla_compiled_in_regime_all(tiny_data):
    """Sampled-loss steps (XLA, per-position Retrieval blocks) lower the FULL cross-entropy."""
    tf.random.set_seed(0)
    config = ModelConfig(attention="linrec", regime="all", loss="sampled", dropout=0.0,
                         attention_dropout=0.0, **TINY_MODEL)
    model = SequentialRetrievalModel(config, vocab_size=tiny_data.num_items).build_all()
    ds = data_lib.training_dataset(tiny_data, config.max_len, TINY_TRAIN["batch_size"], seed=0)
    batch = next(iter(ds))
    full = SequentialRetrievalModel(config.replace(loss="full"), vocab_size=tiny_data.num_items)
    full.build_all()

    def full_loss():
        full.set_weights(model.get_weights())
        return float(full.compute_loss(batch))

    before = full_loss()
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), jit_compile=True)
    history = model.fit(ds.take(4), epochs=5, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert full_loss() < before - 0.1


def test_the_sampled_loss_gives_the_item_table_a_sparse_gradient(regime="all"):
    """A million-item table must not get a dense [V, d] gradient per position (the map_fn
    over positions once gathered the targets' rows inside the loop: hours per epoch)."""
    config = ModelConfig(attention="linrec", regime=regime, loss="sampled", dropout=0.0,
                         attention_dropout=0.0, **TINY_MODEL)
    model = SequentialRetrievalModel(config, vocab_size=50).build_all()
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, 50, (3, 12)).astype(np.int32)
    targets = rng.integers(2, 50, (3, 12) if regime == "all" else (3,)).astype(np.int32)
    table = model.candidate_embedding.embeddings

    @tf.function
    def gradient():
        with tf.GradientTape() as tape:
            loss = model.compute_loss({"inputs": inputs, "targets": targets}, training=True)
        return tape.gradient(loss, table)

    sparse = gradient()
    assert isinstance(sparse, tf.IndexedSlices)
    assert np.all(np.isfinite(sparse.values.numpy()))


@pytest.mark.parametrize("source", ["legacy", "generator"])
def test_log_uniform_sampler_matches_its_probabilities(source):
    kwargs = {"generator": tf.random.Generator.from_seed(5)} if source == "generator" else {}
    draws = sample_log_uniform(200_000, 10, **kwargs).numpy()
    freq = np.bincount(draws, minlength=10) / len(draws)
    # Oracle: P(k) = log((k+2)/(k+1)) / log(11), by hand.
    want = np.log((np.arange(10) + 2) / (np.arange(10) + 1)) / np.log(11)
    np.testing.assert_allclose(freq, want, atol=5e-3)
    np.testing.assert_allclose(log_uniform_probability(np.arange(10), 10).numpy(), want, rtol=1e-6)
    assert draws.min() >= 0 and draws.max() <= 9


def test_the_sampler_draws_from_a_generator_whose_state_a_checkpoint_restores(tmp_path):
    generator = tf.random.Generator.from_seed(11)
    draw = tf.function(lambda: sample_log_uniform(64, 1000, generator=generator), jit_compile=True)
    first = draw().numpy()
    path = tf.train.Checkpoint(rng=generator).write(str(tmp_path / "ckpt"))
    second, third = draw().numpy(), draw().numpy()
    assert not np.array_equal(first, second)  # the state advances with every draw
    tf.train.Checkpoint(rng=generator).read(path).assert_consumed()
    np.testing.assert_array_equal(draw().numpy(), second)  # restored: the same stream
    np.testing.assert_array_equal(draw().numpy(), third)
    with pytest.raises(ValueError, match="a seed or a generator, not both"):
        sample_log_uniform(4, 10, seed=1, generator=generator)


def test_the_sampled_loss_draws_from_the_models_generator_outside_its_weights(tmp_path):
    config = ModelConfig(attention="softmax", regime="last", loss="sampled", dropout=0.0,
                         attention_dropout=0.0, **TINY_MODEL)
    model = SequentialRetrievalModel(config, vocab_size=40, sampler_seed=4).build_all()
    twin = SequentialRetrievalModel(config, vocab_size=40, sampler_seed=4).build_all()
    assert isinstance(model.sampler_generator, tf.random.Generator)
    full = SequentialRetrievalModel(config.replace(loss="full"), vocab_size=40).build_all()
    assert full.sampler_generator is None
    # Not part of the weights: a sampled model's weights are a full-loss model's.
    assert [w.name for w in model.weights] == [w.name for w in full.weights]
    model.save_weights(str(tmp_path / "w"))
    keys = [name for name, _ in tf.train.list_variables(str(tmp_path / "w"))]
    assert any("item_embedding" in key for key in keys)
    assert not any("sampler" in key or "state_var" in key for key in keys)
    twin.set_weights(model.get_weights())
    batch = {"inputs": np.array([[0] * 9 + [2, 3, 4], [0] * 10 + [5, 6]], np.int32),
             "targets": np.array([7, 8], np.int32)}
    losses = [float(model.compute_loss(batch)) for _ in range(3)]
    assert len(set(losses)) == 3  # new negatives at every step
    assert [float(twin.compute_loss(batch)) for _ in range(3)] == losses  # same seed, same stream
    other = SequentialRetrievalModel(config, vocab_size=40, sampler_seed=5).build_all()
    other.set_weights(model.get_weights())
    assert [float(other.compute_loss(batch)) for _ in range(3)] != losses


# ------------------------------------------------------------------------- towers
@pytest.mark.parametrize("attention", ["softmax", "linrec", "elastic"])
def test_model_encode_uses_the_newest_position(attention):
    config = ModelConfig(attention=attention, max_len=8, d_model=8, num_layers=2, num_heads=2,
                         ffn_dim=16, num_interests=3, dropout=0.0, attention_dropout=0.0)
    model = SequentialRetrievalModel(config, vocab_size=12).build_all()
    ids = np.array([[0, 0, 0, 4, 5, 6, 7, 8], [2, 3, 4, 5, 6, 7, 8, 9]], np.int32)
    want = model.encoder(ids).numpy()[:, -1]
    np.testing.assert_allclose(model.encode(ids).numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(ids).numpy(), want, rtol=1e-5, atol=1e-5)


def test_model_builds_its_encoder_from_the_config_and_ties_the_candidates():
    config = ModelConfig(attention="elastic", regime="last", max_len=8, d_model=8, num_heads=2,
                         ffn_dim=16, num_interests=3, chunk_size=4)
    model = SequentialRetrievalModel(config, vocab_size=12)
    encoder_config = model.encoder.get_config()
    for name, value in config.encoder_kwargs().items():
        assert encoder_config[name] == value, name
    assert encoder_config["causal"] is False and encoder_config["recency_bias"] is True
    assert model.config.recency_bias is True  # the model keeps its resolved configuration
    assert model.candidate_embedding is model.item_embedding is model.encoder.item_embedding
    untied = SequentialRetrievalModel(config.replace(tie_embeddings=False), vocab_size=12)
    assert untied.candidate_embedding is not untied.item_embedding
    with pytest.raises(ValueError, match="vocab_size must be >= 3"):
        SequentialRetrievalModel(config, vocab_size=2)
