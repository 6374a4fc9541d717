"""pipelines/tfx_trainer.py: run_fn trains and exports from a preprocessed directory, without tfx."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import tfrs_linear  # noqa: F401  (Keras 2 before tf.keras)
from tfrs_linear import data
from tests.pipelines.common import PIPELINES, assert_same, tfx_trainer


def test_tfx_trainer_does_not_import_tfx():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(PIPELINES / 'tfx_trainer.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert callable(m.run_fn)\n"
        "bad = [n for n in sys.modules if n == 'tfx' or n.startswith('tfx.')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_run_fn_trains_and_exports_for_serving(prepared, tmp_path):
    from tfrs_linear import cli, serving

    _, out, _ = prepared
    fn_args = types.SimpleNamespace(
        train_files=[str(out / "sequences-*.tfrecord")],
        eval_files=[str(out / "sequences-*.tfrecord")],
        transform_output=None,  # found from the shards' directory
        serving_model_dir=str(tmp_path / "serving" / "Format-Serving"),
        model_run_dir=str(tmp_path / "run"),
        train_steps=None,
        eval_steps=None,
        custom_config={"attention": "linrec", "epochs": 1, "max_len": 8, "d_model": 16,
                       "num_heads": 2, "num_layers": 1, "ffn_dim": 32, "batch_size": 4,
                       "eval_batch_size": 32, "xla": False, "k": 5},
    )
    result = tfx_trainer.run_fn(fn_args)
    serving_dir = Path(fn_args.serving_model_dir)
    assert result["serving_model_dir"] == str(serving_dir)
    assert (serving_dir / "saved_model.pb").exists()  # directly there, no version folder
    assert not [p for p in serving_dir.parent.iterdir() if p != serving_dir]  # scratch removed
    run = Path(fn_args.model_run_dir)
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 1
    assert list((run / "logs").rglob("events.out.tfevents*"))  # TensorBoard
    assert data.load_vocabulary(run / "vocab.txt") == data.load_preprocessed(out).vocab
    info = json.loads((serving_dir / "assets.extra" / "tfrs_linear.json").read_text())
    assert info["k"] == 5 and info["model_dir"] == str(run.resolve())
    ok, report = serving.check_serving(serving_dir)
    assert ok, "\n".join(report)
    assert not [n for n in sys.modules if n == "tfx" or n.startswith("tfx.")]
    # `tfrs-linear evaluate` finds the preprocessed directory again from the run.
    assert cli.main(["evaluate", "--model", str(run)]) == 0
    assert (run / "metrics-full.json").exists()


def test_run_fn_rejects_unknown_config_keys(prepared, tmp_path):
    _, out, _ = prepared
    fn_args = types.SimpleNamespace(
        train_files=[str(out)], eval_files=[], transform_output=str(out),
        serving_model_dir=str(tmp_path / "s"), model_run_dir=str(tmp_path / "r"),
        custom_config={"atention": "linrec"},
    )
    with pytest.raises(ValueError, match="atention"):
        tfx_trainer.run_fn(fn_args)
    assert not os.path.exists(tmp_path / "r")


def test_run_fn_data_from_copied_gzip_shards(prepared, tmp_path):
    """Shards copied elsewhere (as a TFX ExampleGen does, gzipped) + the directory by name."""
    import gzip

    _, out, meta = prepared
    whole = data.load_preprocessed(out)
    copies = tmp_path / "Split-train"
    copies.mkdir()
    for k, shard in enumerate(meta["shards"]):
        (copies / f"data_tfrecord-{k:05d}.gz").write_bytes(gzip.compress((out / shard).read_bytes()))
    args = types.SimpleNamespace(train_files=[str(copies / "*")], eval_files=None,
                                 transform_output=None)
    got = tfx_trainer.resolve_data(args, preprocessed_dir=str(out))
    assert_same(got, whole)
    args.train_files = [str(copies / "data_tfrecord-00000.gz")]
    part = tfx_trainer.resolve_data(args, preprocessed_dir=str(out))
    assert 0 < part.num_users < whole.num_users and set(part.users) < set(whole.users)
    assert part.vocab == whole.vocab
    with pytest.raises(ValueError, match="preprocessed directory"):
        tfx_trainer.resolve_data(args)  # neither transform_output nor preprocessed_dir
    by_dir = types.SimpleNamespace(train_files=[str(out)], eval_files=[str(out) + "/"],
                                   transform_output=str(out))
    assert_same(tfx_trainer.resolve_data(by_dir), whole)
