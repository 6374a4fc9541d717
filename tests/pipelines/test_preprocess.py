"""pipelines/preprocess.py (Beam + tf.Transform) against the in-memory loader, and its loader's checks."""

import shutil

import numpy as np
import pytest

import tfrs_linear  # noqa: F401  (Keras 2 before tf.keras)
from tfrs_linear import data
from tfrs_linear.data import DataError
from tests.pipelines.common import assert_same, exact_duplicates, preprocess, reference


def test_pipeline_output_equals_build_sequences(prepared):
    paths, out, meta = prepared
    ref = reference(paths)
    # The data really exercises the tricky parts of the vocabulary rule.
    pop = ref.item_popularity[data.NUM_RESERVED:]
    assert np.sum(pop == 0) >= 2  # items seen only as validation/test targets
    ties = [(a, b) for a, b, fa, fb in zip(ref.vocab[2:], ref.vocab[3:], pop, pop[1:]) if fa == fb > 0]
    assert ties and all(a < b for a, b in ties)  # tf.Transform alone would give b before a
    assert ref.dropped_users >= 2
    duplicates = exact_duplicates(paths)
    assert ref.dropped_duplicates == duplicates >= 8  # 8 rows written again (tests/pipelines/common.py)
    assert "w" in reference(paths, keep_duplicates=True).users

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
                "num_items": ref.num_items - 2, "num_source_files": 3, "format_version": 1,
                "dropped_duplicates": duplicates, "keep_duplicates": False}
    assert {k: meta[k] for k in expected} == expected
    counters = meta["_counters"]  # Beam metrics
    assert counters["users_dropped"] == ref.dropped_users
    assert counters["interactions_dropped"] == ref.dropped_interactions
    assert counters["users_kept"] == ref.num_users
    assert counters["duplicates_dropped"] == duplicates
    assert got.dropped_duplicates == duplicates
    assert counters["events_read"] == sum(len(data.load_interactions(p)) for p in paths)


def test_command_line_gzip_udata_and_sasrec(tmp_path, capsys):
    udata = tmp_path / "u.data"
    # Exact duplicates, kept with --keep-duplicates: (1, 9, time 3) three times (sasrec's
    # line 3 is time 3), (2, 9, time 1) twice, across files.
    udata.write_text("1\t10\t5\t3\n1\t9\t5\t3\n2\t9\t4\t1\n1\t11\t3\t2\n2\t12\t4\t1\n1\t9\t1\t3\n")
    sasrec = tmp_path / "seq.txt"  # time = line number: ties with u.data's times 1..3
    sasrec.write_text("2 10\n1 12\n1 9\n3 9\n2 9\n")
    (tmp_path / "more.data").write_text("2\t9\t4\t1\n")
    out = tmp_path / "out"
    argv = ["--input", str(udata), "--input", str(sasrec), "--input", str(tmp_path / "more.data"),
            "--output", str(out), "--compression", "gzip", "--num-shards", "1", "--keep-duplicates"]
    assert preprocess.main(argv) == 0
    assert "2 users" in capsys.readouterr().out
    meta = data.read_preprocessed_metadata(out)
    assert meta["compression"] == "gzip" and meta["shards"][0].endswith(".tfrecord.gz")
    assert [s["format"] for s in meta["sources"]] == ["udata", "sasrec", "udata"]
    assert (meta["keep_duplicates"], meta["dropped_duplicates"]) == (True, 0)
    ref = reference([udata, sasrec, tmp_path / "more.data"], keep_duplicates=True)
    assert ref.num_interactions == 11 and ref.dropped_duplicates == 0
    paths = [udata, sasrec, tmp_path / "more.data"]
    assert reference(paths).dropped_duplicates == exact_duplicates(paths) == 3
    assert_same(data.load_dataset(out, keep_duplicates=True), ref)
    with pytest.raises(DataError, match="kept"):
        data.load_dataset(out)  # the default drops duplicates: refused, not mixed


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
    assert str(beam_error.value) == str(memory.value)
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


def test_no_user_with_enough_events_says_so_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "u.data"
    src.write_text("1\t2\t3\t4\n1\t3\t3\t5\n2\t2\t3\t4\n1\t3\t3\t5\n")  # 1: 2 events + a duplicate
    with pytest.raises(DataError) as memory:
        data.load_dataset(src)
    out = tmp_path / "out"
    assert preprocess.main(["--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"python pipelines/preprocess.py: error: {memory.value}"
    assert "no user has 3 or more events (2 users, 4 events read, 1 exact duplicates dropped)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.data"]
