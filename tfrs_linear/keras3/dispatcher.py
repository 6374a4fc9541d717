"""Keras 3 `LinearDispatcherAttention`: ELASTIC's linear dispatcher attention (LDA)."""

import math

import keras
from keras import ops

from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3 import _dispatcher_recurrent as D
from tfrs_linear.keras3 import _elastic_math as E
from tfrs_linear.keras3.dropout import CounterDropout

# Recency slopes ``_MAX_SLOPE * sigmoid(raw)``: a half-life of at least one item, which
# keeps a causal chunk's logit rise within the TF fast path's bound.
_LN2 = math.log(2.0)
_MAX_SLOPE = _LN2
_HALF_LIFE_RANGE = (2.0, 1024.0)  # initial half-lives, geometric over the interests

_KERNELS = (
    # (projection, its width per head: "q" = key_dim, "v" = value_dim)
    ("query_1", "q"), ("key_1", "q"), ("value_1", "v"),
    ("query_2", "q"), ("key_2", "q"), ("value_2", "v"),
)


def recency_raw_init(num_heads, num_interests):
    """Raw slopes ``[heads, k]`` with half-lives geometric from 2 to 1024 items."""
    lo, hi = _HALF_LIFE_RANGE
    steps = max(num_interests - 1, 1)
    raws = []
    for i in range(num_interests):
        p = (_LN2 / (lo * (hi / lo) ** (i / steps))) / _MAX_SLOPE  # sigmoid(raw)
        raws.append(math.log(p / (1.0 - p)))
    return [raws] * num_heads


