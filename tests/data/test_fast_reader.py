"""The readers' fast path (``tfrs_linear.data.fast_reader``, pyarrow.csv) against the exact parser.

The exact parser (``fast=False``) is the oracle: on every file the fast path either gives
bit-identical arrays and line numbers or returns None (and the reader then runs the exact
parser). Clean files must be read by the fast path, so these comparisons are not vacuous.
"""

import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tfrs_linear.data import DataError, fast_reader
from tfrs_linear.data.fast_reader import Layout
from tests.data.common import write

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAMES = {"recbole": "x.inter", "movielens": "ratings.dat", "udata": "u.data", "sasrec": "seq.txt",
         "csv": "log.csv"}
# Ids without whitespace, separators or quotes; "–" (U+2013) and the zero-width space
# (U+200B, not whitespace to Python) share their first UTF-8 bytes with whitespace.
CLEAN_ID_CHARS = "abcXYZ0123456789é中_-.–\u200b"
# Every code point Python's str.split() and str.strip() treat as whitespace.
WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]
BOM = b"\xef\xbb\xbf"


def snapshot(inter, lines):
    """Everything a reader returns, as bytes: equal snapshots are bit-identical results."""
    return (inter.format, inter.source, str(inter.users.dtype), inter.users.tobytes(),
            str(inter.items.dtype), inter.items.tobytes(), str(inter.timestamps.dtype),
            inter.timestamps.tobytes(), str(lines.dtype), lines.tobytes())


def exact(raw, fmt):
    return snapshot(*data.parse_interactions(raw, NAMES[fmt], fmt, fast=False))


def read_by_the_reader(raw, fmt, name=None):
    """``parse_interactions``'s snapshot, and whether its fast path read the file."""
    calls, read_columns = [], fast_reader.read_columns

    def recording(*args):
        calls.append(read_columns(*args))
        return calls[-1]

    with mock.patch.object(fast_reader, "read_columns", recording):
        got = snapshot(*data.parse_interactions(raw, name or NAMES[fmt], fmt))
    return got, len(calls) == 1 and calls[0] is not None


def columns_snapshot(fmt, columns):
    users, items, timestamps, lines = columns
    inter = data.Interactions(users, items, timestamps, source=NAMES[fmt], format=fmt)
    return snapshot(inter, lines)


# ----------------------------------------------------------------- clean files


NUMBERS = st.one_of(
    st.integers(-10**15, 10**15).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["+5", "3.", ".5", "-0.0", "1E5", "007", "1e-400", "-.5e+3", "9" * 40]),
)


@st.composite
def clean_files(draw):
    """(format, file bytes, Layout, header line): files the fast path must read itself."""
    fmt = draw(st.sampled_from(sorted(NAMES)))
    ident = st.text(CLEAN_ID_CHARS, min_size=1, max_size=6)
    rows = draw(st.lists(st.tuples(ident, ident, NUMBERS), min_size=1, max_size=20))
    sep = {"recbole": "\t", "movielens": "::", "udata": "\t", "csv": ","}.get(fmt) or draw(
        st.sampled_from([" ", "\t"]))
    pad = st.sampled_from(["", "", " ", "  "]) if fmt != "sasrec" else st.just("")
    lines, layout = [], {"movielens": Layout("::", 4, 0, 1, 3), "udata": Layout("\t", 4, 0, 1, 3),
                         "sasrec": Layout(" ", 2, 0, 1)}.get(fmt)
    order = [0, 1, 2, 3]
    if fmt in ("recbole", "csv"):
        names = {"recbole": ["user_id:token", "item_id:token", "timestamp:float", "rating:float"],
                 "csv": ["User", "item_id", "TS", "rating"]}[fmt]
        order = draw(st.permutations(range(draw(st.sampled_from([3, 4])))))
        lines.append(sep.join(names[k] for k in order))
        layout = Layout(sep, len(order), order.index(0), order.index(1), order.index(2),
                        quotes=fmt == "csv")
    for user, item, ts in rows:
        fields = {"sasrec": [user, item], "movielens": [user, item, "4", ts],
                  "udata": [user, item, "4", ts]}.get(fmt)
        fields = fields or [[user, item, ts, "5"][k] for k in order]
        # spaces around any field but a line's first (a padded first field is refused)
        lines.append(sep.join(f if k == 0 else draw(pad) + f + draw(pad)
                              for k, f in enumerate(fields)))
    for _ in range(draw(st.integers(0, 3))):  # empty lines anywhere
        lines.insert(draw(st.integers(0, len(lines))), "")
    header_line = 0
    if fmt in ("recbole", "csv"):
        header_line = 1 + lines.index(next(line for line in lines if line))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    raw = (end.join(lines) + draw(st.sampled_from(["", end]))).encode("utf-8")
    return fmt, (BOM + raw if draw(st.booleans()) else raw), layout, header_line


