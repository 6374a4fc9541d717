"""Keras 3 `SequenceEncoder`: the query tower of a sequential retrieval model."""

import keras
from keras import ops

from tfrs_linear.constants import PAD_INDEX
from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3.dropout import CounterDropout
from tfrs_linear.keras3.memory import InterestMemory
from tfrs_linear.keras3.transformer import TransformerBlock


def embedding_initializer():
    """Item and position embeddings: N(0, 0.02), as in SASRec/RecBole."""
    return keras.initializers.RandomNormal(stddev=0.02)


def _as_is(value):
    return value


# The encoder's configuration, in get_config()'s order: argument -> how it is stored.
_ARGUMENTS = {
    "vocab_size": int, "max_len": int, "d_model": int, "num_layers": int, "num_heads": int,
    "ffn_dim": int, "attention": _as_is, "causal": bool, "dropout": float,
    "attention_dropout": float, "layer_norm_epsilon": float, "normalization": _as_is,
    "chunk_size": int, "num_interests": int, "recency_bias": bool, "use_memory": bool,
    "memory_keys": int, "memory_top_m": int,
}


@C.register
class SequenceEncoder(keras.layers.Layer):
    """Item ids ``[batch, L]`` (int, 0 = padding, left-padded, ``L <= max_len``) ->
    ``[batch, L, d]``.

    The Keras 3 twin of :class:`tfrs_linear.layers.SequenceEncoder`, with the same
    arguments, defaults and configuration: ``embed -> + learned position -> LayerNorm ->
    dropout -> num_layers TransformerBlocks`` (``"softmax"``, ``"linrec"`` or
    ``"elastic"``); padded positions output 0. ``encoder(ids, last_only=True)`` returns
    the newest position only, ``[batch, 1, d]``, equal to ``encoder(ids)[:, -1:]``. It
    computes at the input's width: a row gives the same states at any width that holds it
    (the newest item takes the last position embedding; padding is masked), so batches
    of short histories may be cut to fewer columns (one compilation per width).
    Non-causal ELASTIC blocks hand their interests on (only the block that starts the
    chain has tokens of its own; with ``use_memory`` an :class:`InterestMemory` starts
    it). ``item_embedding`` shares an existing ``keras.layers.Embedding`` (e.g. with a
    tied candidate tower); it is not part of the configuration.
    """

    def __init__(self, vocab_size, max_len, d_model=64, num_layers=2, num_heads=2,
                 ffn_dim=256, attention="linrec", causal=True, dropout=0.2,
                 attention_dropout=0.2, layer_norm_epsilon=1e-12, normalization="paper",
                 chunk_size=32, num_interests=16, recency_bias=False, use_memory=False,
                 memory_keys=128, memory_top_m=8, item_embedding=None, **kwargs):
        super().__init__(**kwargs)
        arguments = locals()
        for name, cast in _ARGUMENTS.items():
            setattr(self, name, cast(arguments[name]))
        if self.use_memory and (self.attention != "elastic" or self.causal):
            raise ValueError("use_memory needs attention='elastic' and a non-causal encoder.")
        policy = self.dtype_policy
        self.item_embedding = item_embedding or keras.layers.Embedding(
            self.vocab_size, self.d_model, embeddings_initializer=embedding_initializer(),
            dtype=policy, name="item_embedding")
        self.position_embedding = keras.layers.Embedding(
            self.max_len, self.d_model, embeddings_initializer=embedding_initializer(),
            dtype=policy, name="position_embedding")
        self.input_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="input_norm")
        self.input_dropout = CounterDropout(self.dropout, dtype=policy)
        self.blocks = [self._make_block(i) for i in range(self.num_layers)]
        self.memory = None
        if self.use_memory:
            self.memory = InterestMemory(
                num_interests=self.num_interests, num_keys=self.memory_keys,
                top_m=self.memory_top_m, dtype=policy, name="interest_memory")

    @property
    def hands_off_interests(self):
        """Whether the blocks hand ELASTIC's interests on (non-causal ELASTIC)."""
        return self.attention == "elastic" and not self.causal

    def _make_block(self, i):
        starts_chain = i == 0 and not self.use_memory
        return TransformerBlock(
            num_heads=self.num_heads, ffn_dim=self.ffn_dim, attention=self.attention,
            causal=self.causal, dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            layer_norm_epsilon=self.layer_norm_epsilon, normalization=self.normalization,
            chunk_size=self.chunk_size, num_interests=self.num_interests,
            learned_interests=not self.hands_off_interests or starts_chain,
            recency_bias=self.recency_bias, dtype=self.dtype_policy, name=f"block_{i}")

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"item_ids must be [batch, length], got shape {input_shape}.")
        shape = (input_shape[0], self.max_len, self.d_model)
        if not self.item_embedding.built:
            self.item_embedding.build(tuple(input_shape))
        self.position_embedding.build((self.max_len,))
        self.input_norm.build(shape)
        for block in self.blocks:
            block.build(shape)
        if self.memory is not None:
            self.memory.build(shape)

    def _check_ids(self, item_ids):
        if len(item_ids.shape) != 2:
            raise ValueError(
                f"item_ids must be [batch, length], got shape {tuple(item_ids.shape)}.")
        if item_ids.shape[1] is not None and item_ids.shape[1] > self.max_len:
            raise ValueError(
                f"item_ids are {item_ids.shape[1]} long, longer than max_len={self.max_len}: "
                f"keep each user's newest {self.max_len} items.")

    def _embed(self, item_ids, mask, training):
        """Item + position embeddings, LayerNorm, dropout; padded positions are 0."""
        x = self.item_embedding(item_ids)
        width = item_ids.shape[1] if item_ids.shape[1] is not None else ops.shape(item_ids)[1]
        # The newest item (the last column) takes row max_len - 1, whatever the width.
        positions = self.position_embedding(ops.arange(self.max_len - width, self.max_len))
        x = x + ops.cast(positions, x.dtype)[None]
        x = self.input_dropout(self.input_norm(x), training=training)
        return x * ops.cast(mask, x.dtype)[:, :, None]

    def call(self, item_ids, training=None, last_only=False):
        item_ids = ops.convert_to_tensor(item_ids)
        self._check_ids(item_ids)
        mask = ops.not_equal(item_ids, PAD_INDEX)
        x = self._embed(item_ids, mask, training)
        interests = None
        if self.memory is not None:
            interests = self.memory(x, mask=mask)
        for i, block in enumerate(self.blocks):
            last = bool(last_only) and i == len(self.blocks) - 1
            if self.hands_off_interests:
                x, interests = block(x, mask=mask, training=training, interests=interests,
                                     return_interests=True, last_only=last)
            else:
                x = block(x, mask=mask, training=training, last_only=last)
        return x

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in _ARGUMENTS})
        return config
