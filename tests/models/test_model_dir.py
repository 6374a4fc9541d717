"""The model directory: directories saved by earlier versions load and give the same
scores; keys a saved config.json predates; the flat config.json."""

import json
from pathlib import Path

import numpy as np
import pytest

from tfrs_linear.config import ModelConfig, TrainConfig, load_config
from tfrs_linear.models import SequentialRetrievalModel, load_model_dir, save_model_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model_dir_v0_1_0"


@pytest.mark.parametrize("name", ["linrec", "elastic", "softmax-last"])
def test_model_dirs_written_by_v0_1_0_load_and_give_the_same_scores(name):
    """tests/fixtures/model_dir_v0_1_0/: written by tfrs-linear 0.1.0 with the user
    embeddings and scores it computed for fixed inputs (expected.json)."""
    directory = FIXTURES / name
    expected = json.loads((directory / "expected.json").read_text())
    model, train_config, vocab = load_model_dir(directory)
    assert vocab == (directory / "vocab.txt").read_text().splitlines()
    saved = json.loads((directory / "config.json").read_text())
    for key, value in saved.items():  # every flat key lands in one of the two configurations
        got = getattr(model.config, key) if hasattr(model.config, key) else getattr(train_config, key)
        assert got == value, key
    inputs = np.array(expected["inputs"], np.int32)
    user = model.encode(inputs).numpy()
    # The same weights and math, summed in another order where the ops changed since
    # 0.1.0 (causal ELASTIC applies its W_o1 W_k2 / W_o1 W_v2 folds after its sums now):
    # float32 rounding, a few units in the last place of the largest entries.
    want = np.array(expected["user_embedding"])
    np.testing.assert_allclose(user, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    scores = user.astype(np.float64) @ model.item_embeddings().numpy().T.astype(np.float64)
    want = np.array(expected["scores"])
    np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_model_dirs_saved_before_the_recency_option_load_without_it(tmp_path):
    """An ELASTIC model directory whose config.json predates `recency_bias` (no such key)
    was trained without the bias: it loads as such and serves the saved weights."""
    config = ModelConfig(attention="elastic", recency_bias=False, max_len=8, d_model=8,
                         num_layers=1, num_heads=2, ffn_dim=16, num_interests=3)
    vocab = ["[PAD]", "[OOV]"] + [str(i) for i in range(10)]
    model = SequentialRetrievalModel(config, vocab_size=len(vocab)).build_all()
    save_model_dir(model, vocab, tmp_path)
    path = tmp_path / "config.json"
    values = json.loads(path.read_text())
    del values["recency_bias"]
    path.write_text(json.dumps(values))
    loaded, _, _ = load_model_dir(tmp_path)
    assert loaded.config.recency_bias is False
    ids = np.array([[0, 0, 3, 4, 5, 6, 7, 8]], np.int32)
    np.testing.assert_allclose(loaded.encode(ids).numpy(), model.encode(ids).numpy(), rtol=1e-6)
    # A configuration file without the key (a reference config) gets the default: on;
    # a model records the value it was built with.
    model_config, _ = load_config(path)
    assert model_config.uses_recency_bias
    built = SequentialRetrievalModel(model_config, vocab_size=len(vocab))
    assert built.config.recency_bias is True
    save_model_dir(built.build_all(), vocab, tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["recency_bias"] is True


def test_save_model_dir_writes_one_flat_config_with_the_run(tmp_path):
    config = ModelConfig(attention="linrec", max_len=8, d_model=8, num_layers=1, num_heads=2,
                         ffn_dim=16)
    vocab = ["[PAD]", "[OOV]", "a", "b"]
    model = SequentialRetrievalModel(config, vocab_size=len(vocab)).build_all()
    save_model_dir(model, vocab, tmp_path / "default")
    save_model_dir(model, vocab, tmp_path / "run", train_config=TrainConfig(exclude_history=True))
    flat = json.loads((tmp_path / "run" / "config.json").read_text())
    assert list(flat) == sorted(flat)  # one object, keys sorted, as every version wrote it
    assert flat["exclude_history"] is True and flat["max_len"] == 8 and flat["causal"] is None
    assert json.loads((tmp_path / "default" / "config.json").read_text())["exclude_history"] is False
    _, train_config, _ = load_model_dir(tmp_path / "run")
    assert train_config == TrainConfig(exclude_history=True)


def test_load_model_dir_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a trained model directory: config.json is missing"):
        load_model_dir(tmp_path)
    config = ModelConfig(max_len=4, d_model=4, num_layers=1, num_heads=1, ffn_dim=4)
    model = SequentialRetrievalModel(config, vocab_size=3).build_all()
    save_model_dir(model, ["[PAD]", "[OOV]", "a"], tmp_path)
    for f in (tmp_path / "weights").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no weights under"):
        load_model_dir(tmp_path)
