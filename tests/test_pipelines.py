"""pipelines/: the Beam + tf.Transform preprocessing, its loader, and the TFX Trainer module."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import tfrs_linear  # noqa: F401  (Keras 2 before tf.keras)
from tfrs_linear import data
from tfrs_linear.data import DataError

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"tfrs_pipelines_{name}", PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so Beam's pickler finds it by name
    spec.loader.exec_module(module)
    return module


preprocess = _load("preprocess")
tfx_trainer = _load("tfx_trainer")

# Raw ids that sort differently as strings and as numbers, and upper/lower/non-ASCII.
ITEMS = ["9", "10", "100", "a", "b", "B", "Z", "é", "x y"]


def _events(seed, n_users, n_events, user_prefix):
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        user = f"{user_prefix}{u}"
        for _ in range(int(rng.integers(1, 9))):  # some users get 1-2 events
            out.append((user, str(rng.choice(ITEMS)), int(rng.integers(0, 4))))  # many time ties
    return out[:n_events]


def _write_inputs(directory):
    """Three files, three formats; users span files; items only in the last 2 positions."""
    directory.mkdir(parents=True, exist_ok=True)
    a = _events(1, 14, 60, "u")
    b = _events(2, 14, 50, "u")  # same user names: sequences cross files with time ties
    c = _events(3, 6, 30, "v")
    # u0's newest events (time 9 and 10) are items nobody else has: frequency 0.
    a += [("u0", "late-1", 9), ("u0", "only_valid", 9)]
    c += [("u0", "only_test", 10), ("w", "9", 1), ("w", "10", 1)]  # w: 2 events, dropped
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t1\t{t}\n" for u, i, t in a)
    csv = "user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in b)
    dat = "".join(f"{u}::{i}::5::{t}\n" for u, i, t in c)
    paths = [directory / "part-0.inter", directory / "part-1.csv", directory / "ratings.dat"]
    for path, text in zip(paths, (inter, csv, dat)):
        path.write_text(text, encoding="utf-8")
    return paths


def _reference(paths):
    """build_sequences over the files' events in file order (the in-memory rule)."""
    parts = [data.load_interactions(p) for p in paths]
    inter = data.Interactions(
        users=np.concatenate([p.users for p in parts]),
        items=np.concatenate([p.items for p in parts]),
        timestamps=np.concatenate([p.timestamps for p in parts]),
        source="reference",
    )
    return data.build_sequences(inter)


def assert_same(got, ref):
    assert got.users == ref.users
    assert got.vocab == ref.vocab
    np.testing.assert_array_equal(got.item_popularity, ref.item_popularity)
    assert got.item_popularity.dtype == np.int64
    assert len(got.sequences) == len(ref.sequences)
    for g, r in zip(got.sequences, ref.sequences):
        assert g.dtype == np.int32
        np.testing.assert_array_equal(g, r)
    assert (got.dropped_users, got.dropped_interactions) == (ref.dropped_users, ref.dropped_interactions)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    paths = _write_inputs(root / "raw")
    out = root / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")  # replaced with --overwrite
    # Two --input flags: a file, then a glob matching the other two (in path order).
    meta = preprocess.preprocess(
        [str(paths[0]), str(root / "raw" / "[pr]*[tv]")], str(out),
        overwrite=True, num_shards=2, beam_args=["--runner", "DirectRunner"],
    )
    return paths, out, meta


def test_pipeline_output_equals_build_sequences(prepared):
    paths, out, meta = prepared
    ref = _reference(paths)
    # The data really exercises the tricky parts of the vocabulary rule.
    pop = ref.item_popularity[data.NUM_RESERVED:]
    assert np.sum(pop == 0) >= 2  # items seen only as validation/test targets
    ties = [(a, b) for a, b, fa, fb in zip(ref.vocab[2:], ref.vocab[3:], pop, pop[1:]) if fa == fb > 0]
    assert ties and all(a < b for a, b in ties)  # tf.Transform alone would give b before a
    assert ref.dropped_users >= 2

    got = data.load_preprocessed(out)
    assert_same(got, ref)
    assert_same(data.load_dataset(str(out)), ref)  # auto-detected directory
    assert_same(data.load_dataset(out, format="preprocessed"), ref)
    assert got.source == str(out)

    assert not (out / "stale.txt").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs
    assert data.load_vocabulary(out / "vocab.txt") == ref.vocab
    assert (out / "vocab.txt").read_bytes() == ("\n".join(ref.vocab) + "\n").encode()
    assert len(meta["shards"]) == 2 and (out / "transform_fn").is_dir()
    assert [s["path"] for s in meta["sources"]] == [str(p) for p in paths]
    assert [s["format"] for s in meta["sources"]] == ["recbole", "csv", "movielens"]
    expected = {"num_users": ref.num_users, "num_interactions": ref.num_interactions,
                "dropped_users": ref.dropped_users, "dropped_interactions": ref.dropped_interactions,
                "num_items": ref.num_items - 2, "num_source_files": 3, "format_version": 1}
    assert {k: meta[k] for k in expected} == expected
    counters = meta["_counters"]  # Beam metrics
    assert counters["users_dropped"] == ref.dropped_users
    assert counters["interactions_dropped"] == ref.dropped_interactions
    assert counters["users_kept"] == ref.num_users
    assert counters["events_read"] == sum(len(data.load_interactions(p)) for p in paths)


