"""examples/tfrs_custom_model.py: a user's own tfrs.Model around SequenceEncoder trains a few
XLA-compiled steps on string ids looked up in tf.data, and its BruteForce top-k and
FactorizedTopK metrics agree with a NumPy brute-force ranking of every item."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tfrs_custom_model.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("tfrs_custom_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lookup_keeps_the_encoders_reserved_indices(example):
    lookup = example.item_lookup(["a", "b"])
    assert lookup(tf.constant(["", "zzz", "a", "b"])).numpy().tolist() == [0, 1, 2, 3]
    inputs, targets = example.next_item_examples([["a", "b", "a"], ["b"] * 12], max_len=4)
    assert inputs.tolist() == [["", "", "a", "b"], ["b"] * 4] and targets.tolist() == ["a", "b"]


def test_custom_model_top_k_matches_a_numpy_brute_force(example):
    tf.keras.utils.set_random_seed(2)
    histories, names = example.synthetic_histories(num_users=40, num_items=15, seed=2)
    inputs, targets = example.next_item_examples(histories)
    lookup = example.item_lookup(names)
    model = example.SequentialRetrieval(vocab_size=lookup.vocabulary_size(), d_model=16)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), jit_compile=True)
    history = model.fit(example.make_dataset(inputs, targets, lookup, batch_size=16), epochs=1,
                        verbose=0)  # 3 compiled steps
    assert np.isfinite(history.history["loss"][0])
    model.index_items()
    metrics = model.evaluate(example.make_dataset(inputs, targets, lookup), return_dict=True,
                             verbose=0)

    ids = lookup(tf.constant(inputs.astype(str)))
    users = model.query_tower(ids).numpy().astype(np.float64)
    table = model.item_embedding.embeddings.numpy().astype(np.float64)[2:]  # names[i] = row i + 2
    scores = users @ table.T
    order = np.argsort(-scores, axis=1, kind="stable")

    index = example.recommender(model, names, k=5)
    got_scores, got_names = index(model.query_tower(ids))
    want_names = np.array(names, dtype=object)[order[:, :5]]
    assert [[n.decode() for n in row] for row in got_names.numpy()] == want_names.tolist()
    np.testing.assert_allclose(got_scores.numpy(), np.take_along_axis(scores, order[:, :5], 1),
                               rtol=1e-4, atol=1e-5)
    # FactorizedTopK: the share of users whose next item ranks in the top k.
    rank = np.argmax(order == np.array([names.index(t) for t in targets])[:, None], axis=1)
    for k in (1, 5, 10):
        assert metrics[f"factorized_top_k/top_{k}_categorical_accuracy"] == pytest.approx(
            np.mean(rank < k), abs=1e-6)
