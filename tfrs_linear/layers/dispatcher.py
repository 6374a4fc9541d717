"""`LinearDispatcherAttention`: ELASTIC's linear dispatcher attention as a tf-keras layer.

Specification: ``docs/elastic.md`` (Deng et al., arXiv 2408.09380, withdrawn, no public
code). This module is the library's reconstruction; the docstrings list every choice the
paper leaves open. The math is :mod:`tfrs_linear.ops.dispatcher`.
"""

import math

import tensorflow as tf

from tfrs_linear.layers._common import (
    check_inputs, fresh, heads_output, heads_projection, input_dim, keras_mask_or,
)
from tfrs_linear.layers.dropout import CounterDropout
from tfrs_linear.ops.dispatcher import (
    dispatcher_aggregate,
    dispatcher_attention_from_values,
    dispatcher_dispatch,
)
from tfrs_linear.ops.contract import contract
from tfrs_linear.ops.dispatcher_causal import check_causal_path, fold_values
from tfrs_linear.ops.dispatcher_recurrent import (
    dispatcher_advance_from_values, dispatcher_initial_state, dispatcher_step,
)

_initializers = tf.keras.initializers
_regularizers = tf.keras.regularizers
_constraints = tf.keras.constraints

_LN2 = math.log(2.0)
# The largest recency slope: ``slope = MAX_RECENCY_SLOPE * sigmoid(raw)`` (``recency_bias``
# of LinearDispatcherAttention), i.e. ln 2, a half-life of at least one item. The bound
# keeps the logits' rise inside a causal chunk (<= slope * chunk) small enough for the
# ops' factorised fast path at the default chunk sizes (32-64).
MAX_RECENCY_SLOPE = _LN2
# Initial half-lives, in items: geometric from 2 to 1024 over the k interests.
_HALF_LIFE_RANGE = (2.0, 1024.0)


