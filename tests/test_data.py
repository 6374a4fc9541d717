"""Loaders, sequences, vocabulary and the tf.data pipelines of ``tfrs_linear.data``."""

import numpy as np
import pytest

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data, synthetic
from tfrs_linear.data import DataError, Interactions


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def as_lists(inter):
    return list(inter.users), list(inter.items), list(inter.timestamps)


# ------------------------------------------------------------------------------ loaders

RECBOLE = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "186\t302\t3\t891717742\n"
)


def test_recbole_reader(tmp_path):
    path = write(tmp_path, "x.inter", RECBOLE)
    inter = data.load_interactions(path)
    assert inter.format == "recbole"
    assert inter.source == str(path)
    assert as_lists(inter) == (["196", "186"], ["242", "302"], [881250949.0, 891717742.0])
    assert inter.timestamps.dtype == np.float64


def test_recbole_reader_finds_columns_by_name(tmp_path):
    text = "timestamp:float\trating:float\titem_id:token\tuser_id:token\n5\t1\tA\tu1\n"
    inter = data.load_interactions(write(tmp_path, "y.inter", text))
    assert as_lists(inter) == (["u1"], ["A"], [5.0])


def test_movielens_reader(tmp_path):
    path = write(tmp_path, "ratings.dat", "1::1193::5::978300760\r\n1::661::3::978302109\r\n")
    inter = data.load_interactions(path)
    assert inter.format == "movielens"
    assert as_lists(inter) == (["1", "1"], ["1193", "661"], [978300760.0, 978302109.0])


def test_udata_reader(tmp_path):
    path = write(tmp_path, "u.data", "196\t242\t3\t881250949\n\n186\t302\t3\t891717742\n")
    inter = data.load_interactions(path)
    assert inter.format == "udata"
    assert as_lists(inter) == (["196", "186"], ["242", "302"], [881250949.0, 891717742.0])


def test_sasrec_reader_uses_line_order_as_time(tmp_path):
    path = write(tmp_path, "seq.txt", "1 10\n1  11\n2\t10\n")
    inter = data.load_interactions(path)
    assert inter.format == "sasrec"
    assert as_lists(inter) == (["1", "1", "2"], ["10", "11", "10"], [1.0, 2.0, 3.0])


def test_csv_reader_accepts_common_column_names(tmp_path):
    path = write(tmp_path, "log.csv", "ts,Item,user,extra\n7,i1,u1,x\n3,\"i,2\",u2,y\n")
    inter = data.load_interactions(path)
    assert inter.format == "csv"
    assert as_lists(inter) == (["u1", "u2"], ["i1", "i,2"], [7.0, 3.0])
    path = write(tmp_path, "other.csv", "user_id,item_id,timestamp\na,b,1.5\n")
    assert as_lists(data.load_interactions(path)) == (["a"], ["b"], [1.5])


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("data.txt", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n", "recbole"),
        ("data.txt", "1::2::3::4\n", "movielens"),
        ("data.txt", "1\t2\t3\t4\n", "udata"),
        ("data.txt", "user,item,time\n1,2,3\n", "csv"),
        ("data.txt", "1 2\n", "sasrec"),
    ],
)
def test_auto_format_from_first_line(tmp_path, name, text, expected):
    assert data.load_interactions(write(tmp_path, name, text)).format == expected


def test_explicit_format_overrides_the_name(tmp_path):
    path = write(tmp_path, "weird.inter", "1 2\n3 4\n")
    assert data.load_interactions(path, format="sasrec").items.tolist() == ["2", "4"]


