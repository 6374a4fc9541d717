"""Keras 3 `InterestMemory`: ELASTIC's product-key interest memory (it yields ``P₀``)."""

import keras
from keras import ops

from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3 import _elastic_math as E
from tfrs_linear.keras3 import _portable as P
from tfrs_linear.layer_checks import check_interest_memory_args


@C.register
class InterestMemory(keras.layers.Layer):
    """ELASTIC's interest memory retrieval (IMR) for Keras 3, as in
    :class:`tfrs_linear.layers.InterestMemory` (``docs/elastic.md``).

    * query: the masked mean of the sequence (0 for an all-padding row, its count floored
      at 1) -> ``Dense(k · query_dim)`` -> ``k`` queries of width ``query_dim``;
    * keys: two sets of ``num_keys`` sub-keys of width ``query_dim / 2``; the exact top-m
      of the ``num_keys²`` product slots (:func:`tfrs_linear.ops.product_key_lookup`'s
      algorithm in ``keras.ops``);
    * values: ``num_keys²`` rows of width ``dim``; the retrieved interest is the softmax
      (over the ``m`` scores) weighted sum of the ``m`` gathered rows;
    * ``P₀ = base tokens (k x dim) + retrieved interests``.

    Every weight of this layer is kept in the variable dtype (float32 under mixed
    precision, not autocast): the mean, query, scores, softmax and sum are computed in
    float32 (float64 for a float64 layer) and the output is cast to the compute dtype.
    Defaults: rows ``N(0, 1/dim)``, sub-keys ``U(±1/sqrt(query_dim/2))``, base tokens
    ``N(0, 1)``.

    Call: ``memory(inputs, mask=None)`` with ``inputs [batch, length, dim]`` and a
    ``[batch, length]`` padding mask (or the Keras mask); returns ``[batch, k, dim]``.
    """

    def __init__(self, num_interests, num_keys=128, top_m=8, query_dim=32,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 key_initializer=None, memory_initializer=None, base_initializer=None,
                 **kwargs):
        super().__init__(**kwargs)
        (self.num_interests, self.num_keys, self.top_m,
         self.query_dim) = check_interest_memory_args(num_interests, num_keys, top_m, query_dim)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.key_initializer = (None if key_initializer is None
                                else keras.initializers.get(key_initializer))
        self.memory_initializer = (None if memory_initializer is None
                                   else keras.initializers.get(memory_initializer))
        if base_initializer is None:
            base_initializer = keras.initializers.RandomNormal(stddev=1.0)
        self.base_initializer = keras.initializers.get(base_initializer)
        self.supports_masking = True

    def _weight(self, name, shape, initializer):
        return self.add_weight(name=name, shape=shape, initializer=C.fresh(initializer),
                               autocast=False)

    def build(self, input_shape):
        dim = C.check_rank3("InterestMemory", input_shape)
        k, dq, n = self.num_interests, self.query_dim, self.num_keys
        half = dq // 2
        key_init = self.key_initializer or keras.initializers.RandomUniform(
            -(half**-0.5), half**-0.5)
        memory_init = self.memory_initializer or keras.initializers.RandomNormal(
            stddev=dim**-0.5)
        self.query_kernel = self._weight("query_kernel", (dim, k * dq), self.kernel_initializer)
        self.query_bias = self._weight("query_bias", (k * dq,), self.bias_initializer)
        self.sub_keys_1 = self._weight("sub_keys_1", (n, half), key_init)
        self.sub_keys_2 = self._weight("sub_keys_2", (n, half), key_init)
        self.memory = self._weight("memory", (n * n, dim), memory_init)
        self.base_tokens = self._weight("base_tokens", (k, dim), self.base_initializer)

    def _work_dtype(self):
        return C.compute_dtype(self.variable_dtype)

    def _queries(self, inputs, mask):
        if len(inputs.shape) != 3:
            raise ValueError("InterestMemory expects inputs shaped [batch, length, dim], "
                             f"got shape {tuple(inputs.shape)}.")
        mask = C.as_bool_mask(mask if mask is not None else C.keras_mask(inputs))
        work = self._work_dtype()
        x = ops.cast(inputs, work)
        if mask is None:
            mean = ops.mean(x, axis=1)
        else:
            m = ops.cast(mask, work)[:, :, None]
            mean = ops.sum(x * m, axis=1) / P.maximum(ops.sum(m, axis=1), 1.0)
        q = P.matmul(mean, ops.cast(self.query_kernel, work)) + ops.cast(self.query_bias, work)
        return ops.reshape(q, (-1, self.num_interests, self.query_dim))

    def lookup(self, inputs, mask=None):
        """``(scores, indices)`` of the selected slots, ``[batch, k, top_m]`` each."""
        work = self._work_dtype()
        return E.product_key_lookup(
            self._queries(inputs, mask), ops.cast(self.sub_keys_1, work),
            ops.cast(self.sub_keys_2, work), self.top_m)

    def call(self, inputs, mask=None):
        work = self._work_dtype()
        scores, indices = self.lookup(inputs, mask)
        weights = ops.softmax(scores, axis=-1)  # [B, k, m]
        rows = ops.take(ops.cast(self.memory, work), indices, axis=0)  # [B, k, m, dim]
        retrieved = ops.einsum("bkm,bkmd->bkd", weights, rows)
        p0 = ops.cast(self.base_tokens, work)[None] + retrieved
        return ops.cast(p0, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_interests, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            num_interests=self.num_interests, num_keys=self.num_keys, top_m=self.top_m,
            query_dim=self.query_dim,
            kernel_initializer=C.serialize(self.kernel_initializer),
            bias_initializer=C.serialize(self.bias_initializer),
            key_initializer=C.serialize(self.key_initializer),
            memory_initializer=C.serialize(self.memory_initializer),
            base_initializer=C.serialize(self.base_initializer),
        )
        return config
