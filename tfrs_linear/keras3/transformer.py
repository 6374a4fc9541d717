"""Keras 3 `TransformerBlock`: one post-LN encoder block whose attention is chosen by name."""

import keras
from keras import ops

from tfrs_linear.constants import ATTENTIONS, NORMALIZATIONS
from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3.dispatcher import LinearDispatcherAttention
from tfrs_linear.keras3.dropout import CounterDropout
from tfrs_linear.keras3.linrec import LinRecAttention


@C.register
class TransformerBlock(keras.layers.Layer):
    """Attention -> dropout -> residual -> LayerNorm -> FFN -> dropout -> residual -> LayerNorm.

    The Keras 3 twin of :class:`tfrs_linear.layers.TransformerBlock` (the post-LN block
    of SASRec/RecBole), same arguments, defaults and configuration. ``attention``:
    ``"softmax"`` (``keras.layers.MultiHeadAttention``), ``"linrec"``
    (:class:`LinRecAttention`) or ``"elastic"`` (:class:`LinearDispatcherAttention`,
    which also takes and can return the interests handed from block to block).

    Call: ``block(inputs, mask=None, training=None, interests=None,
    return_interests=False, last_only=False)``; ``mask`` a ``[batch, length]`` padding
    mask (or the Keras mask of ``inputs``). Padded positions output exactly 0.
    ``last_only=True`` computes the newest position only, ``[batch, 1, d_model]``, equal
    to ``block(...)[:, -1:]``.

    Streaming (causal ``"linrec"`` and ``"elastic"`` blocks): :meth:`initial_state`,
    :meth:`step` and :meth:`advance`, as on the tf-keras block.
    """

    def __init__(self, num_heads, key_dim=None, ffn_dim=None, attention="softmax",
                 causal=False, dropout=0.0, attention_dropout=None, activation="gelu",
                 layer_norm_epsilon=1e-12, normalization="paper", chunk_size=32,
                 epsilon=1e-6, num_interests=16, learned_interests=True,
                 recency_bias=False, **kwargs):
        super().__init__(**kwargs)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.num_heads = int(num_heads)
        self.key_dim = None if key_dim is None else int(key_dim)
        self.ffn_dim = None if ffn_dim is None else int(ffn_dim)
        self.attention, self.causal = attention, bool(causal)
        self.dropout = float(dropout)
        self.attention_dropout = self.dropout if attention_dropout is None else float(
            attention_dropout)
        self.activation = activation
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.normalization, self.chunk_size = normalization, int(chunk_size)
        self.epsilon, self.num_interests = float(epsilon), int(num_interests)
        self.learned_interests, self.recency_bias = bool(learned_interests), bool(recency_bias)
        self.supports_masking = True
        self._last_only_call = False

    def _make_attention(self, key_dim):
        common = dict(num_heads=self.num_heads, key_dim=key_dim,
                      dropout=self.attention_dropout, dtype=self.dtype_policy,
                      name="attention")
        if self.attention == "softmax":
            return keras.layers.MultiHeadAttention(**common)
        if self.attention == "linrec":
            # Causal through `use_causal_mask` at each call, so that `last_only` can
            # attend the newest position over its whole prefix in one non-causal call.
            return LinRecAttention(normalization=self.normalization, causal=False,
                                   chunk_size=self.chunk_size, epsilon=self.epsilon,
                                   **common)
        return LinearDispatcherAttention(num_interests=self.num_interests,
                                         causal=self.causal,
                                         learned_interests=self.learned_interests,
                                         recency_bias=self.recency_bias, **common)

    def build(self, input_shape):
        d_model = C.check_rank3("TransformerBlock", input_shape)
        if self.key_dim is None and d_model % self.num_heads:
            raise ValueError(
                f"d_model={d_model} is not divisible by num_heads={self.num_heads}; "
                "pass key_dim explicitly.")
        key_dim = self.key_dim or d_model // self.num_heads
        ffn_dim = self.ffn_dim or 4 * d_model
        shape = tuple(input_shape)
        self.attention_layer = self._make_attention(key_dim)
        if self.attention == "elastic":
            self.attention_layer.build(shape)
        else:
            self.attention_layer.build(shape, shape)
        policy = self.dtype_policy
        self.attention_dropout_layer = CounterDropout(self.dropout, dtype=policy)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="attention_norm")
        self.ffn_inner = keras.layers.Dense(ffn_dim, activation=self.activation,
                                            dtype=policy, name="ffn_inner")
        self.ffn_outer = keras.layers.Dense(d_model, dtype=policy, name="ffn_outer")
        self.ffn_dropout = CounterDropout(self.dropout, dtype=policy)
        self.ffn_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="ffn_norm")
        self.attention_norm.build(shape)
        self.ffn_inner.build(shape)
        self.ffn_outer.build(shape[:-1] + (ffn_dim,))
        self.ffn_norm.build(shape)

    def _attend(self, x, mask, training, interests, last_only):
        if self.attention == "elastic":
            return self.attention_layer(x, mask=mask, interests=interests,
                                        training=training, last_only=last_only)
        # A last-only query is the newest position: its causal prefix is the whole
        # sequence, so it attends over every real item with no causal mask.
        query = x[:, -1:, :] if last_only else x
        causal = self.causal and not last_only
        attention_mask = mask
        if self.attention == "softmax" and mask is not None:
            query_mask = mask[:, -1:] if last_only else mask
            attention_mask = ops.logical_and(query_mask[:, :, None], mask[:, None, :])
        y = self.attention_layer(query, x, attention_mask=attention_mask,
                                 training=training, use_causal_mask=causal)
        return y, None

    def call(self, inputs, mask=None, training=None, interests=None,
             return_interests=False, last_only=False):
        if interests is not None and self.attention != "elastic":
            raise ValueError(
                f"`interests` are only used by attention='elastic', not {self.attention!r}.")
        mask = C.as_bool_mask(mask if mask is not None else C.keras_mask(inputs))
        self._last_only_call = bool(last_only)
        x = inputs
        y, interests = self._attend(x, mask, training, interests, last_only)
        if last_only:
            x = x[:, -1:, :]
            mask = None if mask is None else mask[:, -1:]
        x = self.attention_norm(x + self.attention_dropout_layer(y, training=training))
        y = self.ffn_outer(self.ffn_inner(x))
        x = self.ffn_norm(x + self.ffn_dropout(y, training=training))
        if mask is not None:
            x = x * ops.cast(mask, x.dtype)[:, :, None]
        if return_interests:
            return x, interests
        return x

    def compute_output_spec(self, inputs, mask=None, training=None, interests=None,
                            return_interests=False, last_only=False):
        # Shapes without tracing `call` (ELASTIC's causal chunking needs a static length
        # on JAX).
        self._last_only_call = bool(last_only)
        batch, length, dim = inputs.shape
        out = keras.KerasTensor((batch, 1 if last_only else length, dim), self.compute_dtype)
        if not return_interests:
            return out
        if self.attention != "elastic":
            return out, None
        return out, keras.KerasTensor((batch, self.num_interests, dim), self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if mask is not None and self._last_only_call:
            return mask[:, -1:]
        return mask

    # -- the recurrent (streaming) form -----------------------------------------------
    def _check_streamable(self):
        if self.attention == "softmax" or not self.causal:
            why = ("softmax attention has no constant-size state (its key/value cache grows "
                   "with the history)" if self.attention == "softmax" else
                   "a non-causal block has no per-user state: every position sees the "
                   "whole sequence, so a new event changes every earlier output")
            raise ValueError(f"TransformerBlock(attention={self.attention!r}, causal="
                             f"{self.causal}) cannot stream: {why}. Streaming needs "
                             "attention='linrec' or 'elastic' with causal=True.")
        if not self.built:
            raise ValueError("TransformerBlock.initial_state/step/advance need a built block.")

    def initial_state(self, batch):
        """The attention's state of ``batch`` users with no event yet (a dict of float32
        arrays of fixed shapes; :meth:`LinRecAttention.initial_state`)."""
        self._check_streamable()
        return self.attention_layer.initial_state(batch)

    def step(self, state, inputs, mask=None):
        """The block over ``m`` new events per user given the past's attention ``state``.

        ``inputs [B, m, d_model]`` oldest first, rows right-padded where ``mask [B, m]``
        is False. Returns ``(new_state, outputs [B, m, d_model])``: a causal call on the
        whole history at those events (padded events output 0). No dropout.
        """
        self._check_streamable()
        inputs = ops.convert_to_tensor(inputs)
        state, y = self.attention_layer.step(state, inputs, mask)
        x = self.attention_norm(inputs + y)
        x = self.ffn_norm(x + self.ffn_outer(self.ffn_inner(x)))
        if mask is not None:
            x = x * ops.cast(mask, x.dtype)[:, :, None]
        return state, x

    def advance(self, state, inputs, mask=None):
        """The attention's state after ``m`` events per user (the block's ``inputs [B, m,
        d_model]``, ``mask [B, m]`` on either padding side), without outputs."""
        self._check_streamable()
        return self.attention_layer.advance(state, inputs, mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads, key_dim=self.key_dim, ffn_dim=self.ffn_dim,
            attention=self.attention, causal=self.causal, dropout=self.dropout,
            attention_dropout=self.attention_dropout, activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon, normalization=self.normalization,
            chunk_size=self.chunk_size, epsilon=self.epsilon,
            num_interests=self.num_interests, learned_interests=self.learned_interests,
            recency_bias=self.recency_bias,
        )
        return config