def test_command_line_gzip_udata_and_sasrec(tmp_path, capsys):
    udata = tmp_path / "u.data"
    udata.write_text("1\t10\t5\t3\n1\t9\t5\t3\n2\t9\t4\t1\n1\t11\t3\t2\n2\t12\t4\t1\n")
    sasrec = tmp_path / "seq.txt"  # time = line number: ties with u.data's times 1..3
    sasrec.write_text("2 10\n1 12\n1 9\n3 9\n")
    out = tmp_path / "out"
    argv = ["--input", str(udata), "--input", str(sasrec), "--output", str(out),
            "--compression", "gzip", "--num-shards", "1"]
    assert preprocess.main(argv) == 0
    assert "2 users" in capsys.readouterr().out
    meta = data.read_preprocessed_metadata(out)
    assert meta["compression"] == "gzip" and meta["shards"][0].endswith(".tfrecord.gz")
    assert [s["format"] for s in meta["sources"]] == ["udata", "sasrec"]
    assert_same(data.load_dataset(out), _reference([udata, sasrec]))


def test_tfrecords_hold_users_and_raw_ids(prepared):
    import tensorflow as tf

    _, out, meta = prepared
    ref = data.load_preprocessed(out)
    seen = {}
    for shard in meta["shards"]:
        for record in tf.data.TFRecordDataset(str(out / shard)):
            ex = tf.train.Example.FromString(record.numpy())
            f = ex.features.feature
            user = f["user_id"].bytes_list.value[0].decode()
            raw = [v.decode() for v in f["item_raw_ids"].bytes_list.value]
            seen[user] = (list(f["item_ids"].int64_list.value), raw)
    assert sorted(seen) == ref.users
    for user, seq in zip(ref.users, ref.sequences):
        ids, raw = seen[user]
        assert ids == seq.tolist()
        assert raw == [ref.vocab[i] for i in ids]


def test_loader_rejects_corrupt_or_inconsistent_output(prepared, tmp_path):
    _, out, meta = prepared
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    shard = bad / meta["shards"][1]
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(DataError, match=str(shard)):
        data.load_dataset(bad)
    shard.write_bytes(raw)
    pop = (bad / "item_popularity.txt").read_text().split("\n")
    pop[2] = str(int(pop[2]) + 1)
    (bad / "item_popularity.txt").write_text("\n".join(pop))
    with pytest.raises(DataError, match="item_popularity.txt"):
        data.load_preprocessed(bad)
    (bad / "metadata.json").unlink()
    with pytest.raises(DataError, match="metadata.json"):
        data.load_preprocessed(bad)
    with pytest.raises(DataError, match="is a directory"):
        data.load_dataset(bad)  # no metadata.json: not auto-detected
    with pytest.raises(DataError, match="preprocessed"):
        data.load_interactions(out, format="preprocessed")


def test_bad_line_names_file_and_line(tmp_path):
    good = tmp_path / "a.inter"
    good.write_text("user_id:token\titem_id:token\ttimestamp:float\nu\t1\t1\nu\t2\t2\nu\t3\t3\n")
    bad = tmp_path / "b.csv"
    bad.write_text("user,item,timestamp\nu,4,5\nu,5,soon\n")
    with pytest.raises(DataError) as memory:
        data.load_interactions(bad)
    assert str(memory.value) == f"{bad}: line 3: timestamp 'soon' is not a number"
    out = tmp_path / "out"
    with pytest.raises(DataError) as beam_error:
        preprocess.preprocess([str(good), str(bad)], str(out))
    assert str(beam_error.value).startswith(str(memory.value))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.inter", "b.csv"]  # temp removed


def test_refuses_non_empty_output_without_overwrite(tmp_path, capsys):
    src = tmp_path / "u.data"
    src.write_text("1\t2\t3\t4\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(preprocess.PreprocessError, match="--overwrite"):
        preprocess.preprocess([str(src)], str(out))
    assert preprocess.main(["--input", str(src), "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    with pytest.raises(preprocess.PreprocessError, match="no file matches"):
        preprocess.preprocess([str(tmp_path / "nothing-*.csv")], str(tmp_path / "o2"))
    with pytest.raises(SystemExit):
        preprocess.main(["--help"])
    assert "--overwrite" in capsys.readouterr().out


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
