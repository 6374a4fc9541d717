"""The ``bf16`` scoring path of ServingSignatures (bfloat16 candidate scan, exact float32
re-rank of the top C): its top-k against the exact scan's and a float64 NumPy oracle,
with and without history exclusion, the refused options, and the SavedModel's ops.

Fast against exact scores: equal within 1e-6 relative (a few float32 ulps: the exact scan
and the re-rank are different matmul kernels, which sum the d products in different
orders); against the float64 oracle within 1e-5."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_linear import serving
from tfrs_linear.config import ModelConfig
from tfrs_linear.data import save_vocabulary
from tfrs_linear.models import SequentialRetrievalModel
from tfrs_linear.serving.signatures import (
    DEFAULT_CANDIDATES,
    ServingSignatures,
    checked_scoring,
)

MAX_LEN = 6
ITEMS = 300
K = 10
C = 40
VOCAB = ["[PAD]", "[OOV]"] + [f"it{i}" for i in range(ITEMS)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny model whose item table has a popularity-like norm spread."""
    root = tmp_path_factory.mktemp("fast_scoring")
    config = ModelConfig(attention="linrec", max_len=MAX_LEN, d_model=16, num_heads=2,
                         ffn_dim=32, num_layers=1, dropout=0.0, attention_dropout=0.0,
                         positions="from_end")
    model = SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all()
    rng = np.random.default_rng(7)
    table = rng.standard_normal([len(VOCAB), 16]) * np.exp(rng.normal(0, 0.5, [len(VOCAB), 1]))
    model.candidate_embedding.embeddings.assign(table.astype(np.float32))
    vocab_file = root / "vocab.txt"
    save_vocabulary(VOCAB, vocab_file)
    return root, model, vocab_file


def _oracle_top_k(user, table, k, history=None):
    """float64 NumPy: (positions [B, k], scores [B, k]) over the catalogue (rows 2..),
    ties broken by the lower position; ``history`` [B, V] bool scores -inf."""
    scores = np.asarray(user, np.float64) @ np.asarray(table, np.float64)[2:].T
    if history is not None:
        scores = np.where(history[:, 2:], -np.inf, scores)
    order = np.stack([np.lexsort((np.arange(s.size), -s)) for s in scores])[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def _rank(built, user, history=None):
    out = built.rank(tf.constant(user, tf.float32),
                     None if history is None else tf.constant(history))
    ids = np.array([[VOCAB.index(v.decode()) - 2 for v in row] for row in out["item_ids"].numpy()])
    return ids, out["scores"].numpy()


def _users(n, seed=0):
    return np.random.default_rng(seed).standard_normal([n, 16]).astype(np.float32)


def test_bf16_top_k_equals_exact_and_the_oracle(tiny):
    _, model, vocab_file = tiny
    exact = ServingSignatures(model, vocab_file, K, False)
    fast = ServingSignatures(model, vocab_file, K, False, scoring="bf16", candidates=C)
    assert fast.candidates == C and exact.candidates is None
    user = _users(32)
    e_ids, e_scores = _rank(exact, user)
    f_ids, f_scores = _rank(fast, user)
    np.testing.assert_array_equal(f_ids, e_ids)
    np.testing.assert_allclose(f_scores, e_scores, atol=1e-6, rtol=1e-6)
    o_ids, o_scores = _oracle_top_k(user, model.item_embeddings().numpy(), K)
    np.testing.assert_array_equal(f_ids, o_ids)
    np.testing.assert_allclose(f_scores, o_scores, atol=1e-5, rtol=0)


def test_history_is_excluded_before_the_candidate_cut(tiny):
    _, model, vocab_file = tiny
    table = model.item_embeddings().numpy()
    fast = ServingSignatures(model, vocab_file, K, True, scoring="bf16", candidates=C)
    user = _users(8, seed=1)
    # Each row's history: its exact top C items (plus OOV). Excluded after the cut, no
    # candidate would be left; excluded before, the top-k are the next best items.
    top_c, _ = _oracle_top_k(user, table, C)
    history = np.zeros([len(user), len(VOCAB)], bool)
    history[np.arange(len(user))[:, None], top_c + 2] = True
    history[:, 1] = True
    f_ids, f_scores = _rank(fast, user, history)
    o_ids, o_scores = _oracle_top_k(user, table, K, history)
    assert np.isfinite(f_scores).all()
    assert not any(set(f) & set(t) for f, t in zip(f_ids, top_c))
    np.testing.assert_array_equal(f_ids, o_ids)
    np.testing.assert_allclose(f_scores, o_scores, atol=1e-5, rtol=0)


def test_ties_and_the_minus_inf_tail_match_the_exact_scan(tiny):
    _, model, vocab_file = tiny
    # Candidates capped at the catalogue; k larger than the catalogue minus the history:
    # the tail is -inf, in the exact scan's order (the lower position first).
    exact = ServingSignatures(model, vocab_file, ITEMS, True)
    fast = ServingSignatures(model, vocab_file, ITEMS, True, scoring="bf16",
                             candidates=10 * ITEMS)
    assert fast.candidates == ITEMS
    history = np.zeros([2, len(VOCAB)], bool)
    history[0, [5, 9, 200]] = True
    history[1, 2:40] = True
    user = _users(2, seed=2)
    e_ids, e_scores = _rank(exact, user, history)
    f_ids, f_scores = _rank(fast, user, history)
    np.testing.assert_array_equal(f_ids, e_ids)
    np.testing.assert_array_equal(np.isinf(f_scores), np.isinf(e_scores))
    assert np.isinf(f_scores[1, -38:]).all() and list(f_ids[1, -38:]) == list(range(38))
    np.testing.assert_allclose(f_scores[np.isfinite(f_scores)],
                               e_scores[np.isfinite(e_scores)], atol=1e-6, rtol=1e-6)


def test_exact_ties_break_by_the_lower_position(tmp_path):
    config = ModelConfig(attention="linrec", max_len=MAX_LEN, d_model=8, num_heads=2,
                         ffn_dim=16, num_layers=1, positions="from_end")
    vocab = VOCAB[:2 + 50]
    model = SequentialRetrievalModel(config, vocab_size=len(vocab)).build_all()
    rng = np.random.default_rng(3)
    table = rng.standard_normal([len(vocab), 8]).astype(np.float32)
    table[40:50] = table[2:12]  # positions 38..47 duplicate positions 0..9
    model.candidate_embedding.embeddings.assign(table)
    save_vocabulary(vocab, tmp_path / "vocab.txt")
    exact = ServingSignatures(model, tmp_path / "vocab.txt", 8, False)
    fast = ServingSignatures(model, tmp_path / "vocab.txt", 8, False, scoring="bf16",
                             candidates=12)
    user = tf.constant(rng.standard_normal([16, 8]).astype(np.float32))
    e, f = exact.rank(user), fast.rank(user)
    assert (np.diff(e["scores"].numpy(), axis=1) == 0).sum() >= 3  # tied pairs in the top-k
    np.testing.assert_array_equal(f["item_ids"].numpy(), e["item_ids"].numpy())
    np.testing.assert_allclose(f["scores"].numpy(), e["scores"].numpy(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"scoring": "bf16", "candidates": K - 1}, "--candidates must be an integer >= k"),
    ({"scoring": "bf16", "candidates": 2.5}, "--candidates must be an integer >= k"),
    ({"scoring": "exact", "candidates": 100}, "--candidates applies to --scoring bf16"),
    ({"scoring": "exact_copy", "candidates": 100}, "--candidates applies to --scoring bf16"),
    ({"scoring": "int4"}, "--scoring must be one of exact, exact_copy, bf16"),
])
def test_bad_options_are_refused(tiny, kwargs, match):
    _, model, vocab_file = tiny
    with pytest.raises(ValueError, match=match):
        ServingSignatures(model, vocab_file, K, False, **kwargs)


