"""`TableEmbedding`: Keras' ``Embedding`` that gathers its rows from a dense read.

Why: the first time a sparse op (``ResourceGather``: what ``tf.keras.layers.Embedding``
runs on its variable) reads a resource variable, TensorFlow switches that variable to
copy-on-read mode for the rest of the process, and from then on every dense read of it
(``ReadVariableOp``) copies the whole variable. A served retrieval model does both with
its item table: it gathers the rows of the request's items and reads the table densely to
score the catalogue, so every request copied the whole table (``[V, d]`` float32: 2.6 MB
at 10,000 items, 256 MB at a million) before scoring it. Gathering the rows of a dense
read instead (``tf.gather(tf.convert_to_tensor(table), ids)``) keeps the variable out of
copy-on-read mode: the dense read then hands out the variable's buffer without a copy.

What stays Keras': the class is a ``tf.keras.layers.Embedding`` (same arguments, config,
masking, variable and checkpoint names, mixed-precision output cast); sparse and ragged
inputs and ``use_one_hot_matmul`` take Keras' own path. Same rows, same gradient (an
``IndexedSlices`` over the gathered rows, as Keras' own lookup gives the optimizer).
"""

import tensorflow as tf


def gather_rows(table, ids):
    """Rows ``ids`` of ``table`` (a variable or a tensor), gathered from ONE dense read.

    Never runs a sparse variable op, so ``table`` never enters TensorFlow's copy-on-read
    mode (module docstring): use it for every lookup in a served graph."""
    return tf.gather(tf.convert_to_tensor(table), ids)


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class TableEmbedding(tf.keras.layers.Embedding):
    """``tf.keras.layers.Embedding`` whose lookups gather from a dense read of the table.

    Drop-in for ``Embedding`` (module docstring): the same arguments and outputs; the
    difference is only which TensorFlow op reads the variable, so that a served model
    that also reads the table densely (scoring, the tied candidate tower) never copies
    it per request.
    """

    def call(self, inputs):
        if isinstance(inputs, (tf.SparseTensor, tf.RaggedTensor)) or self._use_one_hot_matmul:
            return super().call(inputs)
        if inputs.dtype not in (tf.int32, tf.int64):
            inputs = tf.cast(inputs, tf.int32)
        out = gather_rows(self.embeddings, inputs)
        if self.sparse:
            out = tf.sparse.from_dense(out)
        policy = self._dtype_policy
        if policy.compute_dtype != policy.variable_dtype:
            # As Keras does: the output is cast, not the table.
            out = tf.cast(out, policy.compute_dtype)
        return out
