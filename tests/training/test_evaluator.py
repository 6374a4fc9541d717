"""The Evaluator: one compiled query tower per model, the protocol's metrics."""

import numpy as np
import pytest

from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.models import SequentialRetrievalModel
from tfrs_linear.training import Evaluator, evaluate_model, format_table
from tests.models.common import TINY_MODEL, tiny_sequences


@pytest.fixture(scope="module")
def model_and_data():
    data = tiny_sequences()
    model = SequentialRetrievalModel(ModelConfig(attention="linrec", **TINY_MODEL),
                                     vocab_size=data.num_items).build_all()
    return model, data


def test_one_evaluator_compiles_once_for_every_split_and_protocol(model_and_data):
    model, data = model_and_data
    evaluator = Evaluator(model, TrainConfig(eval_batch_size=16))
    results = [evaluator.evaluate(data, split, protocol=protocol)
               for split in ("valid", "test") for protocol in ("full", "pop100")]
    assert evaluator.encode_fn.experimental_get_tracing_count() == 1
    assert all(0.0 <= r["ndcg@10"] <= r["hr@10"] <= 1.0 for r in results)
    assert "_tfrs_linear_encode_fns" not in vars(model)  # no cache hidden on the model


def test_evaluate_model_is_the_evaluators_result_with_the_configs_defaults(model_and_data):
    model, data = model_and_data
    train_config = TrainConfig(eval_batch_size=7, xla=False, exclude_history=True)
    once = evaluate_model(model, data, "test", train_config)
    evaluator = Evaluator(model, train_config.replace(xla=True, eval_batch_size=64))
    for key, value in evaluator.evaluate(data, "test", exclude_history=True).items():
        assert once[key] == pytest.approx(value, abs=1e-6), key
    # An explicit exclude_history wins over the config's; removing competitors (the
    # history) never worsens a target's rank.
    kept = evaluate_model(model, data, "test", train_config, exclude_history=False)
    assert kept["num_users"] == once["num_users"]
    assert kept["hr@20"] <= once["hr@20"] + 1e-9 and kept["mrr@20"] <= once["mrr@20"] + 1e-9


def test_format_table_has_one_row_per_split():
    metrics = {f"{m}@{k}": 0.5 for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20)}
    table = format_table({"valid": metrics, "test": metrics}).splitlines()
    assert table[0].split()[:3] == ["split", "hr@5", "hr@10"]
    assert [line.split()[0] for line in table[1:]] == ["valid", "test"]
    assert np.allclose([float(x) for x in table[1].split()[1:]], 0.5)