@pytest.mark.parametrize(
    "name, fmt, text, line, words",
    [
        ("a.inter", "recbole", RECBOLE + "1\t2\t3\n", 4, "expected 4"),
        ("a.inter", "recbole", RECBOLE + "1\t2\t3\tyesterday\n", 4, "not a number"),
        ("a.inter", "recbole", RECBOLE + "\t2\t3\t4\n", 4, "empty user id"),
        ("a.inter", "recbole", "user_id\titem_id\n1\t2\n", 1, "not a RecBole header"),
        ("a.inter", "recbole", "user_id:token\trating:float\n1\t2\n", 1, "'item_id'"),
        ("ratings.dat", "movielens", "1::2::3::4\n1::2::3\n", 2, "expected 4"),
        ("ratings.dat", "movielens", "1::2::3::nan\n", 1, "not a finite"),
        ("u.data", "udata", "1\t2\t3\t4\n\n1 2 3 4\n", 3, "expected 4"),
        ("u.data", "udata", "1\t\t3\t4\n", 1, "empty item id"),
        ("seq.txt", "sasrec", "1 2\n1 2 3\n", 2, "expected 2"),
        ("log.csv", "csv", "user,item,timestamp\n1,2,3\n1,2\n", 3, "expected 3"),
        ("log.csv", "csv", "user,item,timestamp\n1,,3\n", 2, "empty item id"),
        ("log.csv", "csv", "user,item,timestamp\n1,2,2024-01-01\n", 2, "not a number"),
        ("log.csv", "csv", "user,product,timestamp\n1,2,3\n", 1, "no item column"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, name, fmt, text, line, words):
    path = write(tmp_path, name, text)
    for format in (fmt, "auto"):
        with pytest.raises(DataError) as info:
            data.load_interactions(path, format=format)
        message = str(info.value)
        assert str(path) in message
        assert f"line {line}:" in message
        assert words in message
    assert isinstance(info.value, ValueError)


def test_file_level_errors(tmp_path):
    missing = tmp_path / "nope.inter"
    with pytest.raises(DataError, match="nope.inter: file not found"):
        data.load_interactions(missing)
    with pytest.raises(DataError, match="unknown format 'parquet'"):
        data.load_interactions(write(tmp_path, "a.txt", "1 2\n"), format="parquet")
    with pytest.raises(DataError, match="empty file"):
        data.load_interactions(write(tmp_path, "empty.txt", "\n\n"))
    with pytest.raises(DataError, match="no interactions"):
        data.load_interactions(write(tmp_path, "h.inter", "user_id:token\titem_id:token\ttimestamp:float\n"))
    with pytest.raises(DataError, match="cannot guess the format"):
        data.load_interactions(write(tmp_path, "odd.txt", "a b c\n"))
    (tmp_path / "bad.txt").write_bytes(b"1 2\n1 \xff\n")
    with pytest.raises(DataError, match=r"bad.txt: line 2: not valid UTF-8"):
        data.load_interactions(tmp_path / "bad.txt")


# -------------------------------------------------------------------- sequences, vocab


def tiny():
    """Users a (6 events), b (4), d (3) and c (2: dropped), in shuffled file order."""
    events = [  # (user, item, time)
        ("b", "9", 10), ("a", "5", 1), ("c", "1", 1), ("a", "7", 2), ("d", "7", 5),
        ("a", "9", 3), ("b", "10", 11), ("a", "5", 4), ("c", "2", 2), ("d", "7", 6),
        ("a", "10", 5), ("b", "9", 12), ("a", "3", 6), ("b", "7", 13), ("d", "3", 7),
    ]
    rng = np.random.default_rng(3)
    events = [events[i] for i in rng.permutation(len(events))]
    users, items, times = zip(*events)
    return Interactions(list(users), list(items), np.array(times, float), source="tiny")


def test_build_sequences_vocabulary_and_popularity():
    seq = data.build_sequences(tiny())
    # Training parts: a 5 7 9 5 | b 9 10 | d 7  -> 5:2, 7:2, 9:2, 10:1, 3:0.
    # Ties by string order: "5" < "7" < "9"; "3" only appears as a target.
    assert seq.vocab == ["[PAD]", "[OOV]", "5", "7", "9", "10", "3"]
    assert seq.num_items == 7
    assert seq.users == ["a", "b", "d"]
    assert [s.tolist() for s in seq.sequences] == [[2, 3, 4, 2, 5, 6], [4, 5, 4, 3], [3, 3, 6]]
    assert all(s.dtype == np.int32 for s in seq.sequences)
    assert seq.item_popularity.dtype == np.int64
    assert seq.item_popularity.tolist() == [0, 0, 2, 2, 2, 1, 0]
    assert seq.dropped_users == 1 and seq.dropped_interactions == 2
    assert "1" not in seq.vocab and "2" not in seq.vocab  # only in the dropped user c


def test_vocabulary_ties_use_string_order():
    inter = Interactions(
        ["u"] * 7, ["9", "10", "9", "10", "100", "x", "y"], np.arange(7.0), source="t"
    )
    seq = data.build_sequences(inter)
    # training part 9 10 9 10 100: 9:2, 10:2, 100:1; targets x, y have frequency 0.
    assert seq.vocab == ["[PAD]", "[OOV]", "10", "9", "100", "x", "y"]


def test_ties_in_time_keep_file_order():
    inter = Interactions(
        ["x", "x", "x", "x", "y", "y", "y"],
        ["b", "a", "c", "d", "a", "b", "c"],
        [5.0, 5.0, 1.0, 5.0, 2.0, 2.0, 2.0],
    )
    seq = data.build_sequences(inter)
    raw = [[seq.vocab[i] for i in s] for s in seq.sequences]
    assert raw == [["c", "b", "a", "d"], ["a", "b", "c"]]


def test_min_events_drops_and_counts():
    seq = data.build_sequences(tiny(), min_events=4)
    assert seq.users == ["a", "b"]
    assert seq.dropped_users == 2 and seq.dropped_interactions == 5
    with pytest.raises(ValueError, match="min_events"):
        data.build_sequences(tiny(), min_events=2)


def test_reserved_ids_rejected():
    inter = Interactions(["u"] * 3, ["a", "[OOV]", "b"], [1.0, 2.0, 3.0], source="t")
    with pytest.raises(DataError, match="reserved"):
        data.build_sequences(inter)


def test_leave_one_out():
    seq = data.build_sequences(tiny())
    assert [h.tolist() for h in seq.histories("valid")] == [[2, 3, 4, 2], [4, 5], [3]]
    assert [h.tolist() for h in seq.histories("train")] == [[2, 3, 4, 2], [4, 5], [3]]
    assert seq.targets("valid").tolist() == [5, 4, 3]
    assert [h.tolist() for h in seq.histories("test")] == [[2, 3, 4, 2, 5], [4, 5, 4], [3, 3]]
    assert seq.targets("test").tolist() == [6, 3, 6]
    assert seq.history(1, "test").tolist() == [4, 5, 4] and seq.target(1, "valid") == 4
    with pytest.raises(ValueError, match="split"):
        seq.targets("train")


def test_vocabulary_helpers(tmp_path):
    vocab = ["[PAD]", "[OOV]", "242", "10", "a b"]
    assert data.vocabulary_lookup(vocab)["10"] == 3
    assert data.encode_items(["10", 242, "nope", "a b"], vocab).tolist() == [3, 2, 1, 4]
    path = tmp_path / "vocab.txt"
    data.save_vocabulary(vocab, path)
    assert path.read_text() == "[PAD]\n[OOV]\n242\n10\na b\n"
    assert data.load_vocabulary(path) == vocab
    with pytest.raises(DataError, match="newline/tab"):
        data.save_vocabulary(["[PAD]", "[OOV]", "a\tb"], tmp_path / "v2.txt")
    with pytest.raises(DataError, match="newline/tab"):
        data.save_vocabulary(["[PAD]", "[OOV]", "a\nb"], tmp_path / "v2.txt")
    path.write_text("[PAD]\n[OOV]\nx\nx\n")
    with pytest.raises(DataError, match="line 4"):
        data.load_vocabulary(path)


def test_load_dataset_from_file(tmp_path):
    path = write(tmp_path, "s.txt", "u 1\nu 2\nu 3\nv 1\n")
    seq = data.load_dataset(path)
    assert seq.users == ["u"] and seq.dropped_users == 1
    assert seq.vocab == ["[PAD]", "[OOV]", "1", "2", "3"]


# ---------------------------------------------------------------------------- padding


def test_pad_left_keeps_newest():
    out = data.pad_left([np.array([1, 2, 3, 4, 5]), np.array([7]), np.array([], np.int32)], 3)
    assert out.dtype == np.int32
    assert out.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0]]
    assert data.pad_left([], 2).shape == (0, 2)


