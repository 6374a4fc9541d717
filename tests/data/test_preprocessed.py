"""Reading a preprocessed directory (``tfrs_linear.data.preprocessed``) without Beam.

The directories here are written by hand, file by file, in the layout the module
docstring gives (the Beam pipeline itself is tested in ``tests/pipelines/``), so every
consistency check of the reader can be hit with one small corruption.
"""

import gzip
import json

import numpy as np
import pytest
import tensorflow as tf

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tfrs_linear.data import DataError, synthetic
from tests.data.common import assert_same


def sequence_data():
    return data.build_sequences(synthetic.generate(num_users=30, num_items=20, num_interests=4,
                                                   median_length=12, min_length=4, max_length=40))


def write_preprocessed(directory, seq, num_shards=2, compression="none", min_events=3):
    """Writes ``seq`` as pipelines/preprocess.py would, users dealt round-robin, newest first."""
    directory.mkdir()
    data.save_vocabulary(seq.vocab, directory / data.VOCAB_FILE)
    (directory / data.POPULARITY_FILE).write_text("".join(f"{c}\n" for c in seq.item_popularity))
    options = tf.io.TFRecordOptions(compression_type="GZIP" if compression == "gzip" else "")
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    shards = []
    for k in range(num_shards):
        name = f"sequences-{k:05d}-of-{num_shards:05d}{suffix}"
        with tf.io.TFRecordWriter(str(directory / name), options) as writer:
            for u in reversed(range(k, seq.num_users, num_shards)):  # not in user order
                ex = tf.train.Example()
                feature = ex.features.feature
                feature[data.USER_FEATURE].bytes_list.value.append(seq.users[u].encode("utf-8"))
                feature[data.ITEMS_FEATURE].int64_list.value.extend(seq.sequences[u].tolist())
                feature[data.RAW_ITEMS_FEATURE].bytes_list.value.extend(
                    seq.vocab[i].encode("utf-8") for i in seq.sequences[u])
                writer.write(ex.SerializeToString())
        shards.append(name)
    meta = {
        "kind": data.PREPROCESSED_KIND, "format_version": data.PREPROCESSED_VERSION,
        "min_events": min_events, "num_users": seq.num_users,
        "num_interactions": seq.num_interactions, "dropped_users": seq.dropped_users,
        "dropped_interactions": seq.dropped_interactions, "shards": shards,
        "compression": compression,
    }
    (directory / data.METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return meta


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_preprocessed_directory_reads_back_as_the_same_sequences(tmp_path, compression):
    seq = sequence_data()
    out = tmp_path / "prep"
    write_preprocessed(out, seq, num_shards=3, compression=compression)
    assert data.is_preprocessed_dir(out) and not data.is_preprocessed_dir(tmp_path / "nothing")
    got = data.load_preprocessed(out, min_events=3)
    assert_same(got, seq)
    assert got.source == str(out)
    assert_same(data.load_dataset(out), seq)  # auto-detected
    assert_same(data.load_dataset(str(out), format="preprocessed"), seq)
    assert data.read_preprocessed_metadata(out)["compression"] == compression


def test_a_subset_of_shards_or_gzip_copies_keep_the_whole_vocabulary(tmp_path):
    seq = sequence_data()
    out = tmp_path / "prep"
    meta = write_preprocessed(out, seq)
    part = data.load_preprocessed(out, files=[out / meta["shards"][0]])
    assert 0 < part.num_users < seq.num_users and set(part.users) < set(seq.users)
    assert part.vocab == seq.vocab
    np.testing.assert_array_equal(part.item_popularity, seq.item_popularity)
    for user, items in zip(part.users, part.sequences):
        np.testing.assert_array_equal(items, seq.sequences[seq.users.index(user)])
    copies = []
    for k, shard in enumerate(meta["shards"]):  # GZIP copies, read by their suffix
        copies.append(tmp_path / f"copy-{k}.gz")
        copies[-1].write_bytes(gzip.compress((out / shard).read_bytes()))
    assert_same(data.load_preprocessed(out, files=copies), seq)
    with pytest.raises(DataError, match="no shard files given"):
        data.load_preprocessed(out, files=[])
    with pytest.raises(DataError, match=r"nope.tfrecord: shard not found$"):
        data.load_preprocessed(out, files=[tmp_path / "nope.tfrecord"])


def corrupt(tmp_path, edit, name="bad"):
    """A fresh directory of the small data after ``edit(directory, meta)``; returns it."""
    out = tmp_path / name
    meta = write_preprocessed(out, sequence_data())
    edit(out, meta)
    return out


def rewrite_meta(**changes):
    def edit(out, meta):
        meta.update(changes)
        (out / data.METADATA_FILE).write_text(json.dumps(meta))
    return edit


def test_every_inconsistency_is_an_error_naming_the_file(tmp_path):
    cases = [
        (lambda out, meta: (out / data.METADATA_FILE).unlink(), "not a preprocessed directory"),
        (lambda out, meta: (out / data.METADATA_FILE).write_text("{\n  oops\n}"),
         r"metadata.json: line 2: invalid JSON"),
        (rewrite_meta(kind="something else"), "not written by pipelines/preprocess.py"),
        (rewrite_meta(format_version=2), "format_version 2"),
        (rewrite_meta(min_events=1000), r"a sequence has \d+ events, fewer than min_events=1000"),
        (rewrite_meta(compression="zstd"), "unknown compression 'zstd'"),
        (rewrite_meta(shards=[]), "lists no TFRecord shards"),
        (rewrite_meta(shards=["gone.tfrecord"]), r"gone.tfrecord: shard not found \(listed in"),
        (lambda out, meta: rewrite_meta(shards=meta["shards"] * 2)(out, meta),
         "occurs in more than one record"),
        (rewrite_meta(num_users=1000), "the shards hold 30 users"),
        (lambda out, meta: (out / data.POPULARITY_FILE).write_text("0\n0\n"),
         r"item_popularity.txt: 2 counts for \d+ vocabulary entries"),
        (lambda out, meta: (out / data.POPULARITY_FILE).write_text("0\nx\n"),
         "item_popularity.txt: not a list of integers"),
        (lambda out, meta: (out / data.POPULARITY_FILE).write_text(
            (out / data.POPULARITY_FILE).read_text().replace("0\n0\n", "0\n1\n", 1)),
         "item_popularity.txt: does not match the training part"),
        (lambda out, meta: ((out / data.VOCAB_FILE).write_text("[PAD]\n[OOV]\n"),
                            (out / data.POPULARITY_FILE).write_text("0\n0\n")),
         r"item index out of the catalogue range \[2, 1\] of .*vocab.txt"),
        (lambda out, meta: (out / meta["shards"][1]).write_bytes(
            (out / meta["shards"][1]).read_bytes()[:50]), "corrupt or unreadable TFRecord shard"),
    ]
    for k, (edit, message) in enumerate(cases):
        out = corrupt(tmp_path, edit, name=f"bad{k}")
        with pytest.raises(DataError, match=message) as info:
            data.load_preprocessed(out)
        assert str(tmp_path) in str(info.value), info.value
    with pytest.raises(DataError, match="preprocessed with min_events=3, asked for 5"):
        data.load_preprocessed(corrupt(tmp_path, lambda out, meta: None), min_events=5)


def test_duplicate_setting_and_count_come_from_the_metadata(tmp_path):
    kept = corrupt(tmp_path, rewrite_meta(keep_duplicates=True, dropped_duplicates=0), name="kept")
    with pytest.raises(DataError) as info:
        data.load_dataset(kept)  # the default drops duplicates: the directory kept them
    assert str(info.value) == (
        f"{kept}: preprocessed with exact duplicate events kept (keep_duplicates=True), asked "
        "for keep_duplicates=False; pass the same setting (--keep-duplicates) or run the "
        "pipeline again")
    assert data.load_dataset(kept, keep_duplicates=True).dropped_duplicates == 0
    assert data.load_preprocessed(kept).num_users == 30  # not asked: not checked
    dropped = corrupt(tmp_path, rewrite_meta(keep_duplicates=False, dropped_duplicates=7), name="dropped")
    assert data.load_dataset(dropped).dropped_duplicates == 7
    with pytest.raises(DataError, match="duplicate events dropped"):
        data.load_dataset(dropped, keep_duplicates=True)
    old = corrupt(tmp_path, lambda out, meta: None, name="old")  # written before the flag
    assert data.load_dataset(old).dropped_duplicates == 0
    assert data.load_dataset(old, keep_duplicates=True).dropped_duplicates == 0
