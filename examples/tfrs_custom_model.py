"""Your own ``tfrs.Model`` around the library's sequence encoder (docs/custom-tfrs-model.md).

The way the TensorFlow Recommenders tutorials build a retrieval model, with one change: the
query tower is :class:`tfrs_linear.layers.SequenceEncoder`, which reads the user's recent
items. Every piece is plain TFRS:

* string item ids become vocabulary indices in the ``tf.data`` pipeline
  (``tf.keras.layers.StringLookup`` in ``dataset.map``): the model itself sees integers only,
  so its training step can be compiled with XLA (XLA cannot compile string lookups);
* the candidate tower is the item embedding the encoder reads its inputs with (tied);
* the loss and metrics: ``tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(...))``;
* recommendations: ``tfrs.layers.factorized_top_k.BruteForce``, indexed with the item
  names.

Run it: ``python examples/tfrs_custom_model.py`` (a tiny synthetic catalogue, a minute on
a CPU).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFRS needs tf-keras (Keras 2)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from tfrs_linear.layers import SequenceEncoder  # noqa: E402

MAX_LEN = 8


def synthetic_histories(num_users=96, num_items=24, seed=0):
    """Users who walk through the catalogue in order (``item_7`` is followed by
    ``item_8``), from a random start, 3 to 12 items each: ``(histories, item names)``."""
    rng = np.random.default_rng(seed)
    names = [f"item_{i}" for i in range(num_items)]
    histories = []
    for _ in range(num_users):
        start, length = rng.integers(num_items), rng.integers(3, 13)
        histories.append([names[(start + j) % num_items] for j in range(length)])
    return histories, names


def next_item_examples(histories, max_len=MAX_LEN):
    """``(inputs [U, max_len] str, next item [U] str)``: each history but its last item,
    left-padded with "" (the padding token) to its newest ``max_len`` items."""
    inputs, targets = [], []
    for history in histories:
        seen = history[:-1][-max_len:]
        inputs.append([""] * (max_len - len(seen)) + seen)
        targets.append(history[-1])
    return np.array(inputs, dtype=object), np.array(targets, dtype=object)


def item_lookup(names):
    """Item name -> vocabulary index, with the encoder's reserved indices: "" (padding) -> 0,
    an unknown name -> 1, ``names[i]`` -> ``i + 2``."""
    return tf.keras.layers.StringLookup(vocabulary=list(names), mask_token="", num_oov_indices=1)


def make_dataset(inputs, targets, lookup, batch_size=32, shuffle_seed=None):
    """Batches of ``{"history": int [B, max_len], "next_item": int [B]}``: the lookup runs in
    the tf.data pipeline, outside the (XLA-compiled) model."""
    ds = tf.data.Dataset.from_tensor_slices((inputs.astype(str), targets.astype(str)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(targets), seed=shuffle_seed)
    return ds.batch(batch_size).map(
        lambda history, item: {"history": lookup(history), "next_item": lookup(item)},
        num_parallel_calls=tf.data.AUTOTUNE,
    )


class SequentialRetrieval(tfrs.Model):
    """Query tower: the item sequence through a ``SequenceEncoder`` (its newest position).
    Candidate tower: the same item embedding. Task: in-batch softmax retrieval with
    top-k metrics against every item."""

    def __init__(self, vocab_size, max_len=MAX_LEN, d_model=32, attention="linrec"):
        super().__init__()
        self.vocab_size = vocab_size
        self.item_embedding = tf.keras.layers.Embedding(vocab_size, d_model, name="item_embedding")
        self.query_tower = SequenceEncoder(
            vocab_size, max_len, d_model=d_model, num_layers=1, num_heads=2, ffn_dim=64,
            attention=attention, dropout=0.1, attention_dropout=0.1, output="last",
            item_embedding=self.item_embedding,  # tied: the candidate tower below
        )
        # The metric's index: every real item (indices >= 2), refreshed by index_items().
        self.item_index = tfrs.layers.factorized_top_k.BruteForce(k=10)
        self.task = tfrs.tasks.Retrieval(
            metrics=tfrs.metrics.FactorizedTopK(candidates=self.item_index, ks=(1, 5, 10))
        )

    def item_ids(self):
        """The indices of the real items (0 pads, 1 is the unknown item), int64 as the
        lookup's: the metric's index answers with them, compared with the true items'."""
        return tf.range(2, self.vocab_size, dtype=tf.int64)

    def index_items(self):
        """Indexes the current item embeddings (after training, before evaluating)."""
        ids = self.item_ids()
        self.item_index.index(self.item_embedding(ids), ids)

    def compute_loss(self, features, training=False):
        users = self.query_tower(features["history"], training=training)
        items = self.item_embedding(features["next_item"])
        # The top-k metrics rank every item: evaluation only. With the true items' ids they
        # match retrieved ids (exact); without, TFRS compares the true item's score with the
        # retrieved scores, and a score computed in another order can lose a tie with itself.
        return self.task(users, items, candidate_ids=features["next_item"],
                         compute_metrics=not training)


def recommender(model, names, k=5):
    """A ``BruteForce`` index over every item, answering with item names."""
    index = tfrs.layers.factorized_top_k.BruteForce(k=k)
    index.index(model.item_embedding(model.item_ids()), tf.constant(list(names)))
    return index


def main(epochs=30, seed=0, verbose=2):
    tf.keras.utils.set_random_seed(seed)
    histories, names = synthetic_histories(seed=seed)
    inputs, targets = next_item_examples(histories)
    lookup = item_lookup(names)
    train = make_dataset(inputs, targets, lookup, shuffle_seed=seed).cache()
    model = SequentialRetrieval(vocab_size=lookup.vocabulary_size())
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), jit_compile=True)
    model.fit(train, epochs=epochs, verbose=verbose)
    model.index_items()
    metrics = model.evaluate(make_dataset(inputs, targets, lookup), return_dict=True, verbose=0)
    index = recommender(model, names)
    scores, recommended = index(model.query_tower(lookup(tf.constant(inputs[:3].astype(str)))))
    if verbose:
        print({k: round(float(v), 3) for k, v in metrics.items()})
        for history, row in zip(inputs[:3], recommended.numpy()):
            print([h for h in history if h], "->", [r.decode() for r in row])
    return model, metrics


if __name__ == "__main__":
    main()
