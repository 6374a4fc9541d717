"""`LinRecAttention`: a drop-in replacement for `tf.keras.layers.MultiHeadAttention`."""

import contextlib

import tensorflow as tf

from tfrs_linear.constants import NORMALIZATIONS
from tfrs_linear.layers._common import heads_output, heads_projection
from tfrs_linear.layers.dropout import CounterDropoutMixin
from tfrs_linear.ops.linrec import linrec_attention
from tfrs_linear.ops.linrec_recurrent import linrec_advance, linrec_initial_state, linrec_step
from tfrs_linear.ops.reference import linrec_attention_scores

_MHA = tf.keras.layers.MultiHeadAttention


def _dense_inputs(query, key, value):
    """Ragged inputs as dense tensors, as ``MultiHeadAttention.call`` converts them.

    Returns ``(query, key, value, query_lengths)``; ``query_lengths`` (None for a dense
    query) turns the output back into a ragged tensor.
    """
    query_lengths = None
    if isinstance(query, tf.RaggedTensor):
        query_lengths = query.nested_row_lengths()
        query = query.to_tensor()
    key_is_ragged = isinstance(key, tf.RaggedTensor)
    value_is_ragged = isinstance(value, tf.RaggedTensor)
    if key_is_ragged and value_is_ragged:
        # Ensure they have the same shape.
        bounding_shape = tf.math.maximum(key.bounding_shape(), value.bounding_shape())
        key = key.to_tensor(shape=bounding_shape)
        value = value.to_tensor(shape=bounding_shape)
    elif key_is_ragged:
        key = key.to_tensor(shape=tf.shape(value))
    elif value_is_ragged:
        value = value.to_tensor(shape=tf.shape(key))
    return query, key, value, query_lengths


def _is_shape(x):
    """Whether ``x`` is one shape (a ``TensorShape`` or a list of dims), not a list of shapes."""
    if isinstance(x, tf.TensorShape):
        return True
    return isinstance(x, (list, tuple)) and all(d is None or isinstance(d, int) for d in x)


def _build_shapes(query_shape, value_shape, key_shape):
    """``(query, value, key)`` TensorShapes, or None when only the query's is known.

    ``build`` is called three ways: ``build(query_shape, value_shape[, key_shape])``
    (explicitly, like Keras 3's MultiHeadAttention); ``build(query_shape)`` by tf-keras'
    ``__call__`` (it passes the first input's shape only); ``build([query_shape,
    value_shape, key_shape])`` by the SavedModel loader (the ``build_input_shape`` that
    :meth:`LinRecAttention.build` records).
    """
    if value_shape is None and query_shape is not None and not _is_shape(query_shape):
        shapes = list(query_shape) + [None] * (3 - len(query_shape))
        query_shape, value_shape, key_shape = shapes[:3]
    if value_shape is None:
        return None
    key_shape = value_shape if key_shape is None else key_shape
    return tuple(tf.TensorShape(s) for s in (query_shape, value_shape, key_shape))


def _shape_of(x):
    return tf.TensorShape(x.shape if hasattr(x, "shape") else x)


def _lengths_differ(query, value):
    """Whether the static sequence lengths (axis 1) of ``query`` and ``value`` differ."""
    t_len, s_len = query.shape[1], value.shape[1]
    if (t_len is None or s_len is None) and t_len != s_len:
        # Unknown lengths are taken as equal (self-attention), as they always were.
        return False
    return t_len != s_len


def _align_keys(x, t_len, s_len):
    """``x [B, S, ...]`` cut or zero-padded to ``T`` positions along axis 1 (static lengths).

    MultiHeadAttention's causal mask is the lower-triangular ``[T, S]`` matrix (query
    ``i`` sees keys ``j <= i``): for ``T < S`` the keys past ``T`` are never seen, for
    ``T > S`` queries past ``S`` see every key, as if ``T - S`` masked keys followed.
    """
    if t_len <= s_len:
        return x[:, :t_len]
    paddings = [[0, 0], [0, t_len - s_len]] + [[0, 0]] * (x.shape.rank - 2)
    return tf.pad(x, paddings)


