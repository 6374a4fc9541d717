"""tfrs_linear.serving.check: ``tfrs-linear check-serving`` on good exports, on exports of
every attention, and on SavedModels TF Serving could not serve."""

import pytest
import tensorflow as tf

from tests.serving.common import K, MAX_LEN, VOCAB
from tfrs_linear import serving
from tfrs_linear.cli import main
from tfrs_linear.config import ModelConfig
from tfrs_linear.models import SequentialRetrievalModel, save_model_dir


def test_check_serving_passes_on_good_exports(exports, capsys):
    assert main(["check-serving", str(exports["v1"])]) == 0
    out = capsys.readouterr().out
    assert "ops scan: ok" in out and "replayed 9 of 9" in out
    assert "serving_tf_example(examples: string [-1]" in out
    assert "9 request(s) compared with the Python model" in out and "OK" in out
    assert main(["check-serving", str(exports["v2"])]) == 0


@pytest.mark.parametrize("attention", ["softmax", "elastic", "elastic-recency"])
def test_other_attentions_export_and_pass_check_serving(tmp_path, capsys, attention):
    """Causal softmax and causal ELASTIC (whose op holds a tf.cond fallback inside a custom
    gradient; with and without the recency bias) load and run in a TF1 session, with no
    op TF Serving lacks, and serve what the Python model computes. Positions from_end: the
    exports without the streaming signatures (test_check_streaming has those)."""
    config = ModelConfig(attention=attention.split("-")[0], max_len=MAX_LEN, d_model=16,
                         num_heads=2, ffn_dim=32, num_layers=1, num_interests=4, dropout=0.0,
                         attention_dropout=0.0, recency_bias=attention == "elastic-recency",
                         positions="from_end")
    model = SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all()
    save_model_dir(model, VOCAB, tmp_path / "model")
    version = serving.export_model_dir(tmp_path / "model", tmp_path / "saved" / "m", k=K)
    assert main(["check-serving", str(version), "--model", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "ops scan: ok" in out and "replayed 9 of 9" in out and "compared with the Python model" in out
    # Not streamable (positions from_end): no encode_state/step, and it checks fine.
    assert "encode_state" not in out and " step(" not in out and "streaming:" not in out


def test_check_serving_fails_when_model_differs(exports, tmp_path, capsys):
    config = ModelConfig(attention="linrec", max_len=MAX_LEN, d_model=16, num_heads=2,
                         ffn_dim=32, num_layers=1)
    other = SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all()
    save_model_dir(other, VOCAB, tmp_path / "other")
    assert main(["check-serving", str(exports["v1"]), "--model", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert "FAIL" in err and "differ" in err


def _save_module(path, fn):
    module = tf.Module()
    module.f = fn
    tf.saved_model.save(module, str(path), signatures={"serving_default": fn.get_concrete_function()})
    return path


def test_check_serving_rejects_py_function(tmp_path, capsys):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def f(x):
        return {"y": tf.py_function(lambda t: t * 2.0, [x], tf.float32)}

    path = _save_module(tmp_path / "1", f)
    assert main(["check-serving", str(path)]) == 1
    err = capsys.readouterr().err
    assert "FAIL" in err and "EagerPyFunc" in err and "TF Serving cannot" in err


def test_check_serving_rejects_jit_compile(tmp_path, capsys):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")], jit_compile=True)
    def f(x):
        return {"y": x * 2.0}

    path = _save_module(tmp_path / "1", f)
    assert main(["check-serving", str(path)]) == 1
    err = capsys.readouterr().err
    assert "FAIL" in err and "_XlaMustCompile" in err and "without XLA" in err


def test_check_serving_foreign_savedmodel_needs_no_compare(tmp_path, capsys):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def f(x):
        return {"y": x * 2.0}

    path = _save_module(tmp_path / "1", f)
    assert main(["check-serving", str(path)]) == 1
    assert "not a tfrs-linear export" in capsys.readouterr().err
    assert main(["check-serving", str(path), "--no-compare"]) == 0
    out = capsys.readouterr().out
    assert "ops scan: ok" in out and "skipped (--no-compare)" in out


def test_check_serving_flags_custom_ops():
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.graph_def.node.add(name="x", op="Placeholder")
    fn = meta.graph_def.library.function.add()
    fn.signature.name = "f"
    fn.node_def.add(name="y", op="SentencepieceOp")
    problems = serving.scan_graph(meta)
    assert len(problems) == 1 and "SentencepieceOp" in problems[0] and "custom op" in problems[0]


def test_check_serving_on_a_non_savedmodel(tmp_path, capsys):
    assert main(["check-serving", str(tmp_path)]) == 1
    assert "no saved_model.pb" in capsys.readouterr().err