def _validate(num_heads, key_dim, num_interests, value_dim, chunk_size, dropout):
    for name, value in (("num_heads", num_heads), ("key_dim", key_dim),
                        ("num_interests", num_interests), ("chunk_size", chunk_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if value_dim is not None and int(value_dim) < 1:
        raise ValueError(f"value_dim must be >= 1, got {value_dim}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")


@C.register
class LinearDispatcherAttention(keras.layers.Layer):
    """ELASTIC's linear dispatcher attention for Keras 3: aggregate N -> k, dispatch k -> N.

    The math, weights (names and shapes), defaults and configuration of
    :class:`tfrs_linear.layers.LinearDispatcherAttention` (``docs/elastic.md``), written
    in ``keras.ops`` so that it runs on every backend. Non-causal::

        A  = softmax_N(P W_q1 (X W_k1)ᵀ / sqrt(key_dim))        per head, padding masked
        P' = LayerNorm(P + concat_h(A_h X W_v1^h) W_o1)          W_o1 has no bias
        Y  = softmax_k(X W_q2 (P' W_k2)ᵀ / sqrt(key_dim)) P' W_v2
        out = concat_h(dropout(Y_h)) W_o2 + b_o2                 padded positions -> 0

    Causal (``causal=True``): ``P`` is the layer's own tokens, no LayerNorm on the
    interest stream, ``P'_t`` the prefix mean at every position with ``W_o1 W_k2`` and
    ``W_o1 W_v2`` folded into the values (chunk-wise; on TensorFlow through
    :func:`tfrs_linear.ops.dispatcher_attention`, elsewhere the same fast path and exact
    per-position fallback in ``keras.ops``).
    Returned interests are those after all real items.

    ``recency_bias=True`` adds ``slope[h, i] · (s - (N - 1))`` to the aggregate logits
    (slopes ``ln 2 · sigmoid(raw)``, float32 under mixed precision, initial half-lives
    geometric from 2 to 1024 items). ``learned_interests=False`` (non-causal only): no
    tokens of its own, ``interests`` must be passed.

    Call: ``layer(inputs, mask=None, interests=None, training=None, last_only=False)``;
    returns ``(outputs [batch, length or 1, dim], interests [batch, k, dim])``.

    Streaming (causal only): :meth:`initial_state`, :meth:`step` and :meth:`advance`, as
    on the tf-keras layer; the recency slopes become a per-event decay of the state.
    """

    def __init__(self, num_heads, key_dim, num_interests, value_dim=None, causal=False,
                 dropout=0.0, use_bias=True, chunk_size=32, layer_norm_epsilon=1e-6,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 interest_initializer=None, kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 learned_interests=True, recency_bias=False, seed=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if causal and not learned_interests:
            raise ValueError(
                "LinearDispatcherAttention(causal=True) always uses its own learned interest "
                "tokens: learned_interests=False needs causal=False."
            )
        _validate(num_heads, key_dim, num_interests, value_dim, chunk_size, dropout)
        self.num_heads, self.key_dim = int(num_heads), int(key_dim)
        self.num_interests = int(num_interests)
        self._value_dim_arg = None if value_dim is None else int(value_dim)
        self.value_dim = self._value_dim_arg or self.key_dim
        self.causal, self.dropout, self.use_bias = bool(causal), float(dropout), bool(use_bias)
        self.chunk_size = int(chunk_size)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.learned_interests, self.recency_bias = bool(learned_interests), bool(recency_bias)
        self.seed = seed
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if interest_initializer is None:
            interest_initializer = keras.initializers.RandomNormal(stddev=1.0)
        self.interest_initializer = keras.initializers.get(interest_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.supports_masking = True
        self._last_only_call = False

    # ------------------------------------------------------------------ build
    def _kernel(self, name, shape):
        return self.add_weight(name=name, shape=shape,
                               initializer=C.fresh(self.kernel_initializer),
                               regularizer=self.kernel_regularizer,
                               constraint=self.kernel_constraint)

    def _bias(self, name, shape):
        if not self.use_bias:
            return None
        return self.add_weight(name=name, shape=shape,
                               initializer=C.fresh(self.bias_initializer),
                               regularizer=self.bias_regularizer,
                               constraint=self.bias_constraint)

    def build(self, input_shape):
        dim = C.check_rank3("LinearDispatcherAttention", input_shape)
        self.model_dim = dim
        h, k = self.num_heads, self.num_interests
        width = {"q": self.key_dim, "v": self.value_dim}
        self.interest_tokens = None
        if self.learned_interests:
            self.interest_tokens = self.add_weight(
                name="interest_tokens", shape=(k, dim),
                initializer=C.fresh(self.interest_initializer))
        for name, kind in _KERNELS[:3]:  # aggregate (N -> k)
            setattr(self, f"{name}_kernel", self._kernel(f"{name}_kernel", (dim, h, width[kind])))
            setattr(self, f"{name}_bias", self._bias(f"{name}_bias", (h, width[kind])))
        self.output_1_kernel = self._kernel("output_1_kernel", (h, self.value_dim, dim))
        for name, kind in _KERNELS[3:]:  # dispatch (k -> N)
            setattr(self, f"{name}_kernel", self._kernel(f"{name}_kernel", (dim, h, width[kind])))
            setattr(self, f"{name}_bias", self._bias(f"{name}_bias", (h, width[kind])))
        self.output_2_kernel = self._kernel("output_2_kernel", (h, self.value_dim, dim))
        self.output_2_bias = self._bias("output_2_bias", (dim,))
        self.recency_raw = None
        if self.recency_bias:  # float32 under mixed precision: the bias reaches slope * N
            self.recency_raw = self.add_weight(
                name="recency_raw", shape=(h, k), autocast=False,
                initializer=keras.initializers.Constant(recency_raw_init(h, k)))
        self.interest_norm = None
        if not self.causal:
            self.interest_norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
                name="interest_norm")
            self.interest_norm.build((None, k, dim))
        self.dropout_layer = CounterDropout(
            self.dropout, dtype=self.dtype_policy, seed=self.seed, name="dropout")

    # ------------------------------------------------------------------ call
    @staticmethod
    def _heads(x, kernel, bias):
        """``[B, L, dim] -> [B, H, L, width]`` (a per-head projection)."""
        y = ops.einsum("bld,dhe->bhle", x, kernel)
        return y if bias is None else y + bias[:, None, :]

    def _initial_interests(self, inputs, interests):
        if interests is None:
            tokens = ops.cast(self.interest_tokens, inputs.dtype)[None]
            return ops.repeat(tokens, ops.shape(inputs)[0], axis=0)
        shape = tuple(interests.shape)
        if len(shape) != 3 or shape[1] not in (None, self.num_interests) or shape[2] not in (
                None, self.model_dim):
            raise ValueError(
                "`interests` must be shaped [batch, num_interests, dim] = [batch, "
                f"{self.num_interests}, {self.model_dim}], got shape {shape} (inputs "
                f"{tuple(inputs.shape)})."
            )
        return ops.cast(interests, self.compute_dtype)

    def _check_call(self, inputs, interests, last_only):
        if len(inputs.shape) != 3:
            raise ValueError("LinearDispatcherAttention expects inputs shaped [batch, "
                             f"length, dim], got shape {tuple(inputs.shape)}.")
        if interests is not None and self.causal:
            raise ValueError(
                "LinearDispatcherAttention(causal=True) uses its own learned interest "
                "tokens at every position (a per-user P would break the prefix sums), so "
                f"`interests` must be None; got a tensor of shape {tuple(interests.shape)}."
            )
        if interests is None and self.interest_tokens is None:
            raise ValueError(
                "LinearDispatcherAttention(learned_interests=False) has no interest "
                "tokens of its own: pass `interests` [batch, num_interests, dim] (the "
                "previous block's or the interest memory's)."
            )
        self._last_only_call = bool(last_only)

    def call(self, inputs, mask=None, interests=None, training=None, last_only=False):
        self._check_call(inputs, interests, last_only)
        mask = C.as_bool_mask(mask if mask is not None else C.keras_mask(inputs))
        x = inputs
        p = self._initial_interests(x, interests)
        q1 = self._heads(p, self.query_1_kernel, self.query_1_bias)  # [B, H, k, dk]
        k1 = self._heads(x, self.key_1_kernel, self.key_1_bias)  # [B, H, N, dk]
        v1 = self._heads(x, self.value_1_kernel, self.value_1_bias)  # [B, H, N, dv]
        bias = self._recency(C.dims(x)[1])
        new_interests = self._interests_after_all(p, q1, k1, v1, mask, bias)
        if last_only or not self.causal:
            # Every query sees the interests after all items (non-causal; and the newest
            # position causally, whose prefix is the whole sequence).
            if last_only:
                x = x[:, -1:, :]
                mask = None if mask is None else mask[:, -1:]
            q2 = self._heads(x, self.query_2_kernel, self.query_2_bias)
            k2 = self._heads(new_interests, self.key_2_kernel, self.key_2_bias)
            v2 = self._heads(new_interests, self.value_2_kernel, self.value_2_bias)
            y = E.dispatcher_dispatch(q2, k2, v2, mask)  # [B, H, N, dv]
        else:
            y = self._causal_dispatch(x, p, q1, k1, v1, mask, bias)
        return self._output(y, mask, training), new_interests

    def _causal_dispatch(self, x, p, q1, k1, v1, mask, bias):
        q2 = self._heads(x, self.query_2_kernel, self.query_2_bias)  # [B, H, N, dk]
        # W_o1 W_k2 and W_o1 W_v2 folded into the per-position values (elastic.md).
        fold_k = ops.einsum("hvd,dge->hvge", self.output_1_kernel, self.key_2_kernel)
        fold_v = ops.einsum("hvd,dge->hvge", self.output_1_kernel, self.value_2_kernel)
        k2 = self._heads(p, self.key_2_kernel, self.key_2_bias)  # P W_k2 + b_k2
        v2 = self._heads(p, self.value_2_kernel, self.value_2_bias)
        return E.causal_dispatcher_attention(
            q2, k1, q1, k2, v2, v1, fold_k, fold_v, mask, self.chunk_size, bias)

    def recency_slopes(self):
        """The recency slopes ``[heads, k]`` (float32 under mixed precision), or None."""
        if self.recency_raw is None:
            return None
        return _MAX_SLOPE * ops.sigmoid(ops.convert_to_tensor(self.recency_raw))

    def _recency(self, length):
        """The aggregate logits' recency bias ``[1, H, k, N]`` (variable dtype), or None."""
        slopes = self.recency_slopes()
        if slopes is None:
            return None
        age = ops.cast(ops.arange(length) - (length - 1), slopes.dtype)  # <= 0, newest 0
        return (slopes[:, :, None] * age)[None]

    def _interests_after_all(self, p, q1, k1, v1, mask, bias):
        """``P'`` after every real item: ``P + (aggregate) W_o1``, LayerNorm'd non-causally."""
        agg = E.dispatcher_aggregate(q1, k1, v1, mask, aggregate_bias=bias)
        interests = p + ops.einsum("bhiv,hvd->bid", agg, self.output_1_kernel)
        return interests if self.causal else self.interest_norm(interests)

    def _output(self, y, mask, training):
        y = self.dropout_layer(y, training=training)  # per head, before W_o2
        outputs = ops.einsum("bhnv,hvd->bnd", y, self.output_2_kernel)
        if self.output_2_bias is not None:
            outputs = outputs + self.output_2_bias
        if mask is not None:
            outputs = outputs * ops.cast(mask, outputs.dtype)[:, :, None]
        return outputs

    def compute_output_spec(self, inputs, mask=None, interests=None, training=None,
                            last_only=False):
        # Shapes without tracing `call` (whose chunking needs a static length on JAX).
        self._check_call(inputs, interests, last_only)
        batch, length, dim = inputs.shape
        return (keras.KerasTensor((batch, 1 if last_only else length, dim), self.compute_dtype),
                keras.KerasTensor((batch, self.num_interests, dim), self.compute_dtype))

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        return [mask[:, -1:] if self._last_only_call else mask, None]

    # -- the recurrent (streaming) form -----------------------------------------------
    def _check_streamable(self, what):
        if not self.causal:
            raise ValueError(
                f"LinearDispatcherAttention.{what}: only the causal form has a constant-size "
                "per-user state; non-causally every position attends interests aggregated "
                "over the WHOLE sequence, so a new event changes every earlier output.")
        if not self.built:
            raise ValueError(f"LinearDispatcherAttention.{what} needs a built layer.")

    def _dims(self):
        """``(H, k, G, d_k, d_v)`` of the state (the dispatch heads are the heads)."""
        return (self.num_heads, self.num_interests, self.num_heads, self.key_dim,
                self.value_dim)

    def _stream_inputs(self, what, state, inputs, mask):
        """Checked ``(state, inputs, mask)`` as backend tensors."""
        self._check_streamable(what)
        inputs = ops.convert_to_tensor(inputs)
        if len(inputs.shape) != 3 or inputs.shape[-1] != self.model_dim:
            raise ValueError(f"LinearDispatcherAttention.{what} needs inputs shaped [batch, "
                             f"new_events, {self.model_dim}], got shape {tuple(inputs.shape)}.")
        if mask is not None:
            mask = ops.convert_to_tensor(mask)
            if not C.same_shape(mask.shape, inputs.shape[:2]):
                raise ValueError(f"LinearDispatcherAttention.{what}: mask must be [batch, "
                                 f"new_events] = {tuple(inputs.shape[:2])}, got shape "
                                 f"{tuple(mask.shape)}.")
        D.check_state(state, inputs.shape[0], *self._dims())
        state = {name: ops.convert_to_tensor(value) for name, value in state.items()}
        return state, inputs, mask

    def _in_compute_dtype(self, name):
        """The weight ``name`` in the compute dtype (what ``__call__``'s autocast gives a
        call; the recurrent form is called directly), or None."""
        weight = getattr(self, name)
        return None if weight is None else ops.cast(weight, self.compute_dtype)

    def _stream_heads(self, x, name):
        return self._heads(x, self._in_compute_dtype(f"{name}_kernel"),
                           self._in_compute_dtype(f"{name}_bias"))

    def _stream_folds(self):
        w_o1 = self._in_compute_dtype("output_1_kernel")
        return tuple(ops.einsum("hvd,dge->hvge", w_o1, self._in_compute_dtype(name))
                     for name in ("key_2_kernel", "value_2_kernel"))

    def initial_state(self, batch):
        """The causal state of ``batch`` users with no event yet: a dict of float32 arrays
        of fixed shapes (the keys and shapes of
        :func:`tfrs_linear.ops.dispatcher_initial_state`)."""
        self._check_streamable("initial_state")
        return D.initial_state(batch, *self._dims())

    def step(self, state, inputs, mask=None):
        """The causal form over ``m`` new events per user, given the past's state.

        ``inputs [B, m, dim]`` oldest first, rows right-padded where ``mask [B, m]`` is
        False. Returns ``(new_state, outputs [B, m, dim])``: the causal call's outputs at
        those events of the whole history (0 at padding), in ``O(m²)`` whatever the
        history's length. No dropout: the step is for inference.
        """
        state, x, mask = self._stream_inputs("step", state, inputs, mask)
        x = ops.cast(x, self.compute_dtype)
        p = self._initial_interests(x, None)
        state, y = D.step(
            state, self._stream_heads(x, "query_2"), self._stream_heads(x, "key_1"),
            self._stream_heads(p, "query_1"), self._stream_heads(p, "key_2"),
            self._stream_heads(p, "value_2"), self._stream_heads(x, "value_1"),
            *self._stream_folds(), mask, self.recency_slopes())
        y = ops.cast(y, self.compute_dtype)
        outputs = ops.einsum("bhnv,hvd->bnd", y, self._in_compute_dtype("output_2_kernel"))
        if self.output_2_bias is not None:
            outputs = outputs + self._in_compute_dtype("output_2_bias")
        if mask is not None:
            outputs = outputs * ops.cast(mask, outputs.dtype)[:, :, None]
        return state, outputs

    def advance(self, state, inputs, mask=None):
        """The state after ``m`` events per user without their outputs (:meth:`step`'s
        state in ``O(m)``). ``mask [B, m]`` on either padding side, each row's real events
        contiguous: a whole history from :meth:`initial_state` is the user's state."""
        state, x, mask = self._stream_inputs("advance", state, inputs, mask)
        x = ops.cast(x, self.compute_dtype)
        p = self._initial_interests(x, None)
        return D.advance(state, self._stream_heads(x, "key_1"), self._stream_heads(p, "query_1"),
                         self._stream_heads(x, "value_1"), *self._stream_folds(), mask,
                         self.recency_slopes())

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads, key_dim=self.key_dim, num_interests=self.num_interests,
            value_dim=self._value_dim_arg, causal=self.causal, dropout=self.dropout,
            use_bias=self.use_bias, chunk_size=self.chunk_size,
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=C.serialize(self.kernel_initializer),
            bias_initializer=C.serialize(self.bias_initializer),
            interest_initializer=C.serialize(self.interest_initializer),
            kernel_regularizer=C.serialize(self.kernel_regularizer),
            bias_regularizer=C.serialize(self.bias_regularizer),
            activity_regularizer=C.serialize(self.activity_regularizer),
            kernel_constraint=C.serialize(self.kernel_constraint),
            bias_constraint=C.serialize(self.bias_constraint),
            learned_interests=self.learned_interests, recency_bias=self.recency_bias,
            seed=self.seed,
        )
        return config
