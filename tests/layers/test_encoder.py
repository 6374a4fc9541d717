"""SequenceEncoder: its Keras registration (saved models load), its configuration, its
padding and the old import path."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear.config import ModelConfig
from tfrs_linear.layers.encoder import SequenceEncoder

SMALL = dict(vocab_size=20, max_len=10, d_model=8, num_layers=2, num_heads=2, ffn_dim=16,
             num_interests=3, chunk_size=4, dropout=0.0, attention_dropout=0.0)


def test_registered_under_the_name_saved_models_use():
    assert tf.keras.utils.get_registered_name(SequenceEncoder) == "tfrs_linear>SequenceEncoder"
    assert tf.keras.utils.get_registered_object("tfrs_linear>SequenceEncoder") is SequenceEncoder


def test_the_old_import_path_is_the_same_class():
    from tfrs_linear.models import SequenceEncoder as from_models

    assert from_models is SequenceEncoder


@pytest.mark.parametrize("attention,causal,memory", [("linrec", True, False),
                                                     ("elastic", False, True)])
def test_get_config_round_trip_rebuilds_the_same_encoder(attention, causal, memory):
    tf.keras.utils.set_random_seed(3)
    encoder = SequenceEncoder(attention=attention, causal=causal, use_memory=memory,
                              memory_keys=4, memory_top_m=2, recency_bias=attention == "elastic",
                              name="encoder", **SMALL)
    ids = np.random.default_rng(3).integers(2, 20, (2, 10)).astype(np.int32)
    ids[1, :7] = 0
    want = encoder(ids).numpy()
    config = encoder.get_config()
    assert config["use_memory"] is memory and config["causal"] is causal
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(encoder))
    assert type(clone) is SequenceEncoder and clone.get_config() == config
    clone(ids)
    clone.set_weights(encoder.get_weights())
    np.testing.assert_allclose(clone(ids).numpy(), want, rtol=1e-6, atol=1e-6)


def test_built_from_a_model_config_without_copying_fields():
    config = ModelConfig(attention="elastic", regime="last", max_len=10, d_model=8, num_heads=2,
                         ffn_dim=16, num_interests=3, chunk_size=4)
    encoder = SequenceEncoder(vocab_size=20, **config.encoder_kwargs())
    got = encoder.get_config()
    assert got["causal"] is False and got["recency_bias"] is True  # resolved from the config
    assert (got["max_len"], got["d_model"], got["num_interests"]) == (10, 8, 3)


def test_padded_positions_output_zero_and_lengths_are_checked():
    encoder = SequenceEncoder(attention="softmax", **SMALL)
    ids = np.zeros([2, 10], np.int32)
    ids[0, 6:] = [3, 4, 5, 6]
    out = encoder(ids).numpy()
    assert np.all(out[0, :6] == 0.0) and np.all(out[1] == 0.0)
    assert np.any(out[0, 6:] != 0.0)
    with pytest.raises(ValueError, match="11 long, longer than max_len=10"):
        encoder(np.zeros([2, 11], np.int32))
    with pytest.raises(ValueError, match=r"must be \[batch, length\]"):
        encoder(np.zeros([10], np.int32))


def test_the_interest_memory_needs_non_causal_elastic():
    with pytest.raises(ValueError, match="use_memory needs attention='elastic'"):
        SequenceEncoder(attention="elastic", causal=True, use_memory=True, **SMALL)
    with pytest.raises(ValueError, match="use_memory needs attention='elastic'"):
        SequenceEncoder(attention="linrec", causal=False, use_memory=True, **SMALL)