def test_default_candidates(tiny):
    _, model, vocab_file = tiny
    # max(DEFAULT_CANDIDATES, k), capped at the catalogue (300 items here).
    assert DEFAULT_CANDIDATES == 400
    assert ServingSignatures(model, vocab_file, K, False, scoring="bf16").candidates == ITEMS
    assert checked_scoring("bf16", None, 10) == 400
    assert checked_scoring("bf16", None, 500) == 500
    assert checked_scoring("bf16", 600, 500, catalogue=550) == 550
    assert checked_scoring("exact", None, 10) is None


def test_an_export_can_check_before_loading_the_model():
    # No catalogue yet: the requested k bounds C.
    with pytest.raises(ValueError, match=r"--candidates must be an integer >= k \(100\)"):
        checked_scoring("bf16", 50, 100)


def _save_and_scan(signatures, path):
    """Saves ``signatures``' module as a SavedModel at ``path``; asserts TF Serving's
    loader (a TF1 session on ``serve``) finds no XLA or Python ops; returns ``path``."""
    tf.saved_model.save(signatures.module, str(path), signatures=signatures.signatures())
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
    assert serving.scan_graph(meta) == []
    return path


def test_saved_model_has_the_bf16_table_and_no_xla(tiny):
    root, model, vocab_file = tiny
    fast = ServingSignatures(model, vocab_file, K, True, scoring="bf16", candidates=C)
    path = _save_and_scan(fast, root / "saved_bf16")
    loaded = tf.saved_model.load(str(path))
    table = [loaded.item_table_bf16]
    assert len(table) == 1 and table[0].dtype == tf.bfloat16
    assert table[0].shape == (ITEMS, 16)
    rows = [["it3", "it7", ""], ["it250", "nope", "it1"]]
    got = loaded.signatures["serving_default"](item_ids=tf.constant(rows))
    exact = ServingSignatures(model, vocab_file, K, True)
    want = exact.module.serving_default(tf.constant(rows))
    np.testing.assert_array_equal(got["item_ids"].numpy(), want["item_ids"].numpy())
    np.testing.assert_allclose(got["scores"].numpy(), want["scores"].numpy(), atol=1e-6, rtol=1e-6)
    assert not np.isin(got["item_ids"].numpy(), [b"it3", b"it7", b"it250", b"it1"]).any()


def test_exact_copy_equals_exact_and_owns_its_table(tiny):
    root, model, vocab_file = tiny
    exact = ServingSignatures(model, vocab_file, K, True)
    copy = ServingSignatures(model, vocab_file, K, True, scoring="exact_copy")
    np.testing.assert_array_equal(copy.module.item_table.numpy(),
                                  model.item_embeddings().numpy()[2:])
    user = _users(16, seed=4)
    history = np.zeros([16, len(VOCAB)], bool)
    history[:, 2:30] = True
    e_ids, e_scores = _rank(exact, user, history)
    c_ids, c_scores = _rank(copy, user, history)
    np.testing.assert_array_equal(c_ids, e_ids)
    np.testing.assert_allclose(c_scores, e_scores, atol=1e-6, rtol=1e-6)
    o_ids, _ = _oracle_top_k(user, model.item_embeddings().numpy(), K, history)
    np.testing.assert_array_equal(c_ids, o_ids)
    path = _save_and_scan(copy, root / "saved_copy")