def _recency_raw_init(num_heads, num_interests):
    """Raw slope parameters ``[heads, k]`` giving geometric half-lives over the interests."""
    lo, hi = _HALF_LIFE_RANGE
    steps = max(num_interests - 1, 1)
    half_lives = [lo * (hi / lo) ** (i / steps) for i in range(num_interests)]
    raws = []
    for h in half_lives:
        p = (_LN2 / h) / MAX_RECENCY_SLOPE  # sigmoid(raw), in (0, 0.5]
        raws.append(math.log(p / (1.0 - p)))
    return [raws] * num_heads


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

    Causal (``causal=True``, per-position training): docs/elastic.md's design. ``P`` is
    always the layer's learned tokens (passing ``interests`` raises); no LayerNorm on the
    interest stream; ``P'_t = P + concat_h(mean_{s<=t} of X_s W_v1^h under A_h) W_o1``,
    computed by :func:`tfrs_linear.ops.dispatcher_attention_from_values` with
    ``W_o1 W_k2`` and ``W_o1 W_v2`` folded into the values, chunk-wise. Returned interests
    are ``P'`` at the last position (= over all real items), ``[batch, k, dim]``.

    Reconstruction choices (the paper is silent on them):

    * Multi-head in both steps with the same ``num_heads``/``key_dim``/``value_dim``, and
      an output projection per step, like ``MultiHeadAttention``: ``W_o1`` maps the
      aggregated heads back to the model width so that the residual ``P + ...`` is
      defined, ``W_o2`` maps the dispatched heads to the output.
    * ``W_o1`` has no bias, so an all-padding input gives exactly ``P' = LayerNorm(P)``
      as docs/elastic.md states (a bias would be redundant with the learned tokens anyway).
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
        attention does through its per-position queries. Slopes
        ``MAX_RECENCY_SLOPE · sigmoid(raw)`` (``MAX_RECENCY_SLOPE = ln 2 = 0.693``: a
        half-life of at least one item), initialised to half-lives geometric from 2 to
        1024 items over the interests, the same for every head.
      learned_interests: whether the layer has interest tokens of its own (default).
        ``False`` (non-causal only) for a layer that always receives ``interests`` (a
        block after the first in a hand-off stack, or the first behind an interest
        memory): no unused ``[k, dim]`` variable, and calling it without ``interests``
        raises.
      causal_path: which implementation of the causal form runs (see
        :func:`tfrs_linear.ops.dispatcher_attention`): ``"auto"`` (default) the
        factorised fast path whenever it is exact for the call, else the exact
        per-position fallback; ``"fast"`` or ``"exact"`` to force one (benchmarks,
        debugging). Ignored non-causally and by ``last_only`` calls (which need no prefix
        sums).

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
        causal_path="auto",
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        check_causal_path(causal_path)
        if causal and not learned_interests:
            raise ValueError(
                "LinearDispatcherAttention(causal=True) always uses its own learned interest "
                "tokens: learned_interests=False needs causal=False."
            )
        self.learned_interests = bool(learned_interests)
        self.recency_bias = bool(recency_bias)
        self.causal_path = causal_path
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
            initializer=fresh(self.kernel_initializer),
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
            initializer=fresh(self.bias_initializer),
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
            trainable=True,
        )

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        dim = input_dim("LinearDispatcherAttention", input_shape)
        self.model_dim = dim
        h, dk, dv, k = self.num_heads, self.key_dim, self.value_dim, self.num_interests
        self.interest_tokens = None
        if self.learned_interests:
            self.interest_tokens = self.add_weight(
                name="interest_tokens",
                shape=[k, dim],
                initializer=fresh(self.interest_initializer),
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
        self.dropout_layer = CounterDropout(
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
        check_inputs("LinearDispatcherAttention", inputs)
        if interests is not None and self.causal:
            raise ValueError(
                "LinearDispatcherAttention(causal=True) uses its own learned interest "
                "tokens at every position (a per-user P would break the prefix sums), so "
                "`interests` must be None; got a tensor of shape "
                f"{tf.TensorShape(interests.shape)}."
            )
        mask = keras_mask_or(inputs, mask)
        x = inputs
        p = self._initial_interests(x, interests)
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
            y = self._dispatch(x, new_interests, mask)
        else:
            y = self._causal_attention(x, p, q1, k1, v1, mask, bias)
            new_interests = self._interests_after_all(p, q1, k1, v1, mask, bias)

        return self._output(y, mask, training), new_interests

    def _initial_interests(self, x, interests):
        """``P [batch, k, dim]``: ``interests`` (checked) or the learned tokens, tiled."""
        if interests is not None:
            return self._check_interests(interests, x)
        if self.interest_tokens is None:
            raise ValueError(
                "LinearDispatcherAttention(learned_interests=False) has no interest "
                "tokens of its own: pass `interests` [batch, num_interests, dim] (the "
                "previous block's or the interest memory's)."
            )
        batch = tf.shape(x)[0]
        return tf.tile(tf.cast(self.interest_tokens, x.dtype)[tf.newaxis], [batch, 1, 1])

    def _dispatch(self, x, interests, mask):
        """The dispatch step (k -> N) of every position of ``x`` over ``interests``."""
        q2 = self._heads(x, self.query_2_kernel, self.query_2_bias)  # [B,H,N,dk]
        k2 = self._heads(interests, self.key_2_kernel, self.key_2_bias)
        v2 = self._heads(interests, self.value_2_kernel, self.value_2_bias)
        return dispatcher_dispatch(q2, k2, v2, mask)  # [B,H,N,dv]

    def _causal_attention(self, x, p, q1, k1, v1, mask, bias):
        """The causal fused attention ``[B, H, N, dv]``: prefix means of folded values."""
        q2 = self._heads(x, self.query_2_kernel, self.query_2_bias)  # [B,H,N,dk]
        # W_o1 W_k2 and W_o1 W_v2 are folded into the per-position values (docs/elastic.md):
        # value_key[b, h, n, g, :] = (X W_v1 + b_v1)^h W_o1^h W_k2^g; the op applies the
        # folds after its sums, never forming the folded values on its fast path.
        k2 = self._heads(p, self.key_2_kernel, self.key_2_bias)  # P W_k2 + b_k2
        v2 = self._heads(p, self.value_2_kernel, self.value_2_bias)
        return dispatcher_attention_from_values(
            q2,
            k1,
            q1,
            k2,
            v2,
            v1,
            *self._folds(),
            mask=mask,
            causal=True,
            chunk_size=self.chunk_size,
            aggregate_bias=bias,
            causal_path=self.causal_path,
        )

    def _folds(self):
        """``(W_o1 W_k2, W_o1 W_v2)`` per head pair: ``[H, dv, H, d]`` each, each one 2-D
        MatMul (``einsum("hvd,dge->hvge")``; a served step computes them every call)."""
        h, v, dim = self.output_1_kernel.shape
        w_o1 = tf.reshape(self.output_1_kernel, [h * v, dim])

        def fold(kernel):
            g, e = kernel.shape[1:]
            return tf.reshape(tf.matmul(w_o1, tf.reshape(kernel, [dim, g * e])), [h, v, g, e])

        return fold(self.key_2_kernel), fold(self.value_2_kernel)

    # -- the recurrent (streaming) form ------------------------------------------------
    def initial_state(self, batch):
        """The causal form's state of ``batch`` users with no event yet
        (:func:`tfrs_linear.ops.dispatcher_initial_state`, float32)."""
        self._check_streamable()
        return dispatcher_initial_state(batch, self.num_heads, self.num_interests,
                                        self.num_heads, self.key_dim, self.value_dim)

    def _check_streamable(self):
        if not self.causal or self.interest_tokens is None:
            raise ValueError(
                "LinearDispatcherAttention has a constant-size per-user state only in its "
                "causal form with its own interest tokens: non-causally every position "
                "attends interests aggregated over the WHOLE sequence (and LayerNorm'd), "
                "so a new event changes every earlier output."
            )
        if not self.built:
            raise ValueError("LinearDispatcherAttention.initial_state/step need a built layer.")

    def step(self, state, inputs, mask=None):
        """The causal form over ``m`` new events per user, given the past's state.

        ``inputs [B, m, dim]`` (oldest first; rows right-padded where ``mask [B, m]`` is
        False). Returns ``(new_state, outputs [B, m, dim])``: the causal call's outputs
        at those events of the whole history (0 at padding). Recency slopes become the
        state's per-event decay. No dropout: the step is for inference.
        """
        self._check_streamable()
        inputs, w = self._in_compute_dtype(inputs)
        fold_k, fold_v = (w(f) for f in self._folds())
        v1 = heads_projection(inputs, w(self.value_1_kernel), w(self.value_1_bias))
        interest_query, interest_key, interest_value = self._interest_heads(
            inputs, (w(self.query_1_kernel), w(self.query_1_bias)),
            (w(self.key_2_kernel), w(self.key_2_bias)),
            (w(self.value_2_kernel), w(self.value_2_bias)))
        state, y = dispatcher_step(
            state,
            heads_projection(inputs, w(self.query_2_kernel), w(self.query_2_bias)),
            heads_projection(inputs, w(self.key_1_kernel), w(self.key_1_bias)),
            interest_query, interest_key, interest_value,
            *fold_values(v1, fold_k, fold_v, einsum=contract),
            mask=mask, recency_slope=self.recency_slopes(),
        )
        return state, _zero_padding(
            heads_output(y, w(self.output_2_kernel), w(self.output_2_bias)), mask)

    def advance(self, state, inputs, mask=None):
        """The state after ``m`` events per user, without their outputs: :meth:`step`'s
        state in ``O(m)`` (no ``m x m`` weights, no dispatch). ``inputs [B, m, dim]``;
        ``mask [B, m]`` on either padding side, each row's real events contiguous: a
        whole history from :meth:`initial_state` is the user's state in one pass."""
        self._check_streamable()
        inputs, w = self._in_compute_dtype(inputs)
        (interest_query,) = self._interest_heads(
            inputs, (w(self.query_1_kernel), w(self.query_1_bias)))
        return dispatcher_advance_from_values(
            state,
            heads_projection(inputs, w(self.key_1_kernel), w(self.key_1_bias)),
            interest_query,
            heads_projection(inputs, w(self.value_1_kernel), w(self.value_1_bias)),
            *(w(f) for f in self._folds()), mask=mask, recency_slope=self.recency_slopes(),
        )

    def _in_compute_dtype(self, inputs):
        """``(inputs, w)`` in the layer's compute dtype, ``w(weight)`` a weight in it (or
        None): what ``__call__``'s autocast does, for the recurrent form, which is called
        directly (under mixed precision the variables are float32)."""
        dtype = self.compute_dtype

        def w(weight):
            return None if weight is None else tf.cast(weight, dtype)

        return tf.cast(inputs, dtype), w

    def _interest_heads(self, inputs, *projections):
        """The learned interest tokens' projections ``[B, H, k, width]`` (one per
        ``(kernel, bias)``) for the batch of ``inputs``: projected once, then broadcast
        over the batch (the same for every user)."""
        tokens = tf.cast(self.interest_tokens, inputs.dtype)[tf.newaxis]  # [1, k, dim]
        batch = tf.shape(inputs)[:1]
        out = []
        for kernel, bias in projections:
            y = heads_projection(tokens, kernel, bias)  # [1, H, k, width]
            out.append(tf.broadcast_to(y, tf.concat([batch, y.shape[1:]], axis=0)))
        return out

    def recency_slopes(self):
        """The recency slopes ``[heads, k]`` (the variable dtype: float32 under mixed
        precision), or None without ``recency_bias``."""
        if self.recency_raw is None:
            return None
        return MAX_RECENCY_SLOPE * tf.sigmoid(self.recency_raw)

    def _recency(self, length):
        """The aggregate logits' recency bias ``[1, H, k, N]`` (variable dtype), or None."""
        slopes = self.recency_slopes()
        if slopes is None:
            return None
        age = tf.cast(tf.range(length) - (length - 1), slopes.dtype)  # <= 0, newest 0
        return (slopes[:, :, tf.newaxis] * age)[tf.newaxis]

    def _interests_after_all(self, p, q1, k1, v1, mask, bias):
        """``P'`` after every real item: ``P + (aggregate) W_o1``, LayerNorm'd non-causally."""
        agg = dispatcher_aggregate(q1, k1, v1, mask, aggregate_bias=bias)
        interests = p + tf.einsum("bhiv,hvd->bid", agg, self.output_1_kernel)
        return interests if self.causal else self.interest_norm(interests)

    def _output(self, y, mask, training):
        y = self.dropout_layer(y, training=training)  # per head, before W_o2
        outputs = tf.einsum("bhnv,hvd->bnd", y, self.output_2_kernel)
        if self.output_2_bias is not None:
            outputs = outputs + self.output_2_bias
        return _zero_padding(outputs, mask)

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
            causal_path=self.causal_path,
        )
        return config


def _zero_padding(outputs, mask):
    """``outputs [B, N, dim]`` with the padded positions (``mask`` False) set to 0."""
    if mask is None:
        return outputs
    return outputs * tf.cast(mask, outputs.dtype)[:, :, tf.newaxis]