@SETTINGS
@given(clean_files())
def test_clean_files_are_read_by_the_fast_path_exactly_as_the_exact_parser(case):
    fmt, raw, layout, header_line = case
    columns = fast_reader.read_columns(raw[3:] if raw.startswith(BOM) else raw, layout, header_line)
    assert columns is not None
    expected = exact(raw, fmt)
    assert columns_snapshot(fmt, columns) == expected
    assert read_by_the_reader(raw, fmt) == (expected, True)  # the reader finds the same layout


def test_the_reader_uses_the_fast_path_on_a_clean_file(tmp_path):
    path = write(tmp_path, "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n\n"
                                      "u1\té\t1.5\r\nu2\t中\t-3\n")
    (_, source, _, users, _, items, _, timestamps, _, lines), used_fast = read_by_the_reader(
        path.read_bytes(), "auto", name=str(path))
    assert used_fast and source == str(path)
    assert users == np.array(["u1", "u2"]).tobytes() and items == np.array(["é", "中"]).tobytes()
    assert timestamps == np.array([1.5, -3.0]).tobytes() and lines == np.array([3, 4]).tobytes()
    inter = data.load_interactions(path)
    assert inter.users.tolist() == ["u1", "u2"] and inter.timestamps.tolist() == [1.5, -3.0]


def test_many_chunks_and_non_ascii_ids(tmp_path):
    """A file of several pyarrow blocks (1 MB each), ids of 1 to 3 UTF-8 bytes per character."""
    rows = [f"user-{k % 997}{'é' * (k % 3)}\titem-{k % 101}{'中' * (k % 2)}\t4\t{k * 7.25}\n"
            for k in range(90_000)]
    raw = "".join(rows).encode("utf-8")
    assert len(raw) > 2_500_000
    columns = fast_reader.read_columns(raw, Layout("\t", 4, 0, 1, 3))
    assert columns is not None
    assert columns_snapshot("udata", columns) == exact(raw, "udata")


# ------------------------------------------------------------ irregular files


