"""`TransformerBlock`: one encoder block whose attention is chosen by name."""

import tensorflow as tf

from tfrs_linear.constants import ATTENTIONS
from tfrs_linear.layers.dispatcher import LinearDispatcherAttention
from tfrs_linear.layers.dropout import CounterDropout
from tfrs_linear.layers.linrec import LinRecAttention
from tfrs_linear.layers.softmax import SoftmaxAttention


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class TransformerBlock(tf.keras.layers.Layer):
    """Attention -> dropout -> residual -> LayerNorm -> FFN -> dropout -> residual -> LayerNorm.

    The post-LN block of SASRec/RecBole, so that the three attentions are compared on the
    same architecture. ``attention`` picks the mechanism:

    * ``"softmax"``: :class:`~tfrs_linear.layers.SoftmaxAttention`, Keras'
      ``MultiHeadAttention`` (O(N²)) with a cheaper probability dropout, the baseline;
    * ``"linrec"``: :class:`~tfrs_linear.layers.LinRecAttention`;
    * ``"elastic"``: :class:`~tfrs_linear.layers.LinearDispatcherAttention`; the block
      then also takes and can return the interest tokens handed from block to block.

    Args:
      num_heads: attention heads.
      key_dim: width per head (default ``d_model // num_heads``).
      ffn_dim: hidden width of the feed-forward network (default ``4 * d_model``).
      attention: ``"softmax" | "linrec" | "elastic"``.
      causal: causal (unidirectional) attention.
      dropout: dropout of the attention and FFN outputs (hidden dropout).
      attention_dropout: dropout inside the attention (default ``dropout``).
      activation: FFN activation (default ``"gelu"``, as SASRec in RecBole).
      layer_norm_epsilon: LayerNorm epsilon.
      normalization, chunk_size, epsilon: LinRec's options.
      num_interests: ELASTIC's ``k``.
      learned_interests: ELASTIC only: the attention's own interest tokens (default);
        ``False`` for a non-causal block that always receives ``interests``.
      recency_bias: ELASTIC only: learned per-interest recency slopes on the aggregate
        logits (see :class:`LinearDispatcherAttention`).

    Call: ``block(inputs, mask=None, training=None, interests=None,
    return_interests=False, last_only=False)``; inputs ``[batch, length, d_model]``,
    ``mask`` a ``[batch, length]`` padding mask (or the Keras mask). Padded positions
    output 0. ``last_only=True`` computes the last (newest) position only and returns
    ``[batch, 1, d_model]``, equal to ``block(...)[:, -1:]`` causal or not: the newest
    position's causal prefix is the whole sequence, so its attention is one query over
    all keys (O(N) instead of the whole block's O(N²) or O(N)). The output's Keras mask
    is computed with the output (as ``tf.keras.layers.Masking`` does): the input mask,
    or its last column for a last-only call.
    """

    def __init__(
        self,
        num_heads,
        key_dim=None,
        ffn_dim=None,
        attention="softmax",
        causal=False,
        dropout=0.0,
        attention_dropout=None,
        activation="gelu",
        layer_norm_epsilon=1e-12,
        normalization="paper",
        chunk_size=32,
        epsilon=1e-6,
        num_interests=16,
        learned_interests=True,
        recency_bias=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attention not in ATTENTIONS:
            raise ValueError(
                f"attention must be one of {ATTENTIONS}, got {attention!r}."
            )
        self.num_heads = int(num_heads)
        self.key_dim = None if key_dim is None else int(key_dim)
        self.ffn_dim = None if ffn_dim is None else int(ffn_dim)
        self.attention = attention
        self.causal = bool(causal)
        self.dropout = float(dropout)
        self.attention_dropout = (
            self.dropout if attention_dropout is None else float(attention_dropout)
        )
        self.activation = activation
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.normalization = normalization
        self.chunk_size = int(chunk_size)
        self.epsilon = float(epsilon)
        self.num_interests = int(num_interests)
        self.learned_interests = bool(learned_interests)
        self.recency_bias = bool(recency_bias)
        self.supports_masking = True
        # `call` attaches the output's Keras mask itself (it depends on `last_only`,
        # which `compute_mask` is not given).
        self._compute_output_and_mask_jointly = True

    def build(self, input_shape):
        d_model = int(input_shape[-1])
        if self.key_dim is None and d_model % self.num_heads:
            raise ValueError(
                f"d_model={d_model} is not divisible by num_heads={self.num_heads}; "
                "pass key_dim explicitly."
            )
        key_dim = self.key_dim or d_model // self.num_heads
        ffn_dim = self.ffn_dim or 4 * d_model
        common = dict(
            num_heads=self.num_heads,
            key_dim=key_dim,
            dropout=self.attention_dropout,
            dtype=self.dtype_policy,
            name="attention",
        )
        if self.attention == "softmax":
            self.attention_layer = SoftmaxAttention(**common)
        elif self.attention == "linrec":
            # Causal through `use_causal_mask` at each call (not the constructor's
            # always-causal flag), so that `last_only` can attend the newest position
            # over the whole sequence (its causal prefix) in one non-causal call.
            self.attention_layer = LinRecAttention(
                normalization=self.normalization,
                causal=False,
                chunk_size=self.chunk_size,
                epsilon=self.epsilon,
                **common,
            )
        else:
            self.attention_layer = LinearDispatcherAttention(
                num_interests=self.num_interests,
                causal=self.causal,
                learned_interests=self.learned_interests,
                recency_bias=self.recency_bias,
                **common,
            )
        # Create the attention's variables now (MultiHeadAttention would otherwise make
        # them lazily at its first call, after a SavedModel restore has run).
        if self.attention == "elastic":
            self.attention_layer.build(input_shape)
        else:
            shape = tf.TensorShape(input_shape)
            self.attention_layer._build_from_signature(query=shape, value=shape)
        self.attention_dropout_layer = CounterDropout(self.dropout)
        self.attention_norm = tf.keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="attention_norm"
        )
        self.ffn_inner = tf.keras.layers.Dense(
            ffn_dim, activation=self.activation, name="ffn_inner"
        )
        self.ffn_outer = tf.keras.layers.Dense(d_model, name="ffn_outer")
        self.ffn_dropout = CounterDropout(self.dropout)
        self.ffn_norm = tf.keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="ffn_norm"
        )
        super().build(input_shape)

    def _attend(self, x, mask, training, interests, last_only):
        if self.attention == "elastic":
            return self.attention_layer(
                x, mask=mask, interests=interests, training=training, last_only=last_only
            )
        # A last-only query is the newest position, whose causal prefix is the whole
        # sequence: it attends over every real item with no causal mask.
        query = x[:, -1:, :] if last_only else x
        causal = self.causal and not last_only
        attention_mask = mask
        if self.attention == "softmax" and mask is not None:
            m = tf.cast(mask, tf.bool)
            query_mask = m[:, -1:] if last_only else m
            attention_mask = query_mask[:, :, tf.newaxis] & m[:, tf.newaxis, :]
        y = self.attention_layer(
            query, x, attention_mask=attention_mask, training=training, use_causal_mask=causal
        )
        return y, None

    def call(
        self,
        inputs,
        mask=None,
        training=None,
        interests=None,
        return_interests=False,
        last_only=False,
    ):
        if interests is not None and self.attention != "elastic":
            raise ValueError(
                f"`interests` are only used by attention='elastic', not {self.attention!r}."
            )
        x = inputs
        y, interests = self._attend(x, mask, training, interests, last_only)
        if last_only:
            x = x[:, -1:, :]
            mask = None if mask is None else mask[:, -1:]
        x = self.attention_norm(x + self.attention_dropout_layer(y, training=training))
        y = self.ffn_outer(self.ffn_inner(x))
        x = self.ffn_norm(x + self.ffn_dropout(y, training=training))
        if mask is not None:
            x = x * tf.cast(mask, x.dtype)[:, :, tf.newaxis]
            # The output's Keras mask: the input mask (its last column if last_only).
            x._keras_mask = mask
        if return_interests:
            return x, interests
        return x

    # -- the recurrent (streaming) form ------------------------------------------------
    @property
    def streamable(self):
        """Whether the block has a constant-size per-user state (causal LinRec/ELASTIC)."""
        return self.causal and self.attention != "softmax"

    def _check_streamable(self):
        if self.attention == "softmax":
            raise ValueError(
                "a softmax TransformerBlock has no constant-size state: each new event "
                "attends every earlier key, so streaming it needs a key/value cache that "
                "grows with the history. Use attention='linrec' or 'elastic' (causal)."
            )
        if not self.causal:
            raise ValueError(
                f"a non-causal {self.attention!r} TransformerBlock has no per-user state: "
                "every position sees the whole sequence, so a new event changes every "
                "earlier output. Build it with causal=True to stream."
            )
        if not self.built:
            raise ValueError("TransformerBlock.initial_state/step need a built block.")

    def initial_state(self, batch):
        """The attention's state of ``batch`` users with no event yet (a dict of float32
        tensors of static shape; see the attention's ``initial_state``)."""
        self._check_streamable()
        return self.attention_layer.initial_state(batch)

    def step(self, state, inputs, mask=None):
        """The block over ``m`` new events per user given the past's attention ``state``.

        ``inputs [B, m, d_model]`` oldest first, rows right-padded where ``mask [B, m]``
        is False. Returns ``(new_state, outputs [B, m, d_model])``: equal to a causal
        call on the whole history at those events (padded events output 0). Inference
        only (no dropout).
        """
        self._check_streamable()
        state, y = self.attention_layer.step(state, inputs, mask)
        x = self.attention_norm(inputs + y)
        # The feed-forward on [B*m, d]: one MatMul per Dense instead of Keras' Tensordot
        # over a dynamic batch (about 20 graph nodes each), which counts in a served
        # batch-1 step of a few hundred cheap nodes. (The norms keep the 3-D input they
        # were built on.)
        h = self.ffn_outer(self.ffn_inner(tf.reshape(x, [-1, tf.shape(x)[-1]])))
        x = self.ffn_norm(x + tf.reshape(h, tf.shape(x)))
        if mask is not None:
            x = x * tf.cast(mask, x.dtype)[:, :, tf.newaxis]
        return state, x

    def advance(self, state, inputs, mask=None):
        """The attention's state after ``m`` events per user (``inputs [B, m, d_model]``,
        the block's inputs; ``mask [B, m]`` on either padding side), without outputs."""
        self._check_streamable()
        return self.attention_layer.advance(state, inputs, mask)

    def compute_mask(self, inputs, mask=None):
        """The output mask of a full call (a last-only call attaches ``mask[:, -1:]``)."""
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            ffn_dim=self.ffn_dim,
            attention=self.attention,
            causal=self.causal,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            normalization=self.normalization,
            chunk_size=self.chunk_size,
            epsilon=self.epsilon,
            num_interests=self.num_interests,
            learned_interests=self.learned_interests,
            recency_bias=self.recency_bias,
        )
        return config
