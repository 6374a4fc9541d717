"""The sequence encoder: the query tower of a sequential retrieval model."""

import tensorflow as tf

from tfrs_linear.constants import PAD_INDEX
from tfrs_linear.layers.interest_memory import InterestMemory
from tfrs_linear.layers.transformer import TransformerBlock


def embedding_initializer():
    """The initializer of every item and position embedding table: N(0, 0.02), as in
    SASRec/RecBole."""
    return tf.keras.initializers.RandomNormal(stddev=0.02)


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


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class SequenceEncoder(tf.keras.layers.Layer):
    """Item ids ``[batch, max_len]`` (int, 0 = padding, left-padded) → ``[batch, max_len, d]``.

    The query tower of SASRec-style models: ``embed -> + learned position -> LayerNorm ->
    dropout -> num_layers TransformerBlocks``, whose attention is ``"softmax"``,
    ``"linrec"`` or ``"elastic"``. Sequences are left-padded to a fixed ``max_len``
    (newest item last), so every shape is static and XLA compiles one program; padded
    positions output 0.

    ``encoder(item_ids, last_only=True)`` returns the newest position only,
    ``[batch, 1, d]``, equal to ``encoder(item_ids)[:, -1:]``: the last block then runs
    one query (the newest position's causal prefix is the whole sequence), which is all a
    query tower, a last-position loss or a serving signature needs.

    With ``attention="elastic"`` and ``use_memory=True`` (non-causal only) the first
    block's interest tokens come from an :class:`~tfrs_linear.layers.InterestMemory`
    read with the embedded sequence. Non-causal ELASTIC blocks hand their interests to
    the next block, so only the block that starts the chain has interest tokens of its
    own (none behind the memory).

    A model configuration builds one without copying fields:
    ``SequenceEncoder(vocab_size, **model_config.encoder_kwargs())``.

    Args:
        vocab_size: rows of the item embedding (0 = padding, 1 = OOV, then the items).
        max_len: the sequence length every input is left-padded to.
        d_model: the model width.
        num_layers: the number of :class:`~tfrs_linear.layers.TransformerBlock` s.
        num_heads: attention heads per block (``d_model`` must be divisible by it).
        ffn_dim: the feed-forward width of each block.
        attention: ``"softmax"``, ``"linrec"`` or ``"elastic"``.
        causal: whether position t only sees positions <= t.
        dropout: dropout after the input LayerNorm and inside the blocks.
        attention_dropout: the blocks' attention dropout.
        layer_norm_epsilon: epsilon of every LayerNorm.
        normalization: LinRec's ``"paper"`` or ``"token"`` normalization.
        chunk_size: chunk length of the causal linear attentions.
        num_interests: ELASTIC's interest tokens.
        recency_bias: ELASTIC's learned per-interest recency slopes.
        use_memory: read the first block's interests from a product-key memory
            (ELASTIC, non-causal only).
        memory_keys: the memory's sub-keys per half (``memory_keys²`` rows).
        memory_top_m: memory rows read per query.
        item_embedding: an existing ``Embedding`` layer to share (e.g. with a tied
            candidate tower); a new one named ``"item_embedding"`` otherwise.
        **kwargs: ``tf.keras.layers.Layer`` arguments (``name``, ``dtype``...).
    """

    def __init__(
        self,
        vocab_size,
        max_len,
        d_model=64,
        num_layers=2,
        num_heads=2,
        ffn_dim=256,
        attention="linrec",
        causal=True,
        dropout=0.2,
        attention_dropout=0.2,
        layer_norm_epsilon=1e-12,
        normalization="paper",
        chunk_size=64,
        num_interests=16,
        recency_bias=False,
        use_memory=False,
        memory_keys=128,
        memory_top_m=8,
        item_embedding=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        arguments = locals()  # exactly the named arguments above, plus self/kwargs/item_embedding
        for name, cast in _ARGUMENTS.items():
            setattr(self, name, cast(arguments[name]))
        if self.use_memory and (self.attention != "elastic" or self.causal):
            raise ValueError("use_memory needs attention='elastic' and a non-causal encoder.")
        # Sub-layers keep their attribute names: they are the checkpoints' keys.
        self._build_embeddings(item_embedding)
        self.blocks = [self._make_block(i) for i in range(self.num_layers)]
        self.memory = self._make_memory() if self.use_memory else None

    # -- construction steps -----------------------------------------------------------
    @property
    def hands_off_interests(self):
        """Whether the blocks hand ELASTIC's interests on (non-causal ELASTIC)."""
        return self.attention == "elastic" and not self.causal

    def _build_embeddings(self, item_embedding):
        self.item_embedding = item_embedding or tf.keras.layers.Embedding(
            self.vocab_size,
            self.d_model,
            embeddings_initializer=embedding_initializer(),
            name="item_embedding",
        )
        self.position_embedding = tf.keras.layers.Embedding(
            self.max_len,
            self.d_model,
            embeddings_initializer=embedding_initializer(),
            name="position_embedding",
        )
        self.input_norm = tf.keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="input_norm"
        )
        self.input_dropout = tf.keras.layers.Dropout(self.dropout)

    def _make_block(self, i):
        # Non-causal ELASTIC hands P' from block to block (and the memory gives the first
        # P): only a block that starts the chain has interest tokens of its own.
        starts_chain = i == 0 and not self.use_memory
        return TransformerBlock(
            num_heads=self.num_heads,
            ffn_dim=self.ffn_dim,
            attention=self.attention,
            causal=self.causal,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
            normalization=self.normalization,
            chunk_size=self.chunk_size,
            num_interests=self.num_interests,
            learned_interests=not self.hands_off_interests or starts_chain,
            recency_bias=self.recency_bias,
            name=f"block_{i}",
        )

    def _make_memory(self):
        return InterestMemory(
            num_interests=self.num_interests,
            num_keys=self.memory_keys,
            top_m=self.memory_top_m,
            name="interest_memory",
        )

    # -- forward ------------------------------------------------------------------------
    def _check_ids(self, item_ids):
        if item_ids.shape.rank != 2:
            raise ValueError(f"item_ids must be [batch, max_len], got shape {item_ids.shape}.")
        if item_ids.shape[1] is not None and item_ids.shape[1] != self.max_len:
            raise ValueError(
                f"item_ids must be left-padded to max_len={self.max_len}, got length "
                f"{item_ids.shape[1]}."
            )

    def _embed(self, item_ids, mask, training):
        """Item + position embeddings, LayerNorm, dropout; padded positions are 0."""
        x = self.item_embedding(item_ids)
        positions = self.position_embedding(tf.range(self.max_len))
        x = x + tf.cast(positions, x.dtype)[tf.newaxis]
        x = self.input_dropout(self.input_norm(x), training=training)
        return x * tf.cast(mask, x.dtype)[:, :, tf.newaxis]

    def call(self, item_ids, training=None, last_only=False):
        item_ids = tf.convert_to_tensor(item_ids)
        self._check_ids(item_ids)
        mask = tf.not_equal(item_ids, PAD_INDEX)
        x = self._embed(item_ids, mask, training)
        interests = None
        if self.memory is not None:
            interests = self.memory(x, mask=mask)
        for i, block in enumerate(self.blocks):
            last = bool(last_only) and i == len(self.blocks) - 1
            if self.hands_off_interests:
                x, interests = block(
                    x,
                    mask=mask,
                    training=training,
                    interests=interests,
                    return_interests=True,
                    last_only=last,
                )
            else:
                x = block(x, mask=mask, training=training, last_only=last)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in _ARGUMENTS})
        return config


__all__ = ["SequenceEncoder", "embedding_initializer"]