# ------------------------------------------------------------------------- pipelines


def batches(ds):
    return [{k: v.numpy().tolist() for k, v in b.items()} for b in ds]


def test_training_all_regime_exact():
    seq = data.build_sequences(tiny())
    ex = data.training_examples(seq, 3, "all")
    assert ex["inputs"].tolist() == [[2, 3, 4], [0, 0, 4]]
    assert ex["targets"].tolist() == [[3, 4, 2], [0, 0, 5]]
    # max_len 2: a's 3 pairs become the newest window and an older one of length 1.
    ds = data.training_dataset(seq, 2, 3, regime="all", shuffle=False)
    assert batches(ds) == [
        {"inputs": [[3, 4], [0, 2], [0, 4]], "targets": [[4, 2], [0, 3], [0, 5]]}
    ]
    ds = data.training_dataset(seq, 2, 2, regime="all", shuffle=False)
    assert ds.element_spec["inputs"].shape.as_list() == [2, 2]
    assert len(batches(ds)) == 1  # the third example is dropped with drop_remainder
    ds = data.training_dataset(seq, 2, 2, regime="all", shuffle=False, drop_remainder=False)
    assert batches(ds)[1] == {"inputs": [[0, 4]], "targets": [[0, 5]]}


def test_training_last_regime_exact():
    seq = data.build_sequences(tiny())
    ds = data.training_dataset(seq, 2, 4, regime="last", shuffle=False)
    assert ds.element_spec["targets"].shape.as_list() == [4]
    assert batches(ds) == [
        {"inputs": [[0, 2], [2, 3], [3, 4], [0, 4]], "targets": [3, 4, 2, 5]}
    ]
    assert data.num_training_examples(seq, 2, "last") == 4
    assert data.num_training_examples(seq, 2, "all") == 3


