"""The interaction file readers of ``tfrs_linear.data.readers``: formats, the guess, errors with file:line."""

import numpy as np
import pytest

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tfrs_linear.data import DataError
from tests.data.common import as_lists, write


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
        messages = []
        for fast in (True, False):  # the fast path leaves the file to the exact parser
            with pytest.raises(DataError) as info:
                data.load_interactions(path, format=format, fast=fast)
            messages.append(str(info.value))
        message = messages[0]
        assert messages[1] == message
        assert str(path) in message
        assert f"line {line}:" in message
        assert words in message
    assert isinstance(info.value, ValueError)


def test_fast_and_exact_readers_agree_on_the_examples(tmp_path):
    """Every valid example above, read by the fast path (pyarrow) and by the exact parser."""
    files = [("x.inter", RECBOLE),
             ("ratings.dat", "1::1193::5::978300760\r\n1::661::3::978302109\r\n"),
             ("u.data", "196\t242\t3\t881250949\n\n186\t302\t3\t891717742\n"),
             ("seq.txt", "1 10\n1  11\n2\t10\n"),
             ("log.csv", "ts,Item,user,extra\n7,i1,u1,x\n3,\"i,2\",u2,y\n"),
             ("other.csv", "user_id,item_id,timestamp\na, b ,1.5\n\nc,d, -2e3\n")]
    for name, text in files:
        path = write(tmp_path, name, text)
        (fast, fast_lines), (exact, exact_lines) = (
            data.parse_interactions(path.read_bytes(), str(path), fast=f) for f in (True, False))
        assert (fast.format, fast.source) == (exact.format, exact.source)
        for a, b in [(fast.users, exact.users), (fast.items, exact.items),
                     (fast.timestamps, exact.timestamps), (fast_lines, exact_lines)]:
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert exact.users.tolist() == ["a", "c"] and exact.items.tolist() == ["b", "d"]
    assert exact.timestamps.tolist() == [1.5, -2000.0] and exact_lines.tolist() == [2, 4]


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


@pytest.mark.parametrize(
    "name, text, line, expected, found",
    [
        ("a.inter", "user_id:token,item_id:token,timestamp:float\n1,2,3\n", 1, "tab",
         "comma-separated (3 fields)"),
        ("a.inter", "user_id:token;item_id:token;timestamp:float\n", 1, "tab",
         "semicolon-separated (3 fields)"),
        ("a.inter", "user_id:token item_id:token timestamp:float\n", 1, "tab",
         "space-separated (3 fields)"),
        ("a.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n4,5,6\n", 3, "tab",
         "comma-separated (3 fields)"),
        ("u.data", "1,2,3,4\n", 1, "tab", "comma-separated (4 fields)"),
        ("u.data", "1|2|3|4\n", 1, "tab", "'|'-separated (4 fields)"),
        ("ratings.dat", "1\t2\t3\t4\n", 1, "'::'", "tab-separated (4 fields)"),
        ("ratings.dat", "1,2,3,4\n", 1, "'::'", "comma-separated (4 fields)"),
        ("log.csv", "user\titem\ttimestamp\n1\t2\t3\n", 1, "comma", "tab-separated (3 fields)"),
        ("log.csv", "user;item;timestamp\n1;2;3\n", 1, "comma", "semicolon-separated (3 fields)"),
        ("log.csv", "user,item,timestamp\n1;2;3\n", 2, "comma", "semicolon-separated (3 fields)"),
        ("seq.txt", "1 2\n1,2\n", 2, "whitespace", "comma-separated (2 fields)"),
    ],
)
def test_wrong_separator_names_the_expected_and_the_probable_one(tmp_path, name, text, line,
                                                                 expected, found):
    path = write(tmp_path, name, text)
    format = "sasrec" if name == "seq.txt" else "auto"
    with pytest.raises(DataError) as info:
        data.load_interactions(path, format=format)
    message = str(info.value)
    with pytest.raises(DataError) as exact:
        data.load_interactions(path, format=format, fast=False)
    assert str(exact.value) == message
    assert message.startswith(f"{path}: line {line}: "), message
    assert f"the separator is {expected} and the line has none: it looks {found}" in message


def test_no_separator_hint_when_the_expected_separator_is_there(tmp_path):
    path = write(tmp_path, "u.data", "1\t2 3\t4\n")  # 3 tab fields, one with a space
    with pytest.raises(DataError) as info:
        data.load_interactions(path)
    assert str(info.value) == (f"{path}: line 1: expected 4 fields (tab-separated user item "
                               "rating timestamp), got 3: '1\\t2 3\\t4'")
    path = write(tmp_path, "v.data", "1\t2\t3\t4\n5\n")
    with pytest.raises(DataError, match=r"line 2: .*got 1: '5'; the separator is tab and the line has none$"):
        data.load_interactions(path, format="udata")
