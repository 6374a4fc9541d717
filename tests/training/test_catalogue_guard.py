"""The full-CE loss refuses a catalogue whose logits would not fit in memory, before
anything is written, with one line that names the sampled loss. The logits are those of
one chunk of rows (the loss scores ``rows_per_chunk(V)`` rows at a time): ``[min(batch ·
positions, chunk), items]``. The memory is monkeypatched small: nothing large is ever
allocated."""

import os
import sys

import pytest

from tfrs_linear.cli import main
from tfrs_linear.config import ModelConfig, TrainConfig
from tfrs_linear.data import synthetic
from tfrs_linear.models import retrieval
from tfrs_linear.ops import rows_per_chunk
from tfrs_linear.training import train
from tests.models.common import TINY_MODEL, TINY_TRAIN, tiny_sequences


@pytest.fixture(scope="module")
def tiny_data():
    return tiny_sequences()


def _logits_bytes(batch, positions, vocab):
    return 4 * batch * positions * vocab  # float32, by hand


@pytest.mark.parametrize("regime,positions", [("all", 12), ("last", 1)])
def test_a_full_loss_run_over_the_memory_is_refused_before_anything_is_written(
        tiny_data, tmp_path, monkeypatch, regime, positions):
    vocab = tiny_data.num_items  # 30 items + padding and OOV
    assert vocab == 32
    logits = _logits_bytes(8, positions, vocab)  # 12,288 bytes in regime "all"
    monkeypatch.setattr(retrieval, "memory_limit_bytes", lambda: 2 * logits - 1)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        train(ModelConfig(attention="linrec", regime=regime, loss="full", **TINY_MODEL),
              TrainConfig(**TINY_TRAIN), tiny_data, out, verbose=0)
    message = str(error.value)
    assert "\n" not in message
    assert (f"batch size 8 x {positions} positions, scored {8 * positions} at a time, x a "
            "catalogue of 30 items (32 vocabulary ids)") in message
    assert f"({logits:,} bytes) of float32 logits" in message
    assert f"({2 * logits - 1:,} bytes) of memory available" in message
    assert "--loss sampled" in message
    assert not out.exists()


def test_the_limit_is_the_logits_and_their_gradient(tiny_data):
    config = ModelConfig(attention="linrec", loss="full", **TINY_MODEL)
    logits = retrieval.full_loss_logits_bytes(config, 8, 32)
    assert logits == _logits_bytes(8, 12, 32)
    retrieval.check_full_loss_fits(config, 8, 32, available=2 * logits)  # fits exactly
    with pytest.raises(ValueError, match="use --loss sampled"):
        retrieval.check_full_loss_fits(config, 8, 32, available=2 * logits - 1)
    # The sampled loss has no [B·N, V] logits: never refused.
    retrieval.check_full_loss_fits(config.replace(loss="sampled"), 8, 32, available=1)


def test_the_logits_are_one_chunk_of_rows():
    """A big batch over a big catalogue holds one chunk's logits: at 10⁷ items the loss
    scores 16 rows at a time (2 x 4 x 16 x 10⁷ bytes = 1.3 GB with the gradient), where
    [256 x 200, 10⁷] logits would be 2 TB."""
    config = ModelConfig()
    assert config.loss == "full" and config.regime == "all"
    assert rows_per_chunk(10_000_002) == 16
    assert retrieval.full_loss_rows(config, 256, 10_000_002) == (256 * config.max_len, 16)
    assert retrieval.full_loss_logits_bytes(config, 256, 10_000_002) == 4 * 16 * 10_000_002
    retrieval.check_full_loss_fits(config, 256, 10_000_002, available=2 * 4 * 16 * 10_000_002)
    # Fewer rows than a chunk: all of them at once.
    assert retrieval.full_loss_rows(config.replace(regime="last"), 8, 1_002) == (8, 8)


def test_a_catalogue_too_big_for_one_chunk_is_refused_on_this_machines_real_memory():
    """10¹¹ items: 16 rows of logits and their gradient need 2 x 4 x 16 x 10¹¹ bytes
    = 12.8 TB, more than any test machine has."""
    config = ModelConfig()
    host = retrieval.available_memory_bytes()
    with pytest.raises(ValueError, match=r"of memory available; use --loss sampled"):
        retrieval.check_full_loss_fits(config, 256, 10**11 + 2, available=host)
    retrieval.check_full_loss_fits(config, 256, 1_002, available=host)  # a small catalogue fits


def test_available_memory_without_psutil_comes_from_sysconf(monkeypatch):
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < retrieval.available_memory_bytes() <= total
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError
    assert 0 < retrieval.available_memory_bytes() <= total


def test_the_limit_is_the_hosts_memory_on_cpu_and_unchecked_on_an_accelerator(monkeypatch):
    import tensorflow as tf
    monkeypatch.setattr(retrieval, "available_memory_bytes", lambda: 12345)
    cpu = tf.config.PhysicalDevice(name="/physical_device:CPU:0", device_type="CPU")
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [cpu] if kind in (None, "CPU") else [])
    assert retrieval.memory_limit_bytes() == 12345
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [gpu] if kind == "GPU" else [])
    assert retrieval.memory_limit_bytes() is None


def test_the_cli_prints_one_error_line_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TFRS_LINEAR_TRACEBACK", raising=False)
    monkeypatch.setattr(retrieval, "memory_limit_bytes", lambda: 1000)
    data = tmp_path / "tiny.inter"
    rows = synthetic.generate(num_users=40, num_items=30, num_interests=5, median_length=20,
                              min_length=6, max_length=40, seed=3)
    data.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{t}\n" for u, i, t in zip(rows.users, rows.items, rows.timestamps)))
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--output", str(out), "--max-len", "12",
                 "--batch-size", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tfrs-linear train: error: the full loss cannot hold its logits: "
                          "batch size 8 x 12 positions, scored 96 at a time, x a catalogue of ")
    assert "--loss sampled" in err and "\n" not in err
    assert not out.exists()