def test_training_shuffle_is_a_seeded_permutation():
    seqs = [np.arange(2, 40, dtype=np.int32) for _ in range(3)]
    seq = data.SequenceData(["a", "b", "c"], seqs, ["[PAD]", "[OOV]"] + [str(i) for i in range(2, 40)],
                            np.zeros(40, np.int64))
    plain = data.training_examples(seq, 5, "last")
    one = batches(data.training_dataset(seq, 5, 7, regime="last", seed=1))
    two = batches(data.training_dataset(seq, 5, 7, regime="last", seed=1))
    assert one == two
    got = sorted(zip(sum((b["targets"] for b in one), []), map(tuple, sum((b["inputs"] for b in one), []))))
    want = sorted(zip(plain["targets"].tolist(), map(tuple, plain["inputs"].tolist())))
    assert len(got) == 7 * (len(want) // 7)
    assert set(got) <= set(want)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        data.training_dataset(seq, 5, 1000)


def test_evaluation_batches_pad_the_last_batch():
    seq = data.build_sequences(tiny())
    ds = data.evaluation_batches(seq, "test", 2, 2)
    assert ds.element_spec["history"].shape.as_list() == [2, 4]
    assert batches(ds) == [
        {"inputs": [[2, 5], [5, 4]], "targets": [6, 3], "weights": [1.0, 1.0],
         "history": [[2, 3, 4, 5], [0, 0, 4, 5]], "user_index": [0, 1]},
        {"inputs": [[3, 3], [0, 0]], "targets": [6, 0], "weights": [1.0, 0.0],
         "history": [[0, 0, 0, 3], [0, 0, 0, 0]], "user_index": [2, 0]},
    ]
    valid = batches(data.evaluation_batches(seq, "valid", 3, 8))
    assert len(valid) == 1 and len(valid[0]["targets"]) == 8
    assert valid[0]["inputs"][:3] == [[3, 4, 2], [0, 4, 5], [0, 0, 3]]
    assert valid[0]["targets"] == [5, 4, 3, 0, 0, 0, 0, 0]
    assert valid[0]["weights"] == [1.0] * 3 + [0.0] * 5


# ------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_sane():
    kwargs = dict(num_users=40, num_items=80, num_interests=8, median_length=30, max_length=200)
    one = synthetic.generate(seed=5, **kwargs)
    two = synthetic.generate(seed=5, **kwargs)
    other = synthetic.generate(seed=6, **kwargs)
    assert as_lists(one) == as_lists(two)
    assert as_lists(one) != as_lists(other)
    assert set(one.users) == {str(u) for u in range(1, 41)}
    assert set(one.items) <= {str(i) for i in range(1, 81)}
    assert np.all(np.diff(one.timestamps) >= 0)  # merged in time order
    seq = data.build_sequences(one)
    assert seq.dropped_users == 0
    lengths = seq.lengths
    assert lengths.min() >= 20 and lengths.max() <= 200
    # Multi-interest: each user concentrates on a few clusters, so far fewer distinct
    # items than events for long users, but more than one cluster's worth.
    longest = int(np.argmax(lengths))
    assert 10 < len(np.unique(seq.sequences[longest])) < lengths[longest]


def test_synthetic_default_size():
    inter = synthetic.generate()
    seq = data.build_sequences(inter)
    assert seq.num_users == 1500 and seq.num_items - 2 <= 1000
    assert 100 <= np.median(seq.lengths) <= 200 and seq.lengths.max() >= 1500


def test_training_examples_match_a_naive_implementation():
    rng = np.random.default_rng(7)
    seqs = [rng.integers(2, 30, size=n).astype(np.int32) for n in (3, 4, 5, 9, 12, 13, 30)]
    seq = data.SequenceData([str(i) for i in range(len(seqs))], seqs,
                            ["[PAD]", "[OOV]"] + [str(i) for i in range(2, 30)], np.zeros(30, np.int64))
    m = 4

    def padded(x):
        x = list(x)[-m:]
        return [0] * (m - len(x)) + x

    want_all, want_last = [], []
    for s in seqs:
        h = list(s[:-2])
        end = len(h) - 1  # pairs (h[p], h[p + 1]) for p < end, windows from the newest
        while end > 0:
            start = max(0, end - m)
            want_all.append((padded(h[start:end]), padded(h[start + 1:end + 1])))
            end = start
        for j in range(1, len(h)):
            want_last.append((padded(h[:j]), h[j]))
    got = data.training_examples(seq, m, "all")
    assert list(zip(got["inputs"].tolist(), got["targets"].tolist())) == want_all
    got = data.training_examples(seq, m, "last")
    assert list(zip(got["inputs"].tolist(), got["targets"].tolist())) == want_last
    ds = data.training_dataset(seq, m, len(want_last), regime="last", shuffle=False)
    (only,) = batches(ds)
    assert list(zip(only["inputs"], only["targets"])) == want_last
