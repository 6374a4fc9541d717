"""ELASTIC layers: `LinearDispatcherAttention` and `InterestMemory`.

Specification: ``shared/docs/elastic.md`` (Deng et al., arXiv 2408.09380, withdrawn, no
public code). This module is the library's reconstruction; the docstrings list every
choice the paper leaves open.
"""

import math

import tensorflow as tf

from tfrs_linear.ops import elastic as elastic_ops

_initializers = tf.keras.initializers
_regularizers = tf.keras.regularizers
_constraints = tf.keras.constraints


def _keras_mask_or(inputs, mask):
    if mask is None:
        mask = getattr(inputs, "_keras_mask", None)
    if mask is None:
        return None
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank is not None and mask.shape.rank != 2:
        raise ValueError(
            f"`mask` must be a [batch, length] padding mask, got shape {mask.shape} "
            f"for inputs of shape {inputs.shape}."
        )
    return tf.cast(mask, tf.bool)


def _fresh(initializer):
    """A new instance of ``initializer`` for each weight.

    tf-keras initializers that are called twice return the same values (and warn), so
    each weight gets its own copy, as ``MultiHeadAttention`` does for its sublayers.
    """
    if initializer is None:
        return None
    return initializer.__class__.from_config(initializer.get_config())


# Recency slopes: ``slope = _MAX_SLOPE * sigmoid(raw)``, i.e. a half-life of at least one
# item. The bound keeps the logits' rise inside a causal chunk (<= slope * chunk) small
# enough for the ops' factorised fast path at the default chunk sizes (32-64).
_LN2 = math.log(2.0)
_MAX_SLOPE = _LN2
# Initial half-lives, in items: geometric from 2 to 1024 over the k interests.
_HALF_LIFE_RANGE = (2.0, 1024.0)


def _recency_raw_init(num_heads, num_interests):
    """Raw slope parameters ``[heads, k]`` giving geometric half-lives over the interests."""
    lo, hi = _HALF_LIFE_RANGE
    steps = max(num_interests - 1, 1)
    half_lives = [lo * (hi / lo) ** (i / steps) for i in range(num_interests)]
    raws = []
    for h in half_lives:
        p = (_LN2 / h) / _MAX_SLOPE  # sigmoid(raw), in (0, 0.5]
        raws.append(math.log(p / (1.0 - p)))
    return [raws] * num_heads