@pytest.mark.parametrize(
    "fmt, text",
    [
        ("udata", "1\t2\t3\t4\r5\t6\t7\t8\n"),  # a lone \r: one line to the exact parser
        ("udata", "1\t2\t3\t4\n1\t2\t3\n"),  # a wrong number of fields
        ("udata", "1\t2\t3\t4\n1\t\t3\t4\n"),  # an empty id
        ("udata", "1\t2\t3\tnan\n"),  # a timestamp that is not finite
        ("udata", "1\t2\t3\t1_0\n"),  # accepted by Python's float(), not a plain number
        ("udata", "1\t2\t3\t1e999\n"),
        ("udata", " 1\t2\t3\t4\n"),  # a padded first field
        ("udata", "1\t2\t3\t4\n \n5\t6\t7\t8\n"),  # a whitespace-only line
        ("udata", "1\t2\x0b\t3\t4\n"),  # \v: whitespace to Python
        ("udata", "1\t2\xa0\t3\t4\n"),  # U+00A0: whitespace to Python
        ("udata", "1\t2\u3000\t3\t4\n"),
        ("udata", "1\t2\x00\t3\t4\n"),  # another control character
        ("movielens", "1::2::3::4\n1:::2::3::4\n"),  # a colon in an id
        ("sasrec", "1 2\n1  2\n"),  # a run of spaces
        ("sasrec", "1 2\n1\t2\n"),  # spaces and tabs
        # a byte-order mark after the header
        ("recbole", "user_id:token\titem_id:token\ttimestamp:float\n\ufeff1\t2\t3\n"),
        ("csv", 'user,item,timestamp\n"a",b,3\n'),  # CSV quoting
        ("csv", "user,item,timestamp\n"),  # no events
    ],
)
def test_irregular_files_are_left_to_the_exact_parser(tmp_path, fmt, text):
    raw = text.encode("utf-8")
    layout = {"movielens": Layout("::", 4, 0, 1, 3), "udata": Layout("\t", 4, 0, 1, 3),
              "sasrec": Layout(" ", 2, 0, 1), "recbole": Layout("\t", 3, 0, 1, 2),
              "csv": Layout(",", 3, 0, 1, 2, quotes=True)}[fmt]
    assert fast_reader.read_columns(raw, layout, 1 if fmt in ("recbole", "csv") else 0) is None
    path = write(tmp_path, NAMES[fmt], text)
    results = []
    for fast in (True, False):
        try:
            results.append(snapshot(*data.parse_interactions(raw, str(path), fmt, fast=fast)))
        except DataError as e:
            results.append(str(e))
        try:
            results.append(snapshot(data.load_interactions(path, fmt, fast=fast), np.zeros(0)))
        except DataError as e:
            results.append(str(e))
    assert results[:2] == results[2:]


@pytest.mark.parametrize("char", WHITESPACE, ids=lambda c: f"U+{ord(c):04X}")
def test_every_whitespace_character_reads_as_the_exact_parser_reads_it(char):
    for fmt, text in [("udata", f"u{char}1\t2\t3\t4\nu2\t2{char}\t3\t{char}4\n"),
                      ("sasrec", f"u1 2\nu{char}2 3\n"),
                      ("csv", f"user,item,ts\nu1,i{char},3\nu1,i,{char}3{char}\n"),
                      ("movielens", f"u1::2{char}::3::4\n")]:
        raw = text.encode("utf-8")
        try:
            expected = exact(raw, fmt)
        except DataError as e:
            expected = str(e)
        try:
            got = snapshot(*data.parse_interactions(raw, NAMES[fmt], fmt))
        except DataError as e:
            got = str(e)
        assert got == expected, (fmt, text)


@SETTINGS
@given(st.text("0123456789+-.eE", min_size=1, max_size=30))
def test_timestamps_are_python_floats_or_left_to_the_exact_parser(ts):
    raw = f"u\ti\t5\t{ts}\n".encode()
    columns = fast_reader.read_columns(raw, Layout("\t", 4, 0, 1, 3))
    if columns is None:
        return
    assert np.isfinite(float(ts))  # the fast path only reads what Python's float() reads
    assert columns[2].tobytes() == np.array([float(ts)]).tobytes()


def test_without_pyarrow_the_exact_parser_runs(tmp_path, monkeypatch):
    path = write(tmp_path, "u.data", "1\t2\t3\t4\n\n5\t6\t7\t8.5\n")
    expected = snapshot(*data.parse_interactions(path.read_bytes(), str(path), fast=False))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    assert fast_reader.read_columns(path.read_bytes(), Layout("\t", 4, 0, 1, 3)) is None
    assert snapshot(*data.parse_interactions(path.read_bytes(), str(path))) == expected
    with pytest.raises(DataError, match=r"u.data: line 2: expected 4 fields"):
        data.load_interactions(write(tmp_path, "u.data", "1\t2\t3\t4\n5\t6\n"))
