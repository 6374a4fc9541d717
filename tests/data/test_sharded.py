"""A preprocessed directory streamed from its shards (``ShardedSequences``) gives the same
examples, counts and evaluation batches as the in-memory ``SequenceData`` of the same
data (an independent path: NumPy windows over materialised sequences)."""

import collections

import numpy as np
import pytest

from tfrs_linear import data
from tfrs_linear.data import DataError
from tests.data.test_preprocessed import sequence_data, write_preprocessed


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    seq = sequence_data()
    out = tmp_path_factory.mktemp("sharded") / "pre"
    write_preprocessed(out, seq, num_shards=3, compression="gzip")
    return seq, data.load_dataset(str(out), stream=True)


def rows(batches, keys):
    """Every row of every batch as a tuple of its values under ``keys``."""
    out = []
    for b in batches:
        columns = [np.asarray(b[k]) for k in keys]
        for i in range(len(columns[0])):
            out.append(tuple(np.asarray(c[i]).tobytes() for c in columns))
    return out


def test_counts_and_description_are_the_in_memory_ones(both):
    seq, streamed = both
    assert isinstance(streamed, data.ShardedSequences)
    assert (streamed.num_users, streamed.num_items, streamed.num_interactions) == \
        (seq.num_users, seq.num_items, seq.num_interactions)
    assert sorted(streamed.lengths.tolist()) == sorted(seq.lengths.tolist())
    np.testing.assert_array_equal(streamed.item_popularity, seq.item_popularity)
    assert streamed.vocab == seq.vocab
    assert "streamed from 3 shard(s)" in streamed.describe()
    for max_len, regime in ((5, "all"), (50, "all"), (5, "last")):
        assert data.targets_per_example(streamed, max_len, regime) == \
            data.targets_per_example(seq, max_len, regime)


@pytest.mark.parametrize("regime, max_len", [("all", 5), ("all", 50), ("last", 4)])
def test_an_epoch_holds_exactly_the_in_memory_examples(both, regime, max_len):
    seq, streamed = both
    keys = ("inputs", "targets", "offsets")
    want = data.training_examples(seq, max_len, regime)
    want = collections.Counter(rows([want], keys))
    n = data.num_training_examples(streamed, max_len, regime)
    assert n == sum(want.values())
    ds = data.training_dataset(streamed, max_len, 7, regime=regime, seed=3,
                               drop_remainder=False)
    assert int(ds.cardinality()) == -(-n // 7)
    got = collections.Counter(rows(ds, keys))
    assert got == want
    # Seeded: the same order twice, another order with another seed.
    first = rows(data.training_dataset(streamed, max_len, 7, regime=regime, seed=3), keys)
    again = rows(data.training_dataset(streamed, max_len, 7, regime=regime, seed=3), keys)
    other = rows(data.training_dataset(streamed, max_len, 7, regime=regime, seed=4), keys)
    assert first == again and first != other


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluation_batches_hold_every_user_once(both, split):
    seq, streamed = both
    keys = ("inputs", "targets", "weights", "history", "offsets")
    want = list(data.evaluation_batches(seq, split, 6, 8))
    got = list(data.evaluation_batches(streamed, split, 6, 8))
    assert [b["inputs"].shape for b in got] == [b["inputs"].shape for b in want]
    assert got[0]["history"].shape == want[0]["history"].shape
    assert collections.Counter(rows(got, keys)) == collections.Counter(rows(want, keys))


def test_a_run_trains_and_evaluates_from_the_shards(both, tmp_path):
    """The trainer runs on a streamed directory; its reported test metrics equal the
    in-memory evaluation of the same trained model (the full protocol does not depend on
    the users' order), and data.json has the in-memory counts."""
    import json

    from tfrs_linear.config import ModelConfig, TrainConfig
    from tfrs_linear.models import load_model_dir
    from tfrs_linear.training import evaluate_model, train

    seq, streamed = both
    model_config = ModelConfig(max_len=8, d_model=16, num_heads=2, ffn_dim=32, num_layers=1,
                               positions="from_start")
    train_config = TrainConfig(batch_size=16, epochs=1, xla=False, eval_batch_size=8)
    got = train(model_config, train_config, streamed, tmp_path / "run")
    model, _, _ = load_model_dir(tmp_path / "run")
    want = evaluate_model(model, seq, "test", train_config)
    for name, value in got["test"].items():
        assert value == pytest.approx(float(want[name]), abs=1e-6), name
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert (info["num_users"], info["num_interactions"]) == (seq.num_users, seq.num_interactions)


def test_a_shard_with_a_wrong_count_is_an_error(tmp_path):
    out = tmp_path / "pre"
    meta = write_preprocessed(out, sequence_data())
    text = (out / data.METADATA_FILE).read_text().replace(
        f'"num_users": {meta["num_users"]}', f'"num_users": {meta["num_users"] + 1}')
    (out / data.METADATA_FILE).write_text(text)
    with pytest.raises(DataError, match="the shards hold"):
        data.load_dataset(str(out), stream=True).num_users
