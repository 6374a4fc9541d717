"""Keras 3 `LinRecAttention`: a drop-in replacement for `keras.layers.MultiHeadAttention`."""

import keras
from keras import ops

from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3 import _linrec_math as M
from tfrs_linear.keras3 import _linrec_recurrent as R
from tfrs_linear.keras3.dropout import CounterDropout


class _Masks:
    """The padding masks and the causal flag handed from the mask hook to the attention."""

    __slots__ = ("query_mask", "key_mask", "causal")

    def __init__(self, query_mask, key_mask, causal):
        self.query_mask = query_mask
        self.key_mask = key_mask
        self.causal = causal


def _and(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return ops.logical_and(a, b)


def _check_axes(attention_axes):
    if attention_axes is None:
        return
    axes = tuple(attention_axes) if isinstance(attention_axes, (list, tuple)) else (
        attention_axes,
    )
    if axes not in ((1,), (-2,)):
        raise ValueError(
            "LinRecAttention attends over the sequence axis only (attention_axes=None or "
            f"1), got attention_axes={attention_axes!r}."
        )


@C.register
class LinRecAttention(keras.layers.MultiHeadAttention):
    """LinRec L2-normalized linear attention (Liu et al., SIGIR 2023) for Keras 3.

    A subclass of ``keras.layers.MultiHeadAttention`` that replaces only the attention
    itself (``_compute_attention_mask`` and ``_compute_attention``): the projections
    (the same weights, in the same order and shapes), initializers, regularizers, the
    optional gate, the dtype policy, Keras mask propagation and the call signature
    are the parent's. Time and memory are linear in the sequence length; the math is
    that of :func:`tfrs_linear.ops.linrec_attention` (``docs/linrec.md``), written in
    ``keras.ops`` so that it runs on every backend.

    Extra arguments: ``normalization`` (``"paper"``, default, or ``"token"``),
    ``causal`` (always causal, as ``use_causal_mask=True`` at every call),
    ``chunk_size`` (chunk length of the causal computation) and ``epsilon`` (the floor
    of every norm). ``dropout`` applies to each head's attention output before the
    output projection (no N x N matrix exists). ``sliding_window`` is not supported.

    Call: ``(query, value, key=None, query_mask=None, value_mask=None, key_mask=None,
    attention_mask=None, return_attention_scores=False, training=None,
    use_causal_mask=False)`` on ``[batch, length, dim]`` inputs. Keras masks are
    honoured; ``attention_mask`` may be a ``[batch, length]`` padding mask of the keys
    (and of the queries in self-attention). A pairwise ``[batch, T, S]`` mask raises a
    ``ValueError``. ``return_attention_scores=True`` also returns the implicit
    ``[batch, heads, T, S]`` matrix (O(N²), for inspection).

    Streaming (causal self-attention one event at a time, constant memory per user):
    :meth:`initial_state`, :meth:`step` and :meth:`advance`, as on the tf-keras layer.
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
        chunk_size=32,
        epsilon=1e-6,
        **kwargs,
    ):
        if normalization not in M.NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {M.NORMALIZATIONS}, got {normalization!r}."
            )
        _check_axes(attention_axes)
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        if kwargs.get("sliding_window") is not None:
            raise ValueError("LinRecAttention does not support `sliding_window`.")
        kwargs.pop("sliding_window", None)
        kwargs.pop("flash_attention", None)
        super().__init__(
            num_heads=num_heads,
            key_dim=key_dim,
            value_dim=value_dim,
            dropout=dropout,
            use_bias=use_bias,
            output_shape=output_shape,
            attention_axes=None,
            **kwargs,
        )
        self.normalization = normalization
        self.causal = bool(causal)
        self.chunk_size = int(chunk_size)
        self.epsilon = float(epsilon)

    def get_config(self):
        config = super().get_config()
        for key in ("attention_axes", "sliding_window"):
            config.pop(key, None)
        config.update(
            normalization=self.normalization,
            causal=self.causal,
            chunk_size=self.chunk_size,
            epsilon=self.epsilon,
        )
        return config

    def _build_attention(self, rank):
        """The parent's hook, with the head-output dropout a :class:`CounterDropout` of
        the same rate and seed (its hashed mask on the TensorFlow backend).

        The parent runs with a rate of 0 so that the dropout it makes (replaced, but
        still tracked) holds no seed variable: the layer's weights stay the parent's."""
        rate, self._dropout = self._dropout, 0.0
        try:
            super()._build_attention(rank)
        finally:
            self._dropout = rate
        self._dropout_layer = CounterDropout(rate=rate, dtype=self.dtype_policy, seed=self.seed)

    def build(self, query_shape, value_shape, key_shape=None):
        for name, shape in (("query", query_shape), ("value", value_shape),
                            ("key", key_shape)):
            if shape is not None and len(shape) != 3:
                raise ValueError(
                    f"LinRecAttention expects `{name}` shaped [batch, length, dim], got "
                    f"shape {tuple(shape)}."
                )
        super().build(query_shape, value_shape, key_shape)
        if self._key_dense.compute_dtype in ("float16", "bfloat16"):
            # Keys in float32 under a mixed policy (the weights are float32 already): a
            # low-precision projection rounds its matmul and bias before adding them, so
            # where they nearly cancel a key lands on exactly 0, and LinRec's causal
            # prefix column norms have gradients of order 1/epsilon there (tf-keras'
            # LinRecAttention does the same; see its _compute_keys_in_float32).
            self._key_dense.dtype_policy = "float32"

    def _compute_attention_mask(
        self,
        query,
        value,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
    ):
        causal = self.causal or bool(use_causal_mask)
        query_mask = None if query_mask is None else ops.cast(query_mask, "bool")
        keys = _and(
            None if value_mask is None else ops.cast(value_mask, "bool"),
            None if key_mask is None else ops.cast(key_mask, "bool"),
        )
        if attention_mask is not None:
            attention_mask = ops.convert_to_tensor(attention_mask)
            if len(attention_mask.shape) != 2:
                raise ValueError(
                    "LinRecAttention takes padding and causal masks only: "
                    "`attention_mask` must be a [batch, length] padding mask (True = real "
                    f"item), got shape {tuple(attention_mask.shape)}. A pairwise "
                    "[batch, T, S] mask cannot be applied without forming the N x N "
                    "matrix that linear attention avoids; use `use_causal_mask=True` "
                    "for causal masking."
                )
            padding = ops.cast(attention_mask, "bool")
            keys = _and(keys, padding)
            same_length = query.shape[1] is not None and query.shape[1] == value.shape[1]
            if same_length or causal:
                query_mask = _and(query_mask, padding)
        if causal:  # causal self-attention: one mask for both sides
            query_mask = keys = _and(query_mask, keys)
        return _Masks(query_mask, keys, causal)

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        if attention_mask is not None and not isinstance(attention_mask, _Masks):
            raise ValueError(
                "LinRecAttention._compute_attention expects the masks built by its own "
                "_compute_attention_mask."
            )
        masks = attention_mask or _Masks(None, None, self.causal or use_causal_mask)
        # [B, T, N, H] -> [B, N, T, H]
        q, k, v = (ops.transpose(x, (0, 2, 1, 3)) for x in (query, key, value))
        options = dict(
            key_mask=masks.key_mask,
            query_mask=masks.query_mask,
            causal=masks.causal,
            normalization=self.normalization,
            epsilon=self.epsilon,
        )
        out = M.linrec_attention(q, k, v, chunk_size=self.chunk_size, **options)
        scores = M.linrec_attention_scores(q, k, **options) if return_attention_scores else None
        out = ops.transpose(out, (0, 2, 1, 3))  # [B, T, N, H]
        out = self._dropout_layer(out, training=training)
        return out, scores

    def compute_output_spec(self, query, value, key=None, query_mask=None,
                            value_mask=None, key_mask=None, attention_mask=None,
                            return_attention_scores=False, training=None,
                            use_causal_mask=False):
        output_spec = super().compute_output_spec(query, value, key)
        if return_attention_scores:
            shape = (query.shape[0], self.num_heads, query.shape[1], value.shape[1])
            return output_spec, keras.KerasTensor(shape, dtype=self.compute_dtype)
        return output_spec

    # -- the recurrent (streaming) form -----------------------------------------------
    def _check_streaming(self, what, inputs=None, mask=None):
        if not self.built:
            raise ValueError(f"LinRecAttention.{what} needs a built layer (call it or "
                             "build(query_shape, value_shape) first).")
        if inputs is None:
            return
        widths = {d.kernel.shape[0] for d in (self._query_dense, self._key_dense,
                                                self._value_dense)}
        if len(inputs.shape) != 3 or len(widths) != 1 or inputs.shape[-1] not in widths:
            raise ValueError(
                f"LinRecAttention.{what} is causal self-attention: it needs inputs shaped "
                f"[batch, new_events, dim] with dim the width of query, key and value "
                f"({sorted(widths)}), got shape {tuple(inputs.shape)}.")
        if mask is not None and not C.same_shape(mask.shape, inputs.shape[:2]):
            raise ValueError(f"LinRecAttention.{what}: mask must be [batch, new_events] = "
                             f"{tuple(inputs.shape[:2])}, got shape {tuple(mask.shape)}.")

    def _state_checked(self, state, inputs):
        """``state`` checked, its values as backend tensors (a state may come back as
        NumPy arrays, e.g. from a client)."""
        R.check_state(state, self.normalization, inputs.shape[0], self.num_heads,
                      self.key_dim, self.value_dim)
        return {name: ops.convert_to_tensor(value) for name, value in state.items()}

    def _stream_heads(self, dense, inputs):
        """``dense(inputs)`` as ``[B, heads, m, width]``."""
        return ops.transpose(dense(inputs), (0, 2, 1, 3))

    def initial_state(self, batch):
        """The causal state of ``batch`` users with no event yet: a dict of float32
        zeros of fixed shapes (the keys and shapes of
        :func:`tfrs_linear.ops.linrec_initial_state`). Needs a built layer."""
        self._check_streaming("initial_state")
        return R.initial_state(batch, self.num_heads, self.key_dim, self.value_dim,
                               self.normalization)

    def step(self, state, inputs, mask=None):
        """Causal self-attention over ``m`` new events per user, given the past's state.

        ``inputs [B, m, dim]``: the new events, oldest first, rows right-padded where
        ``mask [B, m]`` is False. Returns ``(new_state, outputs [B, m, dim])``: at each
        real event the output of a causal call on the whole history at that event, in
        ``O(m)`` whatever the history's length (padded slots give the output
        projection's bias, as a padded query does in a call). No dropout: the step is
        for inference.
        """
        inputs = ops.convert_to_tensor(inputs)
        mask = None if mask is None else ops.convert_to_tensor(mask)
        self._check_streaming("step", inputs, mask)
        state = self._state_checked(state, inputs)
        q, k, v = (self._stream_heads(dense, inputs)
                   for dense in (self._query_dense, self._key_dense, self._value_dense))
        state, out = R.step(state, q, k, v, mask, self.normalization, self.epsilon,
                            self.chunk_size)
        out = ops.transpose(ops.cast(out, self.compute_dtype), (0, 2, 1, 3))
        if self._use_gate:
            out = ops.multiply(out, self._gate_dense(inputs))
        return state, self._output_dense(out)

    def advance(self, state, inputs, mask=None):
        """The state after ``m`` events per user without their outputs (:meth:`step`'s
        state, keys and values only). ``inputs [B, m, dim]`` and ``mask [B, m]`` on
        either padding side: a whole history from :meth:`initial_state` is the user's
        state in one call."""
        inputs = ops.convert_to_tensor(inputs)
        mask = None if mask is None else ops.convert_to_tensor(mask)
        self._check_streaming("advance", inputs, mask)
        state = self._state_checked(state, inputs)
        k, v = (self._stream_heads(dense, inputs) for dense in (self._key_dense,
                                                                 self._value_dense))
        return R.advance(state, k, v, mask, self.normalization, self.epsilon)
