"""Fixtures of the serving tests: one small trained model and two exports of it, and one
streamable export per streaming attention.

Package-scoped: every test module of tests/serving shares them (one export run each).
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
    # positions="from_end": not streamable, so these exports have the three signatures only.
    config = ModelConfig(attention="linrec", max_len=MAX_LEN, d_model=16, num_heads=2,
                         ffn_dim=32, num_layers=1, dropout=0.0, attention_dropout=0.0,
                         positions="from_end")
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


# The streamable exports: R (--stream-history) of the linrec one; elastic's is exported
# with --keep-history (R = 0).
STREAM_R = 5


def _streamable(root, attention, flags):
    config = ModelConfig(attention=attention, max_len=MAX_LEN, d_model=16, num_heads=2,
                         ffn_dim=32, num_layers=1, num_interests=4, dropout=0.0,
                         attention_dropout=0.0, positions="from_start")
    model = SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all()
    save_model_dir(model, VOCAB, root / "model")
    base = root / "saved_models" / attention
    assert main(["export", "--model", str(root / "model"), "--base-path", str(base),
                 "--k", str(K)] + flags) == 0
    return {"model": model, "model_dir": root / "model", "version": base / "1"}


@pytest.fixture(scope="package")
def stream_exports(tmp_path_factory):
    """``{"linrec": ..., "elastic": ...}``: each ``{"model", "model_dir", "version"}`` of a
    causal from_start model exported by the CLI (linrec: history exclusion with
    ``--stream-history 5``; elastic: ``--keep-history``)."""
    return {
        "linrec": _streamable(tmp_path_factory.mktemp("stream_linrec"), "linrec",
                              ["--stream-history", str(STREAM_R)]),
        "elastic": _streamable(tmp_path_factory.mktemp("stream_elastic"), "elastic",
                               ["--keep-history"]),
    }
