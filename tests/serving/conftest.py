"""Fixtures of the serving tests: one small trained model and two exports of it.

Package-scoped: every test module of tests/serving shares them (one export run).
"""

import pytest
import tensorflow as tf

from tests.serving.common import K, MAX_LEN, VOCAB
from tfrs_linear import serving
from tfrs_linear.cli import main
from tfrs_linear.config import ModelConfig
from tfrs_linear.models import SequentialRetrievalModel, save_model_dir


@pytest.fixture(scope="package")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    config = ModelConfig(attention="linrec", max_len=MAX_LEN, d_model=16, num_heads=2,
                         ffn_dim=32, num_layers=1, dropout=0.0, attention_dropout=0.0)
    model = SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all()
    save_model_dir(model, VOCAB, root / "model")
    return root, model


@pytest.fixture(scope="package")
def exports(trained):
    root, _ = trained
    base = root / "saved_models" / "recs"
    v1 = serving.export_model_dir(root / "model", base, k=K, exclude_history=False)
    rc = main(["export", "--model", str(root / "model"), "--base-path", str(base),
               "--k", "100", "--exclude-history"])
    assert rc == 0
    v2 = base / "2"
    return {"base": base, "v1": v1, "v2": v2,
            "l1": tf.saved_model.load(str(v1)), "l2": tf.saved_model.load(str(v2))}
