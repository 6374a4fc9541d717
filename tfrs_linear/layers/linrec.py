"""`LinRecAttention`: a drop-in replacement for `tf.keras.layers.MultiHeadAttention`."""

import tensorflow as tf

from tfrs_linear.ops import linrec as linrec_ops

_MHA = tf.keras.layers.MultiHeadAttention


class _Masks:
    """The padding masks and causal flag handed from `call` to `_compute_attention`."""

    __slots__ = ("query_mask", "key_mask", "causal")

    def __init__(self, query_mask, key_mask, causal):
        self.query_mask = query_mask
        self.key_mask = key_mask
        self.causal = causal


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class LinRecAttention(_MHA):
    """LinRec L2-normalized linear attention (Liu et al., SIGIR 2023).

    A subclass of ``tf.keras.layers.MultiHeadAttention`` that replaces only the attention
    itself (``_compute_attention``): projections, initializers, regularizers, dtype
    policy, Keras mask propagation and the call signature are the parent's. Time and
    memory are linear in the sequence length.

    Args:
      num_heads, key_dim, value_dim, dropout, use_bias, output_shape,
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in
        ``MultiHeadAttention``. ``dropout`` applies to the attention output of each head
        before the output projection (the N x N matrix is never formed).
      normalization: ``"paper"`` (default) or ``"token"`` (the official code's form).
      causal: always causal (the same as ``use_causal_mask=True`` at every call).
      chunk_size: chunk length of the causal computation.
      epsilon: the floor of every norm.
      attention_axes: only ``None`` (or the sequence axis, 1) is supported.

    Call arguments are those of ``MultiHeadAttention``:
    ``(query, value, key=None, attention_mask=None, return_attention_scores=False,
    training=None, use_causal_mask=False)``. Inputs are ``[batch, length, dim]``. Keras
    masks (``Embedding(mask_zero=True)``) are honoured; ``attention_mask`` may be a
    ``[batch, length]`` padding mask of the keys (and of the queries in self-attention).
    A rank-3 pairwise mask is refused: linear attention takes padding and causal masks
    only. ``return_attention_scores=True`` also returns the implicit
    ``[batch, heads, T, S]`` matrix, which costs O(N²): for inspection only.
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_shape=None,
        attention_axes=None,
        normalization="paper",
        causal=False,
        chunk_size=64,
        epsilon=1e-6,
        **kwargs,
    ):
        if normalization not in linrec_ops.NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {linrec_ops.NORMALIZATIONS}, got "
                f"{normalization!r}."
            )
        if attention_axes is not None:
            axes = (
                tuple(attention_axes)
                if isinstance(attention_axes, (list, tuple))
                else (attention_axes,)
            )
            if axes not in ((1,), (-2,)):
                raise ValueError(
                    "LinRecAttention attends over the sequence axis only "
                    f"(attention_axes=None or 1), got attention_axes={attention_axes!r}."
                )
            attention_axes = None
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        kwargs.pop("softmax_robust_masking", None)
        super().__init__(
            num_heads=num_heads,
            key_dim=key_dim,
            value_dim=value_dim,
            dropout=dropout,
            use_bias=use_bias,
            output_shape=output_shape,
            attention_axes=attention_axes,
            **kwargs,
        )
        self.normalization = normalization
        self.causal = bool(causal)
        self.chunk_size = int(chunk_size)
        self.epsilon = float(epsilon)
        self._return_scores = False
        self._use_causal = self.causal

    def get_config(self):
        config = super().get_config()
        config.pop("softmax_robust_masking", None)
        config.pop("attention_axes", None)
        config.update(
            normalization=self.normalization,
            causal=self.causal,
            chunk_size=self.chunk_size,
            epsilon=self.epsilon,
        )
        return config

    def _build_from_signature(self, query, value, key=None):
        for name, x in (("query", query), ("value", value), ("key", key)):
            if x is None:
                continue
            shape = tf.TensorShape(x.shape if hasattr(x, "shape") else x)
            if shape.rank is not None and shape.rank != 3:
                raise ValueError(
                    f"LinRecAttention expects `{name}` shaped [batch, length, dim], got "
                    f"shape {shape}."
                )
        super()._build_from_signature(query, value, key)

    def call(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        # Python-side flags read by the hooks below while this call traces.
        self._return_scores = bool(return_attention_scores)
        self._use_causal = self.causal or bool(use_causal_mask)
        return super().call(
            query,
            value,
            key=key,
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
            training=training,
            use_causal_mask=False,
        )

    def _compute_attention_mask(
        self, query, value, key=None, attention_mask=None, use_causal_mask=False
    ):
        def keras_mask(x):
            m = getattr(x, "_keras_mask", None)
            return None if m is None else tf.cast(m, tf.bool)

        query_mask = keras_mask(query)
        key_mask = keras_mask(value)
        if key is not None and key is not value:
            km = keras_mask(key)
            if km is not None:
                key_mask = km if key_mask is None else key_mask & km
        if attention_mask is not None:
            attention_mask = tf.convert_to_tensor(attention_mask)
            rank = attention_mask.shape.rank
            if rank != 2:
                raise ValueError(
                    "LinRecAttention takes padding and causal masks only: "
                    "`attention_mask` must be a [batch, length] padding mask (True = "
                    f"real item), got shape {attention_mask.shape}. A pairwise "
                    "[batch, T, S] mask cannot be applied without forming the N x N "
                    "matrix that linear attention avoids; use `use_causal_mask=True` "
                    "for causal masking."
                )
            padding = tf.cast(attention_mask, tf.bool)
            key_mask = padding if key_mask is None else key_mask & padding
            same_length = query.shape[1] is not None and query.shape[1] == value.shape[1]
            if same_length or self._use_causal:
                query_mask = padding if query_mask is None else query_mask & padding
        if self._use_causal:
            # Causal self-attention: one mask for both sides.
            if query_mask is not None and key_mask is not None:
                key_mask = query_mask = query_mask & key_mask
            else:
                key_mask = query_mask = (
                    query_mask if query_mask is not None else key_mask
                )
        return _Masks(query_mask, key_mask, self._use_causal)

    def _compute_attention(
        self, query, key, value, attention_mask=None, training=None
    ):
        masks = attention_mask if isinstance(attention_mask, _Masks) else None
        if masks is None and attention_mask is not None:
            raise ValueError(
                "LinRecAttention._compute_attention expects the masks built by its own "
                "_compute_attention_mask."
            )
        query_mask = masks.query_mask if masks else None
        key_mask = masks.key_mask if masks else None
        causal = masks.causal if masks else self._use_causal
        # [B, T, N, H] -> [B, N, T, H]
        q = tf.transpose(query, [0, 2, 1, 3])
        k = tf.transpose(key, [0, 2, 1, 3])
        v = tf.transpose(value, [0, 2, 1, 3])
        out = linrec_ops.linrec_attention(
            q,
            k,
            v,
            mask=key_mask,
            causal=causal,
            normalization=self.normalization,
            epsilon=self.epsilon,
            chunk_size=self.chunk_size,
            query_mask=query_mask,
        )
        scores = None
        if self._return_scores:
            scores = linrec_ops.linrec_attention_scores(
                q,
                k,
                mask=key_mask,
                causal=causal,
                normalization=self.normalization,
                epsilon=self.epsilon,
                query_mask=query_mask,
            )
        out = tf.transpose(out, [0, 2, 1, 3])  # [B, T, N, H]
        out = self._dropout_layer(out, training=training)
        return out, scores
