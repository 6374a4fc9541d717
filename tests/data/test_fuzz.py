"""Property-based tests (hypothesis) of the interaction readers and of ``load_dataset``.

Generated files, valid and malformed (separators, encodings, byte-order marks, CRLF,
blank lines, field counts, numbers, empty ids, duplicates), are read by the loader and by
an independent oracle parser written here from ``docs/protocol.md``'s rules, and by the
loader's fast path (pyarrow) and its exact parser, which must agree bit for bit. The loader
must either return exactly the oracle's events (and their line numbers), or raise a
``DataError`` naming the file and the oracle's first bad line: never another exception
(from pandas, NumPy or TensorFlow), never a silent loss. Settings are modest and
derandomized so that CI is reproducible.
"""

import math
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tfrs_linear.data import DataError

# No shrinking: a failure reports the first failing example (files of at most ~16 lines)
# at once, instead of minutes of shrinking on a shared CI machine.
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DIR = Path(tempfile.mkdtemp(prefix="tfrs-linear-fuzz-"))
NAMES = {"recbole": "x.inter", "movielens": "ratings.dat", "udata": "u.data", "sasrec": "seq.txt",
         "csv": "log.csv"}
SEPARATOR = {"recbole": "\t", "movielens": "::", "udata": "\t", "sasrec": " ", "csv": ","}
ID_CHARS = "abcXYZ0123456789é中_-."
TIMESTAMPS = st.one_of(
    st.integers(-10, 10**10).map(str),
    st.floats(-1e12, 1e12, allow_nan=False).map(repr),
    st.sampled_from(["1e3", "+5", "0.5", "-0.0", " 7 ", "3."]),
)
BAD_TIMESTAMPS = ["abc", "nan", "inf", "-Infinity", "1e999", "", "2024-01-01", "0x10", "1_0x"]


# ------------------------------------------------------------------------ the oracle


class Bad(Exception):
    """The oracle's verdict: the loader must fail at ``line`` (None: the whole file)."""

    def __init__(self, line):
        super().__init__(line)
        self.line = line


def oracle_number(text, line):
    try:
        value = float(text)
    except ValueError:
        raise Bad(line) from None
    if not math.isfinite(value):
        raise Bad(line)
    return value


def oracle_event(user, item, ts, line, out):
    user, item = user.strip(), item.strip()
    if not user or not item:
        raise Bad(line)
    out.append((user, item, ts if isinstance(ts, float) else oracle_number(ts.strip(), line), line))


