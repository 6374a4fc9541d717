"""`InterestMemory`: ELASTIC's interest memory retrieval, a product-key memory (tf-keras)."""

import tensorflow as tf

from tfrs_linear.layer_checks import check_interest_memory_args
from tfrs_linear.layers._common import check_inputs, fresh, input_dim, keras_mask_or
from tfrs_linear.layers.embedding import gather_rows
from tfrs_linear.ops.product_keys import product_key_lookup

_initializers = tf.keras.initializers


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class InterestMemory(tf.keras.layers.Layer):
    """ELASTIC's interest memory retrieval (IMR): a product-key memory that yields ``P₀``.

    Reconstruction (docs/elastic.md) with a product-key memory (Lample et al. 2019):

    * query: the masked mean of the sequence (``[batch, dim]``; 0 for an all-padding
      row, whose count is floored at 1) -> ``Dense(k · query_dim)`` -> ``k`` queries of
      width ``query_dim``;
    * keys: two sets of ``num_keys`` sub-keys of width ``query_dim / 2``; slot
      ``(i1, i2)`` (index ``i1 * num_keys + i2``) scores ``q1·K1[i1] + q2·K2[i2]``;
      :func:`tfrs_linear.ops.product_key_lookup` returns the exact top-m slots;
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
        (self.num_interests, self.num_keys, self.top_m,
         self.query_dim) = check_interest_memory_args(num_interests, num_keys, top_m, query_dim)
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
        dim = input_dim("InterestMemory", input_shape)
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
            initializer=fresh(self.kernel_initializer),
        )
        self.query_bias = self.add_weight(
            name="query_bias", shape=[k * dq], initializer=fresh(self.bias_initializer)
        )
        self.sub_keys_1 = self.add_weight(
            name="sub_keys_1",
            shape=[n, half],
            initializer=fresh(key_init),
            dtype=var_dtype,
            experimental_autocast=False,
        )
        self.sub_keys_2 = self.add_weight(
            name="sub_keys_2",
            shape=[n, half],
            initializer=fresh(key_init),
            dtype=var_dtype,
            experimental_autocast=False,
        )
        self.memory = self.add_weight(
            name="memory",
            shape=[n * n, dim],
            initializer=fresh(memory_init),
            dtype=var_dtype,
            experimental_autocast=False,
        )
        self.base_tokens = self.add_weight(
            name="base_tokens", shape=[k, dim], initializer=fresh(self.base_initializer)
        )
        super().build(input_shape)

    def lookup(self, inputs, mask=None):
        """``(scores, indices)`` of the selected slots, ``[batch, k, top_m]`` each."""
        queries = self._queries(inputs, mask)
        return product_key_lookup(
            queries, self.sub_keys_1, self.sub_keys_2, self.top_m
        )

    def _queries(self, inputs, mask):
        check_inputs("InterestMemory", inputs)
        mask = keras_mask_or(inputs, mask)
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
        # [B, k, m, dim], sparse gradient; from a dense read (layers.embedding: no
        # copy-on-read of the memory in a served model).
        rows = gather_rows(self.memory, indices)
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
