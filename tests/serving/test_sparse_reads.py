"""No served signature reads a variable sparsely.

TensorFlow switches a resource variable to copy-on-read mode the first time a sparse op
(``ResourceGather``, ``ResourceGatherNd``) reads it; from then on every dense read of it
(``ReadVariableOp``) copies the whole variable, for the rest of the process. A served
retrieval model gathers the query's rows from its item table AND reads the table densely
to score the catalogue, so a sparse gather cost one copy of the whole table per request
(2.6 MB at 10,000 items, 256 MB at 1M). The exports gather rows of a dense read instead.
Oracle: the SavedModel's graph and function library, op by op.
"""

from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tfrs_linear import serving
from tfrs_linear.serving.check import check_serving

SPARSE_READS = {"ResourceGather", "ResourceGatherNd"}


def sparse_reads(version):
    """``[(where, node name, op)]`` of every sparse variable read in an export."""
    model = saved_model_pb2.SavedModel.FromString(
        (Path(version) / "saved_model.pb").read_bytes())
    found = []
    for meta in model.meta_graphs:
        graph = meta.graph_def
        found += [("graph", n.name, n.op) for n in graph.node if n.op in SPARSE_READS]
        for fn in graph.library.function:
            found += [(fn.signature.name, n.name, n.op) for n in fn.node_def
                      if n.op in SPARSE_READS]
    return found


def _gathering_export(path):
    """A SavedModel that gathers rows of a variable the way Keras' Embedding does."""
    module = tf.Module()
    module.table = tf.Variable(tf.ones([5, 2]))
    module.f = tf.function(lambda i: tf.gather(module.table, i),
                           input_signature=[tf.TensorSpec([None], tf.int32)])
    tf.saved_model.save(module, str(path), signatures=module.f.get_concrete_function())
    return path


def test_the_oracle_sees_a_sparse_read(tmp_path):
    assert {op for _, _, op in sparse_reads(_gathering_export(tmp_path))} == {"ResourceGather"}


def test_check_serving_notes_sparse_reads_and_ours_have_none(tmp_path, exports):
    _, lines = check_serving(_gathering_export(tmp_path / "other"), compare=False)
    note = [line for line in lines if line.startswith("note:")]
    assert len(note) == 1 and "sparse variable read" in note[0] and "copy-on-read" in note[0]
    ok, lines = check_serving(exports["v2"])
    assert ok and not any("sparse variable read" in line for line in lines)


@pytest.mark.parametrize("which", ["v1", "v2"])
def test_plain_exports_read_no_variable_sparsely(exports, which):
    assert sparse_reads(exports[which]) == []


@pytest.mark.parametrize("attention", ["linrec", "elastic"])
def test_streaming_exports_read_no_variable_sparsely(stream_exports, attention):
    assert sparse_reads(stream_exports[attention]["version"]) == []


def test_interest_memory_export_reads_no_variable_sparsely(tmp_path):
    """Non-causal ELASTIC with its product-key memory (rows gathered per user)."""
    from tests.serving.common import MAX_LEN, VOCAB
    from tfrs_linear.config import ModelConfig
    from tfrs_linear.models import SequentialRetrievalModel

    config = ModelConfig(attention="elastic", regime="last", use_memory=True, memory_keys=4,
                         memory_top_m=2, max_len=MAX_LEN, d_model=16, num_heads=2,
                         ffn_dim=32, num_layers=1, num_interests=4, dropout=0.0,
                         attention_dropout=0.0)
    model = SequentialRetrievalModel(config, vocab_size=len(VOCAB)).build_all()
    version = serving.export_model(model, VOCAB, tmp_path / "memory", k=5)
    assert sparse_reads(version) == []


def test_bf16_export_reads_no_variable_sparsely(trained, tmp_path):
    _, model = trained
    from tests.serving.common import VOCAB

    version = serving.export_model(model, VOCAB, tmp_path / "bf16", k=5, scoring="bf16",
                                   candidates=8)
    assert sparse_reads(version) == []


def test_export_cli_says_exact_copy_is_no_faster(trained, tmp_path, capsys):
    from tfrs_linear.cli import main

    root, _ = trained
    assert main(["export", "--model", str(root / "model"), "--base-path",
                 str(tmp_path / "copy"), "--k", "5", "--scoring", "exact_copy"]) == 0
    out = capsys.readouterr().out
    assert "note: --scoring exact_copy" in out and "no faster" in out
    assert sparse_reads(tmp_path / "copy" / "1") == []