def _heads(dense, x):
    """``[B, m, dim] -> [B, N, m, H]``: a query/key/value projection (of the recurrent
    form, and of ``call`` when the hook is not overridden) as one 2-D MatMul
    (:func:`~tfrs_linear.layers._common.heads_projection`), in the dense layer's compute
    dtype as its own call would be (its equation is ``"abc,cde->abde"``: the layer takes
    rank-3 inputs only)."""
    kernel, bias = _dense_weights(dense)
    return heads_projection(tf.cast(x, kernel.dtype), kernel, bias)


def _merged(dense, y):
    """``[B, N, m, H] -> [B, m, dim]``: the output projection of the recurrent form as one
    2-D MatMul (:func:`~tfrs_linear.layers._common.heads_output`; the equation is
    ``"abcd,cde->abe"``)."""
    kernel, bias = _dense_weights(dense)
    return heads_output(tf.cast(y, kernel.dtype), kernel, bias)


def _dense_weights(dense):
    """``(kernel, bias or None)`` of a dense layer in its compute dtype, as its own call
    would use them (under mixed precision the variables are float32)."""
    dtype = dense.compute_dtype
    bias = None if dense.bias is None else tf.cast(dense.bias, dtype)
    return tf.cast(dense.kernel, dtype), bias


def _compute_keys_in_float32(key_dense):
    """Makes the (unbuilt) key projection compute in float32 under a float16/bfloat16
    policy.

    LinRec applies plain ELU to the keys and normalises each feature column over the
    causal prefix, so a key feature at (or near) zero at the start of a sequence divides by
    the norm's floor: the gradient there is of order ``1/epsilon``. Float32 keys almost
    never land on zero, but a low-precision projection does often: its matmul and its
    bias are rounded to a coarse grid before they are added, and where they nearly cancel
    the sum is exactly 0. Under ``mixed_bfloat16`` that made every gradient below the
    attention 30-700x too large (and LinRec's validation NDCG@10 11% below float32's).
    The weights stay float32 under every mixed policy already, so only the compute dtype
    changes: the same variables, names, order and checkpoints. Other policies are left
    as they are.
    """
    if key_dense.dtype_policy.compute_dtype in ("float16", "bfloat16"):
        key_dense._set_dtype_policy("float32")  # before build: tf-keras' own setter


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class LinRecAttention(CounterDropoutMixin, _MHA):
    """LinRec L2-normalized linear attention (Liu et al., SIGIR 2023).

    A subclass of ``tf.keras.layers.MultiHeadAttention`` that replaces only the attention
    itself (``_compute_attention``): projections, initializers, regularizers, dtype
    policy, Keras mask propagation and the call signature are the parent's. Time and
    memory are linear in the sequence length. Under a ``mixed_float16`` or
    ``mixed_bfloat16`` policy the key projection computes in float32 (the others in the
    policy's dtype, the attention itself always in float32): low-precision keys land on
    zero, where LinRec's prefix column norms have gradients of order ``1/epsilon``.

    Args:
      num_heads, key_dim, value_dim, dropout, use_bias, output_shape,
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in
        ``MultiHeadAttention``. ``dropout`` applies to the attention output of each head
        before the output projection (the N x N matrix is never formed), as a
        :class:`~tfrs_linear.layers.CounterDropout`.
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
    only. ``use_causal_mask=True`` (or ``causal=True``) with a query length ``T`` other
    than the value length ``S`` applies ``MultiHeadAttention``'s causal mask, the
    lower-triangular ``[T, S]`` matrix (query ``i`` sees keys ``j <= i``), without forming
    it; both lengths must then be static. The query's padding comes from its own Keras
    mask only (an ``attention_mask`` pads the keys). ``return_attention_scores=True``
    also returns the implicit ``[batch, heads, T, S]`` matrix, which costs O(N²): for
    inspection only.

    All weights are created in :meth:`build` (``build(query_shape, value_shape,
    key_shape=None)``, as in Keras 3), which the first call runs with the inputs'
    shapes; a SavedModel records the three shapes and its loader rebuilds every weight
    before restoring them.

    Hooks (as ``MultiHeadAttention.call`` is split into ``_compute_attention`` and
    friends, so that a subclass overrides one step): ``call`` projects the inputs with the
    parent's dense layers and runs two documented hooks, whose inputs are all explicit
    arguments:

    * :meth:`_compute_padding_masks` turns the Keras masks of the inputs, the
      ``attention_mask`` argument and the causal flag into the ``[batch, T]`` query and
      ``[batch, S]`` key padding masks (the parent's ``_compute_attention_mask`` builds a
      ``[batch, T, S]`` mask instead, which linear attention never forms);
    * :meth:`_compute_attention` runs :func:`tfrs_linear.ops.linrec_attention` on the
      projected heads (and :func:`tfrs_linear.ops.linrec_attention_scores` when the
      scores are asked for), then the head-output dropout.

    Where no subclass overrides :meth:`_compute_attention` and no scores are asked,
    ``call`` projects straight into the op's ``[batch, heads, length, width]`` layout
    with the same dense layers' weights (see :meth:`_heads_first`): the same numbers up
    to float rounding, and a faster XLA training step.
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
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got "
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

    def build(self, query_shape, value_shape=None, key_shape=None):
        """Creates every weight: the four projections (and builds the unused softmax).

        ``build(query_shape)`` alone (what tf-keras' ``__call__`` passes) waits for the
        call, which knows the value's shape. Weight names, order and shapes are
        ``MultiHeadAttention``'s.
        """
        shapes = _build_shapes(query_shape, value_shape, key_shape)
        if shapes is None or self._built_from_signature:
            return
        for name, shape in zip(("query", "value", "key"), shapes):
            if shape.rank is not None and shape.rank != 3:
                raise ValueError(
                    f"LinRecAttention expects `{name}` shaped [batch, length, dim], got "
                    f"shape {shape}."
                )
        query_shape, value_shape, key_shape = shapes
        # The parent creates the (unbuilt) projection layers and sets _built_from_signature.
        super()._build_from_signature(query_shape, value_shape, key_shape)
        _compute_keys_in_float32(self._key_dense)
        heads_shape = query_shape[:-1].concatenate([self._num_heads, self._value_dim])
        sublayers = (
            (self._query_dense, query_shape),
            (self._key_dense, key_shape),
            (self._value_dense, value_shape),
            (self._output_dense, heads_shape),
        )
        # Variables are created outside any function being traced (as tf-keras does).
        with tf.init_scope(), self._own_name_scope():
            for layer, shape in sublayers:
                with tf.name_scope(layer.name):
                    layer.build(shape)
                layer.built = True
            # Never called by the linear attention: built so that saving does not skip it.
            self._softmax.build(None)
            self._dropout_layer.build(heads_shape)
        # Recorded in SavedModels as `build_input_shape`: the loader calls build with it.
        self._build_input_shape = [query_shape, value_shape, key_shape]
        self.built = True

    def _own_name_scope(self):
        """The layer's name scope, unless already in it (its own ``__call__``), so that the
        weights are named ``<layer>/query/kernel`` whoever calls :meth:`build`."""
        if tf.get_current_name_scope().split("/")[-1] == self.name:
            return contextlib.nullcontext()
        return tf.name_scope(self.name)

    def _build_from_signature(self, query, value, key=None):
        """tf-keras' lazy builder of MultiHeadAttention: :meth:`build` with the shapes."""
        self.build(_shape_of(query), _shape_of(value), None if key is None else _shape_of(key))

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
        causal = self.causal or bool(use_causal_mask)
        if not self._built_from_signature:
            self._build_from_signature(query=query, value=value, key=key)
        if key is None:
            key = value
        query, key, value, query_lengths = _dense_inputs(query, key, value)
        query_mask, key_mask = self._compute_padding_masks(
            query, value, key=key, attention_mask=attention_mask, causal=causal
        )
        if self._heads_first(query, key, causal, return_attention_scores):
            out = self._attend_heads(
                *self._projected_heads(query, key, value), query_mask, key_mask, causal)
            out, scores = self._dropped_heads(out, training), None
        else:
            # [B, T, N, H], [B, S, N, H], [B, S, N, H_v]
            projected = (self._query_dense(query), self._key_dense(key), self._value_dense(value))
            out, scores = self._compute_attention(
                *projected,
                training=training,
                query_mask=query_mask,
                key_mask=key_mask,
                causal=causal,
                return_attention_scores=return_attention_scores,
            )
        out = self._output_dense(out)
        if query_lengths is not None:
            out = tf.RaggedTensor.from_tensor(out, lengths=query_lengths)
        if return_attention_scores:
            return out, scores
        return out

    def _heads_first(self, query, key, causal, return_attention_scores):
        """Whether :meth:`call` may project straight into the op's ``[B, N, T, H]``
        layout: the :meth:`_compute_attention` hook not overridden, no scores asked and
        no ``[T, S]`` causal alignment (those take the hook's path).

        The same weights and numbers (up to float rounding) as the parent's projections
        followed by the hook's transposes. Why: under XLA, the einsum projections
        followed by a transpose made the backward pass recompute the keys' whole
        gradient chain (the chunk sums, ELU's derivative, the mask) once per layout its
        consumers wanted; a training step at max_len 200 was about 1.1x slower.
        """
        return (type(self)._compute_attention is LinRecAttention._compute_attention
                and not return_attention_scores
                and not (causal and _lengths_differ(query, key)))

    def _projected_heads(self, query, key, value):
        """``(q, k, v)`` as ``[B, N, T, H]``: each projection one 2-D MatMul in its dense
        layer's compute dtype (:func:`_heads`), named after that layer."""
        heads = []
        for dense, x in ((self._query_dense, query), (self._key_dense, key),
                         (self._value_dense, value)):
            with tf.name_scope(dense.name):
                heads.append(_heads(dense, x))
        return heads

    def _dropped_heads(self, out, training):
        """``[B, N, T, H] -> [B, T, N, H]``, then the head-output dropout."""
        return self._dropout_layer(tf.transpose(out, [0, 2, 1, 3]), training=training)

    def _attend_heads(self, q, k, v, query_mask, key_mask, causal):
        """The op on ``[B, N, T, H]`` heads: ``[B, N, T, H_v]``."""
        return linrec_attention(
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

    # -- the recurrent (streaming) form ------------------------------------------------
    def initial_state(self, batch):
        """The causal form's state of ``batch`` users with no event yet: a dict of float32
        zeros (:func:`tfrs_linear.ops.linrec_initial_state`). Needs a built layer."""
        if not self._built_from_signature:
            raise ValueError("LinRecAttention.initial_state needs a built layer (call it or "
                             "build(query_shape, value_shape) first).")
        return linrec_initial_state(batch, self._num_heads, self._key_dim, self._value_dim,
                                    self.normalization)

    def step(self, state, inputs, mask=None):
        """Causal self-attention over ``m`` new events per user, given the past's state.

        ``inputs [B, m, dim]`` (the new events, oldest first; rows right-padded where
        ``mask [B, m]`` is False). Returns ``(new_state, outputs [B, m, dim])``: the
        outputs of a causal call on the whole history at those events (padding gives
        the output projection's bias, as a padded query does in :meth:`call`). No
        dropout: the step is for inference.
        """
        q, k, v = self._projected_heads(inputs, inputs, inputs)  # [B, N, m, H]
        state, out = linrec_step(state, q, k, v, mask=mask, normalization=self.normalization,
                                 epsilon=self.epsilon, chunk_size=self.chunk_size)
        return state, _merged(self._output_dense, out)

    def advance(self, state, inputs, mask=None):
        """The state after ``m`` events per user, without their outputs: :meth:`step`'s
        state, in ``O(m)`` (keys and values only). ``inputs [B, m, dim]`` and ``mask
        [B, m]`` on either padding side: a whole history from :meth:`initial_state` is
        the user's state (the first call of a served user, one parallel pass)."""
        k, v = (_heads(dense, inputs) for dense in (self._key_dense, self._value_dense))
        return linrec_advance(state, k, v, mask=mask, normalization=self.normalization,
                              epsilon=self.epsilon)

    def _compute_padding_masks(
        self, query, value, key=None, attention_mask=None, causal=False
    ):
        """The ``(query_mask [B, T], key_mask [B, S])`` padding masks (bool, or None).

        Args:
          query, value, key: the layer's inputs (``key`` None or ``value`` in
            self-attention); their Keras masks (``_keras_mask``) are honoured, the key
            mask being that of ``value`` and ``key`` together.
          attention_mask: None or a ``[B, S]`` padding mask of the keys (True = real
            item), which also masks the queries when ``T == S`` or ``causal``. Any other
            rank raises a ``ValueError``: a pairwise ``[B, T, S]`` mask cannot be applied
            without forming the N x N matrix.
          causal: causal attention; in self-attention (``T == S``) one mask serves
            both sides, with ``T != S`` the masks stay apart (the query's is its own).
        """
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
            if same_length or (causal and not _lengths_differ(query, value)):
                query_mask = padding if query_mask is None else query_mask & padding
        if causal and not _lengths_differ(query, value):
            # Causal self-attention: one mask for both sides.
            if query_mask is not None and key_mask is not None:
                key_mask = query_mask = query_mask & key_mask
            else:
                key_mask = query_mask = (
                    query_mask if query_mask is not None else key_mask
                )
        return query_mask, key_mask

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        query_mask=None,
        key_mask=None,
        causal=None,
        return_attention_scores=False,
    ):
        """LinRec attention on the projected heads; returns ``(output, scores or None)``.

        Args:
          query: ``[B, T, N, key_dim]``; key: ``[B, S, N, key_dim]``; value:
            ``[B, S, N, value_dim]`` (the parent's projections).
          attention_mask: must be None (the parent's pairwise mask has no linear form);
            padding goes through ``query_mask``/``key_mask``.
          training: whether the head-output dropout is active.
          query_mask, key_mask: ``[B, T]`` / ``[B, S]`` padding masks or None (see
            :meth:`_compute_padding_masks`).
          causal: the causal form; None means the layer's ``causal``.
          return_attention_scores: also compute the implicit ``[B, N, T, S]`` matrix
            (O(N²)); else the scores are None.
        """
        if attention_mask is not None:
            raise ValueError(
                "LinRecAttention._compute_attention takes the padding masks as "
                "`query_mask`/`key_mask` (see _compute_padding_masks), not a pairwise "
                f"`attention_mask` (got shape {tf.TensorShape(attention_mask.shape)})."
            )
        causal = self.causal if causal is None else bool(causal)
        t_len, s_len = query.shape[1], key.shape[1]
        aligned = causal and _lengths_differ(query, key)
        if aligned:
            # The [T, S] lower-triangular mask = the causal form over T aligned keys.
            if key_mask is None:
                key_mask = tf.ones(tf.shape(key)[:2], tf.bool)
            key_mask = _align_keys(tf.cast(key_mask, tf.bool), t_len, s_len)
            key, value = _align_keys(key, t_len, s_len), _align_keys(value, t_len, s_len)
            if query_mask is None:  # else the op would mask the queries with the keys' mask
                query_mask = tf.ones(tf.shape(query)[:2], tf.bool)
        # [B, T, N, H] -> [B, N, T, H]
        q = tf.transpose(query, [0, 2, 1, 3])
        k = tf.transpose(key, [0, 2, 1, 3])
        v = tf.transpose(value, [0, 2, 1, 3])
        out = self._attend_heads(q, k, v, query_mask, key_mask, causal)
        scores = None
        if return_attention_scores:
            scores = linrec_attention_scores(
                q,
                k,
                mask=key_mask,
                causal=causal,
                normalization=self.normalization,
                epsilon=self.epsilon,
                query_mask=query_mask,
            )
            if aligned:
                # Back to [B, N, T, S]: keys past T get weight 0, the padded ones go.
                scores = tf.transpose(_align_keys(
                    tf.transpose(scores, [0, 3, 1, 2]), s_len, t_len), [0, 2, 3, 1])
        return self._dropped_heads(out, training), scores