def _check_inputs(name, inputs):
    if inputs.shape.rank is not None and inputs.shape.rank != 3:
        raise ValueError(
            f"{name} expects inputs shaped [batch, length, dim], got shape {inputs.shape}."
        )


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class LinearDispatcherAttention(tf.keras.layers.Layer):
    """ELASTIC's linear dispatcher attention (LDA): aggregate N -> k, dispatch k -> N.

    ``k = num_interests`` interest tokens ``P`` first attend over the sequence
    (aggregate), then every position attends over the updated interests ``P'``
    (dispatch). Both steps are multi-head softmax attentions whose key axis has length N
    and k respectively, so time and memory are ``O(N·k·d)``; the same weights serve any
    length.

    Non-causal (``causal=False``)::

        A  = softmax_N(P W_q1 (X W_k1)ᵀ / sqrt(key_dim))       per head, padding masked
        P' = LayerNorm(P + concat_h(A_h X W_v1^h) W_o1)         interest stream
        Y  = softmax_k(X W_q2 (P' W_k2)ᵀ / sqrt(key_dim)) P' W_v2   per head
        out = concat_h(dropout(Y_h)) W_o2 + b_o2                 padded positions -> 0

    ``P`` is ``interests`` when given (e.g. the previous block's ``P'`` or the output of
    :class:`InterestMemory`), else the layer's learned tokens. With an all-padding input
    ``A = 0`` and ``P' = LayerNorm(P)`` (finite).

    Causal (``causal=True``, per-position training): elastic.md's design. ``P`` is always
    the layer's learned tokens (passing ``interests`` raises); no LayerNorm on the interest
    stream; ``P'_t = P + concat_h(mean_{s<=t} of X_s W_v1^h under A_h) W_o1``, computed by
    :func:`tfrs_linear.ops.elastic.dispatcher_attention` with ``W_o1 W_k2`` and
    ``W_o1 W_v2`` folded into the values, chunk-wise. Returned interests are ``P'`` at the
    last position (= over all real items), ``[batch, k, dim]``.

    Reconstruction choices (the paper is silent on them):

    * Multi-head in both steps with the same ``num_heads``/``key_dim``/``value_dim``, and
      an output projection per step, like ``MultiHeadAttention``: ``W_o1`` maps the
      aggregated heads back to the model width so that the residual ``P + ...`` is
      defined, ``W_o2`` maps the dispatched heads to the output.
    * ``W_o1`` has no bias, so an all-padding input gives exactly ``P' = LayerNorm(P)``
      as elastic.md states (a bias would be redundant with the learned tokens anyway).
      All other projections have a bias when ``use_bias``.
    * ``dropout`` drops the dispatch output of each head (``[batch, heads, N, value_dim]``)
      before ``W_o2``, as in the library's LinRec layer: no N x k attention matrix is
      kept in the causal form, so the output is the one place both modes share. Nothing is
      dropped on the interest stream.
    * Padded positions output exactly 0 (the output bias is masked as well).
    * The LayerNorm of the interest stream (``interest_norm``) has its own epsilon
      ``layer_norm_epsilon``.

    Args:
      num_heads: attention heads (both steps).
      key_dim: query/key width per head.
      num_interests: ``k``.
      value_dim: value width per head (default ``key_dim``).
      causal: the causal (prefix) form.
      dropout: dropout rate of each head's dispatch output.
      use_bias: biases of the projections (not of ``W_o1``).
      chunk_size: chunk length of the causal computation (32: the fastest of 8-64
        on CPU at N = 1024-4096; the C x C weights per interest grow with it).
      layer_norm_epsilon: epsilon of the interest-stream LayerNorm (non-causal).
      kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in Keras layers.
      interest_initializer: initializer of the learned interest tokens ``[k, dim]``;
        default (None) a normal with stddev 1, the scale of the LayerNorm'd tokens they
        are compared with. (Keras' default "random_normal", stddev 0.05, leaves the
        aggregation logits ~16x flatter than a token's: on ml-100k the trained tokens
        stayed at rms 0.06 and every interest averaged its prefix almost uniformly.)
      recency_bias: adds a learned recency bias to the aggregate logits of every
        interest: ``slope[h, i] · (s - (N - 1))`` for the item at position ``s``. In a
        softmax-weighted mean this is exactly an exponential decay of each weight with
        the item's age ``t - s`` (the part depending on ``t`` cancels in the
        normalisation), so the prefix sums of the causal form are unchanged in cost.
        The paper has no such term (this library's addition, default off in the layer):
        with static interest queries a causal interest cannot otherwise weigh the
        *recent* items of a prefix more (positions are absolute), which softmax
        attention does through its per-position queries. Slopes ``0.693 ·
        sigmoid(raw)`` (a half-life of at least one item), initialised to half-lives
        geometric from 2 to 1024 items over the interests, the same for every head.
      learned_interests: whether the layer has interest tokens of its own (default).
        ``False`` (non-causal only) for a layer that always receives ``interests`` (a
        block after the first in a hand-off stack, or the first behind an interest
        memory): no unused ``[k, dim]`` variable, and calling it without ``interests``
        raises.

    Call: ``layer(inputs, mask=None, interests=None, training=None, last_only=False)``
    with ``inputs`` ``[batch, length, dim]``, ``mask`` a ``[batch, length]`` padding mask
    (True = real item; the Keras mask of ``inputs`` is used when absent) and ``interests``
    optional ``[batch, num_interests, dim]``. Returns ``(outputs [batch, length, dim],
    interests [batch, num_interests, dim])``. ``last_only=True`` returns the outputs of
    the last (newest, with left padding) position only, ``[batch, 1, dim]``, equal to
    ``outputs[:, -1:]`` of the full call in both forms at ``O(N·k·d)`` without the
    per-position dispatch: what a retrieval query tower needs from its final block.
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        num_interests,
        value_dim=None,
        causal=False,
        dropout=0.0,
        use_bias=True,
        chunk_size=32,
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        interest_initializer=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        learned_interests=True,
        recency_bias=False,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if causal and not learned_interests:
            raise ValueError(
                "LinearDispatcherAttention(causal=True) always uses its own learned interest "
                "tokens: learned_interests=False needs causal=False."
            )
        self.learned_interests = bool(learned_interests)
        self.recency_bias = bool(recency_bias)
        for name, value in (
            ("num_heads", num_heads),
            ("key_dim", key_dim),
            ("num_interests", num_interests),
            ("chunk_size", chunk_size),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if value_dim is not None and int(value_dim) < 1:
            raise ValueError(f"value_dim must be >= 1, got {value_dim}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.num_interests = int(num_interests)
        self.value_dim = int(value_dim) if value_dim is not None else self.key_dim
        self._value_dim_arg = None if value_dim is None else int(value_dim)
        self.causal = bool(causal)
        self.dropout = float(dropout)
        self.use_bias = bool(use_bias)
        self.chunk_size = int(chunk_size)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = _initializers.get(kernel_initializer)
        self.bias_initializer = _initializers.get(bias_initializer)
        if interest_initializer is None:
            interest_initializer = _initializers.RandomNormal(stddev=1.0)
        self.interest_initializer = _initializers.get(interest_initializer)
        self.kernel_regularizer = _regularizers.get(kernel_regularizer)
        self.bias_regularizer = _regularizers.get(bias_regularizer)
        self.kernel_constraint = _constraints.get(kernel_constraint)
        self.bias_constraint = _constraints.get(bias_constraint)
        self.supports_masking = True

    # ------------------------------------------------------------------ build
    def _kernel(self, name, shape):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=_fresh(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
        )

    def _bias(self, name, shape):
        if not self.use_bias:
            return None
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=_fresh(self.bias_initializer),
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
            trainable=True,
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 3 or input_shape[-1] is None:
            raise ValueError(
                "LinearDispatcherAttention expects inputs shaped [batch, length, dim] "
                f"with a known dim, got shape {input_shape}."
            )
        dim = int(input_shape[-1])
        self.model_dim = dim
        h, dk, dv, k = self.num_heads, self.key_dim, self.value_dim, self.num_interests
        self.interest_tokens = None
        if self.learned_interests:
            self.interest_tokens = self.add_weight(
                name="interest_tokens",
                shape=[k, dim],
                initializer=_fresh(self.interest_initializer),
                trainable=True,
            )
        # Aggregate (N -> k).
        self.query_1_kernel = self._kernel("query_1_kernel", [dim, h, dk])
        self.query_1_bias = self._bias("query_1_bias", [h, dk])
        self.key_1_kernel = self._kernel("key_1_kernel", [dim, h, dk])
        self.key_1_bias = self._bias("key_1_bias", [h, dk])
        self.value_1_kernel = self._kernel("value_1_kernel", [dim, h, dv])
        self.value_1_bias = self._bias("value_1_bias", [h, dv])
        self.output_1_kernel = self._kernel("output_1_kernel", [h, dv, dim])
        # Dispatch (k -> N).
        self.query_2_kernel = self._kernel("query_2_kernel", [dim, h, dk])
        self.query_2_bias = self._bias("query_2_bias", [h, dk])
        self.key_2_kernel = self._kernel("key_2_kernel", [dim, h, dk])
        self.key_2_bias = self._bias("key_2_bias", [h, dk])
        self.value_2_kernel = self._kernel("value_2_kernel", [dim, h, dv])
        self.value_2_bias = self._bias("value_2_bias", [h, dv])
        self.output_2_kernel = self._kernel("output_2_kernel", [h, dv, dim])
        self.output_2_bias = self._bias("output_2_bias", [dim])
        self.recency_raw = None
        if self.recency_bias:
            # float32 even under mixed precision: the bias reaches slope * N.
            self.recency_raw = self.add_weight(
                name="recency_raw",
                shape=[h, k],
                initializer=_initializers.Constant(_recency_raw_init(h, k)),
                trainable=True,
                experimental_autocast=False,
            )
        if self.causal:
            self.interest_norm = None
        else:
            self.interest_norm = tf.keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon,
                dtype=self.dtype_policy,
                name="interest_norm",
            )
            self.interest_norm.build([None, k, dim])
        self.dropout_layer = tf.keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="dropout"
        )
        super().build(input_shape)

    # ------------------------------------------------------------------ call
    @staticmethod
    def _heads(x, kernel, bias):
        """``[B, L, dim] -> [B, H, L, width]`` (a per-head projection)."""
        y = tf.einsum("bld,dhe->bhle", x, kernel)
        if bias is not None:
            y = y + bias[:, tf.newaxis, :]
        return y

    def _check_interests(self, interests, inputs):
        interests = tf.convert_to_tensor(interests)
        shape = interests.shape
        ok = shape.rank == 3 and shape[1] in (None, self.num_interests) and shape[2] in (
            None,
            self.model_dim,
        )
        if not ok:
            raise ValueError(
                "`interests` must be shaped [batch, num_interests, dim] = [batch, "
                f"{self.num_interests}, {self.model_dim}], got shape {shape} (inputs "
                f"{inputs.shape})."
            )
        return tf.cast(interests, self.compute_dtype)

    def call(self, inputs, mask=None, interests=None, training=None, last_only=False):
        _check_inputs("LinearDispatcherAttention", inputs)
        if interests is not None and self.causal:
            raise ValueError(
                "LinearDispatcherAttention(causal=True) uses its own learned interest "
                "tokens at every position (a per-user P would break the prefix sums), so "
                "`interests` must be None; got a tensor of shape "
                f"{tf.TensorShape(interests.shape)}."
            )
        mask = _keras_mask_or(inputs, mask)
        x = inputs
        batch = tf.shape(x)[0]
        dtype = x.dtype
        if interests is None:
            if self.interest_tokens is None:
                raise ValueError(
                    "LinearDispatcherAttention(learned_interests=False) has no interest "
                    "tokens of its own: pass `interests` [batch, num_interests, dim] (the "
                    "previous block's or the interest memory's)."
                )
            p = tf.tile(
                tf.cast(self.interest_tokens, dtype)[tf.newaxis], [batch, 1, 1]
            )
        else:
            p = self._check_interests(interests, inputs)
        q1 = self._heads(p, self.query_1_kernel, self.query_1_bias)  # [B,H,k,dk]
        k1 = self._heads(x, self.key_1_kernel, self.key_1_bias)  # [B,H,N,dk]
        v1 = self._heads(x, self.value_1_kernel, self.value_1_bias)  # [B,H,N,dv]
        bias = self._recency(x.shape[1] if x.shape[1] is not None else tf.shape(x)[1])
        if last_only or not self.causal:
            # Every query sees the interests after all items: always so non-causally,
            # and for the newest position causally too (its prefix is the whole
            # sequence), so a last-only call is one dispatch query in both forms.
            new_interests = self._interests_after_all(p, q1, k1, v1, mask, bias)
            if last_only:
                x = x[:, -1:, :]
                mask = None if mask is None else mask[:, -1:]
            q2 = self._heads(x, self.query_2_kernel, self.query_2_bias)  # [B,H,N,dk]
            k2 = self._heads(new_interests, self.key_2_kernel, self.key_2_bias)
            v2 = self._heads(new_interests, self.value_2_kernel, self.value_2_bias)
            y = elastic_ops.dispatcher_dispatch(q2, k2, v2, mask)  # [B,H,N,dv]
        else:
            q2 = self._heads(x, self.query_2_kernel, self.query_2_bias)  # [B,H,N,dk]
            # Fold W_o1 W_k2 and W_o1 W_v2 into the per-position values (elastic.md):
            # value_key[b, h, n, g, :] = (X W_v1 + b_v1)^h W_o1^h W_k2^g.
            fold_k = tf.einsum("hvd,dge->hvge", self.output_1_kernel, self.key_2_kernel)
            fold_v = tf.einsum("hvd,dge->hvge", self.output_1_kernel, self.value_2_kernel)
            value_key = tf.einsum("bhnv,hvge->bhnge", v1, fold_k)
            value_value = tf.einsum("bhnv,hvge->bhnge", v1, fold_v)
            k2 = self._heads(p, self.key_2_kernel, self.key_2_bias)  # P W_k2 + b_k2
            v2 = self._heads(p, self.value_2_kernel, self.value_2_bias)
            y = elastic_ops.dispatcher_attention(
                q2,
                k1,
                q1,
                k2,
                v2,
                value_key,
                value_value,
                mask=mask,
                causal=True,
                chunk_size=self.chunk_size,
                aggregate_bias=bias,
            )
            new_interests = self._interests_after_all(p, q1, k1, v1, mask, bias)

        return self._output(y, mask, training), new_interests

    def recency_slopes(self):
        """The recency slopes ``[heads, k]`` (the variable dtype: float32 under mixed
        precision), or None without ``recency_bias``."""
        if self.recency_raw is None:
            return None
        return _MAX_SLOPE * tf.sigmoid(self.recency_raw)

    def _recency(self, length):
        """The aggregate logits' recency bias ``[1, H, k, N]`` (variable dtype), or None."""
        slopes = self.recency_slopes()
        if slopes is None:
            return None
        age = tf.cast(tf.range(length) - (length - 1), slopes.dtype)  # <= 0, newest 0
        return (slopes[:, :, tf.newaxis] * age)[tf.newaxis]

    def _interests_after_all(self, p, q1, k1, v1, mask, bias):
        """``P'`` after every real item: ``P + (aggregate) W_o1``, LayerNorm'd non-causally."""
        agg = elastic_ops.dispatcher_aggregate(q1, k1, v1, mask, aggregate_bias=bias)
        interests = p + tf.einsum("bhiv,hvd->bid", agg, self.output_1_kernel)
        return interests if self.causal else self.interest_norm(interests)

    def _output(self, y, mask, training):
        y = self.dropout_layer(y, training=training)  # per head, before W_o2
        outputs = tf.einsum("bhnv,hvd->bnd", y, self.output_2_kernel)
        if self.output_2_bias is not None:
            outputs = outputs + self.output_2_bias
        if mask is not None:
            outputs = outputs * tf.cast(mask, outputs.dtype)[:, :, tf.newaxis]
        return outputs

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        return [mask, None]

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return (
            input_shape,
            tf.TensorShape([input_shape[0], self.num_interests, input_shape[-1]]),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            num_interests=self.num_interests,
            value_dim=self._value_dim_arg,
            causal=self.causal,
            dropout=self.dropout,
            use_bias=self.use_bias,
            chunk_size=self.chunk_size,
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=_initializers.serialize(self.kernel_initializer),
            bias_initializer=_initializers.serialize(self.bias_initializer),
            interest_initializer=_initializers.serialize(self.interest_initializer),
            kernel_regularizer=_regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=_regularizers.serialize(self.bias_regularizer),
            activity_regularizer=_regularizers.serialize(self.activity_regularizer),
            kernel_constraint=_constraints.serialize(self.kernel_constraint),
            bias_constraint=_constraints.serialize(self.bias_constraint),
            learned_interests=self.learned_interests,
            recency_bias=self.recency_bias,
        )
        return config


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class InterestMemory(tf.keras.layers.Layer):
    """ELASTIC's interest memory retrieval (IMR): a product-key memory that yields ``P₀``.

    Reconstruction (elastic.md) with a product-key memory (Lample et al. 2019):

    * query: the masked mean of the sequence (``[batch, dim]``; 0 for an all-padding
      row, whose count is floored at 1) -> ``Dense(k · query_dim)`` -> ``k`` queries of
      width ``query_dim``;
    * keys: two sets of ``num_keys`` sub-keys of width ``query_dim / 2``; slot
      ``(i1, i2)`` (index ``i1 * num_keys + i2``) scores ``q1·K1[i1] + q2·K2[i2]``;
      :func:`tfrs_linear.ops.elastic.product_key_lookup` returns the exact top-m slots;
    * values: ``num_keys²`` memory rows of width ``dim``; the retrieved interest is the
      softmax (over the ``m`` scores) weighted sum of the ``m`` selected rows, gathered
      with ``tf.gather`` so that the memory's gradient is an ``IndexedSlices`` touching
      the ``m·k`` selected rows per user only;
    * ``P₀ = base tokens (k x dim, learned) + retrieved interests``.

    Choices the paper leaves open: no query BatchNorm and a single memory head (PKM's
    paper uses both; the mean query is already a smooth summary); the sub-keys and the
    memory are float32 variables that are not autocast under mixed precision, and the
    scores, softmax and weighted sum are computed in float32 (float64 for a float64
    layer), the output is cast to the compute dtype. Memory rows are initialised
    ``N(0, 1/dim)`` and sub-keys ``U(-1/sqrt(query_dim/2), +)`` (PKM's choices) unless
    initialisers are given. Cost ``O(N·dim + k·(num_keys·query_dim + top_m²) +
    k·top_m·dim)``, independent of the memory size beyond the sub-keys.

    Args:
      num_interests: ``k``.
      num_keys: ``n``, sub-keys per half (``n²`` slots).
      top_m: rows retrieved per interest (``<= num_keys``).
      query_dim: query width ``d_q`` (even).
      kernel_initializer, bias_initializer: of the query Dense.
      key_initializer, memory_initializer, base_initializer: of the sub-keys, the memory
        rows and the base tokens (``None`` = the defaults above; base tokens N(0, 1), the
        scale of :class:`LinearDispatcherAttention`'s own interest tokens).

    Call: ``memory(inputs, mask=None)`` with ``inputs [batch, length, dim]`` and a
    ``[batch, length]`` padding mask (or the Keras mask); returns ``[batch, k, dim]``.
    """

    def __init__(
        self,
        num_interests,
        num_keys=128,
        top_m=8,
        query_dim=32,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        key_initializer=None,
        memory_initializer=None,
        base_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_interests) < 1 or int(num_keys) < 1:
            raise ValueError(
                f"num_interests and num_keys must be >= 1, got {num_interests} and "
                f"{num_keys}."
            )
        if not 1 <= int(top_m) <= int(num_keys):
            raise ValueError(f"top_m must be in [1, num_keys={num_keys}], got {top_m}.")
        if int(query_dim) < 2 or int(query_dim) % 2:
            raise ValueError(
                f"query_dim must be even and >= 2 (two halves), got {query_dim}."
            )
        self.num_interests = int(num_interests)
        self.num_keys = int(num_keys)
        self.top_m = int(top_m)
        self.query_dim = int(query_dim)
        self.kernel_initializer = _initializers.get(kernel_initializer)
        self.bias_initializer = _initializers.get(bias_initializer)
        self.key_initializer = (
            None if key_initializer is None else _initializers.get(key_initializer)
        )
        self.memory_initializer = (
            None if memory_initializer is None else _initializers.get(memory_initializer)
        )
        if base_initializer is None:
            # The scale of the tokens they meet in the first aggregate (as the dispatcher's
            # own interest tokens): a stddev-0.05 start leaves its logits ~16x flatter.
            base_initializer = _initializers.RandomNormal(stddev=1.0)
        self.base_initializer = _initializers.get(base_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 3 or input_shape[-1] is None:
            raise ValueError(
                "InterestMemory expects inputs shaped [batch, length, dim] with a known "
                f"dim, got shape {input_shape}."
            )
        dim = int(input_shape[-1])
        k, dq, n = self.num_interests, self.query_dim, self.num_keys
        half = dq // 2
        # Variables that feed the float32 lookup are not autocast (mixed precision).
        var_dtype = tf.float64 if self.dtype == "float64" else tf.float32
        key_init = self.key_initializer or _initializers.RandomUniform(
            -(half**-0.5), half**-0.5
        )
        memory_init = self.memory_initializer or _initializers.RandomNormal(
            stddev=dim**-0.5
        )
        self.query_kernel = self.add_weight(
            name="query_kernel",
            shape=[dim, k * dq],
            initializer=_fresh(self.kernel_initializer),
        )
        self.query_bias = self.add_weight(
            name="query_bias", shape=[k * dq], initializer=_fresh(self.bias_initializer)
        )
        self.sub_keys_1 = self.add_weight(
            name="sub_keys_1",
            shape=[n, half],
            initializer=_fresh(key_init),
            dtype=var_dtype,
            experimental_autocast=False,
        )
        self.sub_keys_2 = self.add_weight(
            name="sub_keys_2",
            shape=[n, half],
            initializer=_fresh(key_init),
            dtype=var_dtype,
            experimental_autocast=False,
        )
        self.memory = self.add_weight(
            name="memory",
            shape=[n * n, dim],
            initializer=_fresh(memory_init),
            dtype=var_dtype,
            experimental_autocast=False,
        )
        self.base_tokens = self.add_weight(
            name="base_tokens", shape=[k, dim], initializer=_fresh(self.base_initializer)
        )
        super().build(input_shape)

    def lookup(self, inputs, mask=None):
        """``(scores, indices)`` of the selected slots, ``[batch, k, top_m]`` each."""
        queries = self._queries(inputs, mask)
        return elastic_ops.product_key_lookup(
            queries, self.sub_keys_1, self.sub_keys_2, self.top_m
        )

    def _queries(self, inputs, mask):
        _check_inputs("InterestMemory", inputs)
        mask = _keras_mask_or(inputs, mask)
        work = self.memory.dtype
        x = tf.cast(inputs, work)
        if mask is None:
            mean = tf.reduce_mean(x, axis=1)
        else:
            m = tf.cast(mask, work)[:, :, tf.newaxis]
            count = tf.maximum(tf.reduce_sum(m, axis=1), tf.ones([], work))
            mean = tf.reduce_sum(x * m, axis=1) / count
        q = tf.matmul(mean, tf.cast(self.query_kernel, work)) + tf.cast(
            self.query_bias, work
        )
        return tf.reshape(q, [-1, self.num_interests, self.query_dim])

    def call(self, inputs, mask=None):
        scores, indices = self.lookup(inputs, mask)
        weights = tf.nn.softmax(scores, axis=-1)  # [B, k, m], float32/float64
        rows = tf.gather(self.memory, indices)  # [B, k, m, dim], sparse gradient
        retrieved = tf.einsum("bkm,bkmd->bkd", weights, rows)
        p0 = tf.cast(self.base_tokens, retrieved.dtype)[tf.newaxis] + retrieved
        return tf.cast(p0, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return tf.TensorShape([input_shape[0], self.num_interests, input_shape[-1]])

    def get_config(self):
        config = super().get_config()

        def ser(init):
            return None if init is None else _initializers.serialize(init)

        config.update(
            num_interests=self.num_interests,
            num_keys=self.num_keys,
            top_m=self.top_m,
            query_dim=self.query_dim,
            kernel_initializer=ser(self.kernel_initializer),
            bias_initializer=ser(self.bias_initializer),
            key_initializer=ser(self.key_initializer),
            memory_initializer=ser(self.memory_initializer),
            base_initializer=ser(self.base_initializer),
        )
        return config