def oracle_lines(raw):
    """(line number, text) of the non-blank lines; Bad at the first line that is not UTF-8."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = []
    for number, chunk in enumerate(raw.split(b"\n"), 1):
        try:
            text = chunk.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise Bad(number) from None
        if text.strip():
            lines.append((number, text))
    if not lines:
        raise Bad(None)
    return lines


def oracle_header(fmt, number, text):
    """The (user, item, timestamp) column positions of a RecBole or CSV header."""
    if fmt == "recbole":
        fields = text.split("\t")
        if any(":" not in f for f in fields):
            raise Bad(number)
        names = [f.split(":")[0].strip() for f in fields]
        wanted = (("user_id",), ("item_id",), ("timestamp",))
    else:
        fields = text.split(",")
        names = [f.strip().split(":")[0].lower() for f in fields]
        wanted = (("user_id", "user", "userid", "uid"),
                  ("item_id", "item", "itemid", "iid", "movie_id", "movieid"),
                  ("timestamp", "time", "ts"))
    columns = []
    for options in wanted:
        found = [names.index(o) for o in options if o in names]
        if not found:
            raise Bad(number)
        columns.append(found[0])
    return len(fields), columns


def oracle(fmt, raw):
    """[(user, item, timestamp, line)] of a file in format ``fmt``, or raises Bad."""
    lines = oracle_lines(raw)
    out = []
    if fmt in ("recbole", "csv"):
        count, (u, i, t) = oracle_header(fmt, *lines[0])
        lines = lines[1:]
    elif fmt == "sasrec":
        count, (u, i, t) = 2, (0, 1, None)
    else:
        count, (u, i, t) = 4, (0, 1, 3)
    for number, text in lines:
        fields = text.split() if fmt == "sasrec" else text.split(SEPARATOR[fmt])
        if len(fields) != count:
            raise Bad(number)
        oracle_event(fields[u], fields[i], float(number) if t is None else fields[t], number, out)
    if not out:
        raise Bad(None)
    return out


# ------------------------------------------------------------------- generated files


@st.composite
def interaction_files(draw):
    """(format, file bytes, the rows written, whether the file was meant to be valid)."""
    fmt = draw(st.sampled_from(sorted(NAMES)))
    ident = st.text(ID_CHARS, min_size=1, max_size=4)
    pad = st.sampled_from(["", "", " ", "  "]) if fmt != "sasrec" else st.just("")
    rows = draw(st.lists(st.tuples(ident, ident, TIMESTAMPS), max_size=12))
    rows += draw(st.lists(st.sampled_from(rows), max_size=3)) if rows else []  # duplicates
    sep = SEPARATOR[fmt] if fmt != "sasrec" else draw(st.sampled_from([" ", "\t", "  "]))
    lines, header = [], None
    if fmt in ("recbole", "csv"):
        names = {"recbole": ["user_id:token", "item_id:token", "timestamp:float", "rating:float"],
                 "csv": [draw(st.sampled_from(["user_id", "User", "uid"])),
                         draw(st.sampled_from(["item_id", "ITEM", "movie_id"])),
                         draw(st.sampled_from(["timestamp", "ts", "Time"])), "rating"]}[fmt]
        order = draw(st.permutations(range(draw(st.sampled_from([3, 4])))))
        header = [names[k] for k in order]
        lines.append(sep.join(header))
    for user, item, ts in rows:
        fields = [user, item, ts, "5"]
        if fmt == "sasrec":
            fields = fields[:2]
        elif fmt in ("movielens", "udata"):
            fields = [user, item, "4", ts]
        else:
            fields = [fields[k] for k in order]
        lines.append(sep.join(draw(pad) + f + draw(pad) for f in fields))
    valid = True
    if lines and draw(st.integers(0, 2)) == 0:  # one malformed line
        valid = False
        k = draw(st.integers(0, len(lines) - 1))
        lines[k] = draw(malformed(fmt, lines[k], sep))
    for _ in range(draw(st.integers(0, 3))):  # blank lines anywhere
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", " ", "\t", "  "])))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    text = end.join(lines) + draw(st.sampled_from(["", end, end + end]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    raw = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 9)) == 0:  # a stray invalid byte
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x80"])) + raw[at:]
        valid = False
    return fmt, raw, rows, valid and encoding.startswith("utf-8")


@st.composite
def malformed(draw, fmt, line, sep):
    fields = line.split() if fmt == "sasrec" else line.split(sep)
    kind = draw(st.sampled_from(["extra", "missing", "empty", "timestamp", "separator"]))
    if kind == "extra":
        fields.append(draw(st.sampled_from(["x", "", "1"])))
    elif kind == "missing":
        fields.pop()
    elif kind == "empty":
        fields[draw(st.integers(0, len(fields) - 1))] = draw(st.sampled_from(["", " "]))
    elif kind == "timestamp":
        fields[-1] = draw(st.sampled_from(BAD_TIMESTAMPS))
    else:
        sep = draw(st.sampled_from([s for s in [",", ";", "|", "\t", "::", " "] if s != sep]))
    return sep.join(fields)


def load(fmt, raw, name=None, format=None):
    path = DIR / (name or NAMES[fmt])
    path.write_bytes(raw)
    return path, data.load_interactions(path, format=format or fmt)


@SETTINGS
@given(interaction_files())
def test_loader_reads_exactly_the_valid_rows_or_names_the_bad_line(case):
    fmt, raw, rows, valid = case
    try:
        expected = oracle(fmt, raw)
    except Bad as bad:
        expected = bad
    if valid and rows:  # the oracle reads back what was written (it is checked too)
        assert not isinstance(expected, Bad), expected.line
        if fmt == "sasrec":
            assert [e[:2] for e in expected] == [r[:2] for r in rows]
        else:
            assert [e[:3] for e in expected] == [(u, i, float(t)) for u, i, t in rows]
    event("bad line" if isinstance(expected, Bad) and expected.line else
          "no events" if isinstance(expected, Bad) else "valid")
    formats = [fmt, "auto"] if fmt != "sasrec" else [fmt]
    for format in formats:
        path = DIR / NAMES[fmt]
        if isinstance(expected, Bad):
            with pytest.raises(DataError) as info:
                load(fmt, raw, format=format)
            where = f"{path}: line {expected.line}: " if expected.line else f"{path}: "
            assert str(info.value).startswith(where), (str(info.value), expected.line)
            if expected.line is None:
                assert ": line " not in str(info.value)
            continue
        _, inter = load(fmt, raw, format=format)
        got = list(zip(inter.users.tolist(), inter.items.tolist(), inter.timestamps.tolist()))
        assert got == [e[:3] for e in expected]
        assert inter.format == fmt
        parsed, lines = data.parse_interactions(raw, str(path), format)
        assert lines.tolist() == [e[3] for e in expected]  # every event's own line
        assert parsed.users.tolist() == inter.users.tolist()


@st.composite
def mangled_files(draw):
    """A generated file with a few random bytes spliced in, or random bytes and text."""
    raw = draw(interaction_files())[1]
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=3)) + raw[at + draw(st.integers(0, 2)):]
    return raw


@SETTINGS
@given(st.sampled_from(sorted(NAMES) + ["auto"]), st.sampled_from(sorted(NAMES.values()) + ["f.txt"]),
       mangled_files() | st.binary(max_size=120)
       | st.text(ID_CHARS + ",;:\t \n\r:\ufeff", max_size=120).map(str.encode))
def test_any_bytes_load_or_fail_with_a_data_error(fmt, name, raw):
    """Any format on any bytes: Interactions or a DataError naming the file, nothing else."""
    path = DIR / name
    path.write_bytes(raw)
    try:
        inter = data.load_interactions(path, format=fmt)
    except DataError as e:
        assert str(e).startswith(f"{path}: "), str(e)
        event("DataError")
        return
    event("loaded")
    n = len(inter)
    assert n > 0 and len(inter.items) == n and len(inter.timestamps) == n
    assert np.all(np.isfinite(inter.timestamps))
    assert all(u.strip() == u and u for u in inter.users.tolist())


def read_both_ways(content, name, fmt):
    """The fast path's and the exact parser's results (bit for bit) or error messages."""
    results = []
    for fast in (True, False):
        try:
            inter, lines = data.parse_interactions(content, name, fmt, fast=fast)
        except DataError as e:
            results.append(str(e))
            continue
        results.append((inter.format, inter.source, str(inter.users.dtype), inter.users.tobytes(),
                        str(inter.items.dtype), inter.items.tobytes(), inter.timestamps.tobytes(),
                        str(lines.dtype), lines.tobytes()))
    return results


@st.composite
def any_case(draw):
    """(format, name, bytes): a generated file in its format or "auto", or any bytes, any format."""
    if draw(st.booleans()):
        fmt, raw, _, _ = draw(interaction_files())
        return draw(st.sampled_from([fmt, "auto"])), NAMES[fmt], raw
    return (draw(st.sampled_from(sorted(NAMES) + ["auto"])),
            draw(st.sampled_from(sorted(NAMES.values()) + ["f.txt"])),
            draw(mangled_files() | st.binary(max_size=120)
                 | st.text(ID_CHARS + ",;:\t \n\r:\ufeff\"", max_size=120).map(str.encode)))


@settings(SETTINGS, max_examples=200)
@given(any_case())
def test_fast_and_exact_paths_give_identical_results_and_errors(case):
    """The pyarrow fast path is invisible: the same arrays, dtypes, lines, or the same message."""
    fmt, name, raw = case
    fast, exact = read_both_ways(raw, str(DIR / name), fmt)
    assert fast == exact
    event("error" if isinstance(exact, str) else "read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert read_both_ways(text, str(DIR / name), fmt) == [exact, exact]  # content given as text


# ------------------------------------------------------------------ load_dataset


def oracle_sequences(events, keep_duplicates, min_events=3):
    """(per-user raw sequences, vocabulary, duplicates, dropped users, dropped events)."""
    seen, kept = set(), []
    for position, (user, item, ts) in enumerate(events):
        if keep_duplicates or (user, item, ts) not in seen:
            kept.append((user, ts, position, item))
        seen.add((user, item, ts))
    by_user = {}
    for user, ts, position, item in sorted(kept):
        by_user.setdefault(user, []).append(item)
    long = {u: s for u, s in by_user.items() if len(s) >= min_events}
    freq = Counter(i for s in long.values() for i in s[:-2])
    items = sorted({i for s in long.values() for i in s}, key=lambda i: (-freq[i], i))
    short = [s for s in by_user.values() if len(s) < min_events]
    return (dict(sorted(long.items())), ["[PAD]", "[OOV]"] + items, len(events) - len(kept),
            len(short), sum(len(s) for s in short))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from("uvwxyz"), st.sampled_from(["1", "2", "3", "10", "é"]),
                          st.integers(0, 4)), min_size=1, max_size=40),
       st.lists(st.integers(0, 100), max_size=10), st.booleans(),
       st.sampled_from(["recbole", "csv", "udata", "movielens"]))
def test_load_dataset_drops_and_counts_exact_duplicates(events, repeats, keep_duplicates, fmt):
    events = list(events)
    for r in repeats:  # rows written again, anywhere in the file
        events.insert((r * 7) % (len(events) + 1), events[r % len(events)])
    header = {"recbole": "user_id:token\titem_id:token\ttimestamp:float\n",
              "csv": "user,item,timestamp\n", "udata": "", "movielens": ""}[fmt]
    line = {"recbole": "{}\t{}\t{}\n", "csv": "{},{},{}\n", "udata": "{}\t{}\t5\t{}\n",
            "movielens": "{}::{}::5::{}\n"}[fmt]
    raw = (header + "".join(line.format(*e) for e in events)).encode("utf-8")
    path = DIR / NAMES[fmt]
    path.write_bytes(raw)
    timed = [(u, i, float(t)) for u, i, t in events]
    sequences, vocab, duplicates, dropped_users, dropped_events = oracle_sequences(timed, keep_duplicates)
    event("no user kept" if not sequences else "loaded")
    if not sequences:
        with pytest.raises(DataError) as info:
            data.load_dataset(path, keep_duplicates=keep_duplicates)
        users = len({e[0] for e in events})
        assert str(info.value).startswith(
            f"{path}: no user has 3 or more events ({users} users, {len(events)} events read")
        return
    got = data.load_dataset(path, keep_duplicates=keep_duplicates)
    assert got.users == list(sequences)
    assert [[got.vocab[i] for i in s] for s in got.sequences] == list(sequences.values())
    assert got.vocab == vocab
    assert got.dropped_duplicates == duplicates
    assert (got.dropped_users, got.dropped_interactions) == (dropped_users, dropped_events)
    assert got.num_interactions + dropped_events + duplicates == len(events)
    assert f"{duplicates} exact duplicate events" in got.describe()
    repeated = np.mean([s[-1] == s[-2] for s in sequences.values()])
    assert got.repeated_target_share("test") == pytest.approx(repeated)
    if keep_duplicates:
        assert duplicates == 0
