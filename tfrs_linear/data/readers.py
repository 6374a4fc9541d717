"""Interaction files: the formats, the format guess, and errors that name the file and line.

:func:`load_interactions` reads one interaction file into :class:`Interactions`
(parallel arrays of raw user ids, raw item ids and timestamps, in file order). Formats:

``recbole``
    RecBole atomic ``.inter``: tab-separated, a header of ``name:type`` fields (for
    example ``user_id:token item_id:token rating:float timestamp:float``); the columns
    are found by the name before the colon (``user_id``, ``item_id``, ``timestamp``).
``movielens``
    MovieLens ``ratings.dat`` (ML-1M, ML-10M): ``user::item::rating::timestamp``.
``udata``
    MovieLens-100K ``u.data``: tab-separated ``user item rating timestamp``, no header.
``sasrec``
    SASRec's text format: ``user item`` per line, whitespace-separated, already in time
    order; the timestamp of an event is its 1-based line number.
``csv``
    Comma-separated with a header naming the columns (case-insensitive): the user is
    ``user_id``/``user``/``userid``/``uid``, the item ``item_id``/``item``/``itemid``/
    ``iid``/``movie_id``/``movieid``, the time ``timestamp``/``time``/``ts``.
``auto``
    Guessed from the file name (``*.inter``, ``*.csv``, ``u.data``, ``*.dat``), else from
    the first line (:func:`guess_format`).
``preprocessed``
    Not a file: the output directory of ``pipelines/preprocess.py``, read by
    :func:`tfrs_linear.data.load_preprocessed` (``tfrs_linear.data.preprocessed``);
    :func:`tfrs_linear.data.load_dataset` also picks it with ``auto`` for a directory
    holding ``metadata.json``.

:func:`parse_interactions` parses the content of one file (bytes read elsewhere, as
the Beam pipeline does) with the same rules and errors, and returns line numbers too.

Files are UTF-8 (a leading byte-order mark is ignored; ``\\r\\n`` line ends are fine).
Blank lines are skipped; every other line must be a complete, valid record: a wrong
number of fields, an empty id or a timestamp that is not a finite number raises
:class:`DataError` naming the file and the 1-based line number (:func:`line_error`);
a line without the format's separator also names the separator expected and the one it
probably uses (comma, semicolon, tab, ...). Nothing is silently dropped or truncated. Timestamps must be numbers (for example Unix
seconds).

Two parsers, one result. When pyarrow is installed, a clean file (the format's separator,
plain decimal timestamps, ids without odd whitespace or quotes) is read by
``pyarrow.csv`` (:mod:`tfrs_linear.data.fast_reader`, several times faster), with the
header, the format guess and the column positions still decided here; any other file, and
every file without pyarrow or with ``fast=False``, is read by the exact pure-Python parser
below, which alone writes the errors. Both give bit-identical :class:`Interactions` and
line numbers (``tests/data/test_fast_reader.py``, ``tests/data/test_fuzz.py``).
"""

import csv
import dataclasses
import io
import math
import re
from pathlib import Path

import numpy as np

# The interaction file formats (what parse_interactions reads), "auto" and "preprocessed".
from tfrs_linear.constants import FILE_FORMATS, FORMATS, PREPROCESSED  # noqa: F401
from tfrs_linear.data import fast_reader

_CSV_COLUMNS = {
    "user": ("user_id", "user", "userid", "uid"),
    "item": ("item_id", "item", "itemid", "iid", "movie_id", "movieid"),
    "timestamp": ("timestamp", "time", "ts"),
}


# The separators a file in the wrong format is likely to use, with their names, in the order
# _separator_hint tries them (" " stands for any run of whitespace).
_SEPARATORS = (("::", "'::'"), ("\t", "tab"), (",", "comma"), (";", "semicolon"), ("|", "'|'"),
              (" ", "space"))


class DataError(ValueError):
    """Bad input data: the message names the file (and line) and what is wrong."""


@dataclasses.dataclass
class Interactions:
    """Raw interactions in file order: parallel arrays, one entry per event.

    Attributes:
      users: raw user ids (NumPy unicode array).
      items: raw item ids (NumPy unicode array; always strings, e.g. ``"242"``).
      timestamps: float64 timestamps.
      source: where the events came from (a path, or a description).
      format: the format they were read with.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    source: str = ""
    format: str = ""

    def __post_init__(self):
        self.users = _as_str_array(self.users)
        self.items = _as_str_array(self.items)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64).reshape(-1)
        n = len(self.users)
        if len(self.items) != n or len(self.timestamps) != n:
            raise DataError(
                f"{self.source or 'interactions'}: users, items and timestamps must have the "
                f"same length, got {n}, {len(self.items)} and {len(self.timestamps)}"
            )

    def __len__(self):
        return len(self.users)


def _as_str_array(values):
    values = np.asarray(values)
    if values.dtype.kind != "U":
        values = np.asarray([str(v) for v in values.reshape(-1)], dtype=str)
    return values.reshape(-1)


def line_error(path, lineno, message):
    """The :class:`DataError` ``"PATH: line N: message"`` (``"PATH: message"`` if ``lineno`` is None).

    Returned, not raised, so that callers write ``raise line_error(...)``.

    Args:
      path: the file (a path or a name), as the user gave it.
      lineno: the 1-based line number, or None for the whole file.
      message: what is wrong (and, where possible, the fix).
    """
    where = f"{path}: line {lineno}" if lineno is not None else f"{path}"
    return DataError(f"{where}: {message}")


def _split(line, sep):
    return line.split() if sep == " " else line.split(sep)


def _separator_hint(line, expected, fields=None):
    """Names the separator a line probably uses when it lacks the ``expected`` one.

    Returns ``"; the separator is EXPECTED and the line has none: it looks NAME-separated
    (K fields)"`` when ``expected`` does not occur in ``line`` and another separator of
    :data:`_SEPARATORS` splits it (preferring one that gives ``fields`` fields), else ``""``
    (a line that holds the expected separator has another problem).

    Args:
      line: the line, without its end.
      expected: the separator of the format (``"\\t"``, ``","``, ``"::"`` or ``" "`` for
        any whitespace).
      fields: how many fields the format expects, if known.
    """
    names = dict(_SEPARATORS)
    if len(_split(line, expected)) > 1:
        return ""
    found = [(len(_split(line, sep)), sep) for sep, _ in _SEPARATORS if sep != expected]
    found = [(n, sep) for n, sep in found if n > 1]
    name = "whitespace" if expected == " " else names[expected]
    hint = f"; the separator is {name} and the line has none"
    if not found:
        return hint
    exact = [f for f in found if f[0] == fields]
    n, sep = exact[0] if exact else max(found, key=lambda f: f[0])
    return f"{hint}: it looks {names[sep]}-separated ({n} fields)"


def read_text(path):
    """The text of a local file (:func:`decode_text`); a missing or unreadable file is a :class:`DataError`.

    Args:
      path: a :class:`pathlib.Path`.
    """
    return decode_text(path, _read_bytes(path))


def _read_bytes(path):
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file: {e.strerror or e}") from None


def decode_text(path, raw):
    """Decodes a file's bytes as UTF-8 without a leading byte-order mark.

    Args:
      path: the file, named in the error.
      raw: its bytes (or text, whose byte-order mark is dropped).

    Raises:
      DataError: invalid UTF-8, naming the line of the first bad byte.
    """
    if isinstance(raw, str):
        return raw[1:] if raw.startswith("\ufeff") else raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise line_error(path, line, f"not valid UTF-8 (byte {e.start} of the file)") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def _lines(text):
    """(1-based line number, line without its end) for every non-blank line."""
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line.strip():
            yield lineno, line


def _first_line(text):
    """``(number, line)`` of the first non-blank line (as ``next(_lines(text))``), or ``(0, None)``.

    Without splitting the whole text: guessing a format and reading a header look at the
    first line of files of any size.
    """
    start, lineno = 0, 1
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end].rstrip("\r")
        if line.strip():
            return lineno, line
        start, lineno = end + 1, lineno + 1
    return 0, None


def _timestamp(path, lineno, value):
    try:
        t = float(value)
    except ValueError:
        raise line_error(path, lineno, f"timestamp {value!r} is not a number") from None
    if not math.isfinite(t):
        raise line_error(path, lineno, f"timestamp {value!r} is not a finite number")
    return t


def _record(path, lineno, user, item, ts, out):
    user = user.strip()
    item = item.strip()
    if not user:
        raise line_error(path, lineno, "empty user id")
    if not item:
        raise line_error(path, lineno, "empty item id")
    out[0].append(user)
    out[1].append(item)
    out[2].append(ts if isinstance(ts, float) else _timestamp(path, lineno, ts.strip()))
    out[3].append(lineno)


def _read_delimited(path, text, sep, expected, describe, positions):
    out = ([], [], [], [])  # users, items, timestamps, line numbers
    u, i, t = positions
    for lineno, line in _lines(text):
        fields = line.split(sep)
        if len(fields) != expected:
            raise line_error(
                path, lineno,
                f"expected {expected} fields ({describe}), got {len(fields)}: {line[:80]!r}"
                + _separator_hint(line, sep, expected),
            )
        _record(path, lineno, fields[u], fields[i], fields[t], out)
    return out


def _recbole_header(path, header_line, header):
    """(number of fields, (user, item, timestamp) positions) of a RecBole header line."""
    if "\t" not in header:
        raise line_error(
            path, header_line,
            "not a RecBole header: expected tab-separated 'name:type' fields (e.g. "
            "'user_id:token<TAB>item_id:token<TAB>timestamp:float')"
            + _separator_hint(header, "\t", 3) + f": {header[:80]!r}",
        )
    fields = header.split("\t")
    names = []
    for f in fields:
        if ":" not in f:
            raise line_error(
                path, header_line,
                f"not a RecBole header: field {f!r} is not 'name:type' "
                "(expected e.g. 'user_id:token<TAB>item_id:token<TAB>timestamp:float')",
            )
        names.append(f.split(":", 1)[0].strip())
    cols = []
    for name in ("user_id", "item_id", "timestamp"):
        if name not in names:
            raise line_error(path, header_line, f"the header has no {name!r} column (columns: {names})")
        cols.append(names.index(name))
    return len(names), cols


def _read_recbole(path, text):
    lines = _lines(text)
    try:
        header_line, header = next(lines)
    except StopIteration:
        raise DataError(f"{path}: empty file (expected a RecBole header)") from None
    count, (u, i, t) = _recbole_header(path, header_line, header)
    out = ([], [], [], [])  # users, items, timestamps, line numbers
    for lineno, line in lines:
        parts = line.split("\t")
        if len(parts) != count:
            raise line_error(
                path, lineno,
                f"expected {count} tab-separated fields as in the header, got "
                f"{len(parts)}: {line[:80]!r}" + _separator_hint(line, "\t", count),
            )
        _record(path, lineno, parts[u], parts[i], parts[t], out)
    return out


def _read_sasrec(path, text):
    out = ([], [], [], [])  # users, items, timestamps, line numbers
    for lineno, line in _lines(text):
        parts = line.split()
        if len(parts) != 2:
            raise line_error(
                path, lineno,
                f"expected 2 whitespace-separated fields (user item), got {len(parts)}: "
                f"{line[:80]!r}" + _separator_hint(line, " ", 2),
            )
        _record(path, lineno, parts[0], parts[1], float(lineno), out)
    return out


def _csv_column(names, role, path, lineno, row):
    for candidate in _CSV_COLUMNS[role]:
        if candidate in names:
            return names.index(candidate)
    raise line_error(
        path, lineno,
        f"the CSV header has no {role} column (one of {list(_CSV_COLUMNS[role])}); "
        f"columns: {names}" + (_separator_hint(row[0], ",", 3) if len(row) == 1 else ""),
    )


def _csv_header(path, lineno, row):
    """(number of fields, (user, item, timestamp) positions) of a CSV header row."""
    header = [c.strip().split(":", 1)[0].lower() for c in row]
    return len(header), [_csv_column(header, role, path, lineno, row)
                         for role in ("user", "item", "timestamp")]


def _read_csv(path, text):
    reader = csv.reader(io.StringIO(text, newline=""))
    count = None  # the header's number of fields, once read
    out = ([], [], [], [])  # users, items, timestamps, line numbers
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            if count is None:
                count, cols = _csv_header(path, lineno, row)
                continue
            if len(row) != count:
                raise line_error(
                    path, lineno,
                    f"expected {count} comma-separated fields as in the header, got "
                    f"{len(row)}: {','.join(row)[:80]!r}"
                    + (_separator_hint(row[0], ",", count) if len(row) == 1 else ""),
                )
            _record(path, lineno, row[cols[0]], row[cols[1]], row[cols[2]], out)
    except csv.Error as e:
        raise line_error(path, reader.line_num, f"malformed CSV: {e}") from None
    if count is None:
        raise DataError(f"{path}: empty file (expected a CSV header)")
    return out


def _is_number(s):
    try:
        float(s)
    except ValueError:
        return False
    return True


def guess_format(path, first_line=None):
    """The format ``auto`` picks for ``path`` (from its name, else its first line)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith(".csv"):
        return "csv"
    if re.fullmatch(r"u\d?\.(data|base|test)|ua\.(base|test)|ub\.(base|test)", name):
        return "udata"
    if name.endswith(".dat"):
        return "movielens"
    if first_line is None:
        text = read_text(path)
        first_line = _first_line(text)[1] or ""
    line = first_line
    tabbed = line.split("\t")
    if "::" in line:
        return "movielens"
    if len(tabbed) > 1 and all(":" in f for f in tabbed):
        return "recbole"
    if len(tabbed) == 4 and all(_is_number(f) for f in tabbed[2:]):
        return "udata"
    if "," in line:
        return "csv"
    if len(line.split()) == 2:
        return "sasrec"
    raise DataError(
        f"{path}: cannot guess the format from the name or the first line {line[:80]!r}; "
        f"pass format= one of {FILE_FORMATS}"
    )


def load_interactions(path, format="auto", fast=True):
    """Reads an interaction file into :class:`Interactions` (events in file order).

    Args:
      path: the file.
      format: one of :data:`FORMATS` (see the module docstring); ``"auto"`` guesses.
      fast: read a clean file with ``pyarrow.csv`` when pyarrow is installed (the
        result is the exact parser's; anything else falls back to it); False: the exact
        parser only.

    Raises:
      DataError: missing file, unknown format, or a bad line (the message names the file
        and the 1-based line number).
    """
    path = Path(path)
    if format not in FORMATS:
        raise DataError(f"{path}: unknown format {format!r}; expected one of {FORMATS}")
    if format == PREPROCESSED:
        raise DataError(
            f"{path}: a {PREPROCESSED!r} directory holds sequences, not interactions; "
            "read it with load_dataset(path) or load_preprocessed(path)"
        )
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an interaction file")
    return _parse(path, _read_bytes(path), format, fast)[0]


def parse_interactions(content, source, format="auto", fast=True):
    """Parses the content of ONE interaction file, exactly as :func:`load_interactions`.

    For readers that fetch the bytes themselves (``pipelines/preprocess.py`` reads them
    through Beam's file systems, one whole file per worker). Errors are the same
    :class:`DataError` s, naming ``source`` and the 1-based line.

    Args:
      content: the file's bytes (decoded as UTF-8, a leading byte-order mark ignored)
        or its text.
      source: the file's name, used in error messages, in ``Interactions.source`` and, for
        ``format="auto"``, to guess the format (as :func:`guess_format`).
      format: one of :data:`FORMATS` except ``"preprocessed"``.
      fast: as in :func:`load_interactions`.

    Returns:
      ``(interactions, lines)``: :class:`Interactions` in file order and ``np.int64``
      1-based line numbers of its events (the last line of a multi-line CSV record).
    """
    if format != "auto" and format not in FILE_FORMATS:
        raise DataError(
            f"{source}: unknown format {format!r}; expected one of {('auto',) + FILE_FORMATS}"
        )
    return _parse(source, content, format, fast)


# The layouts of the formats without a header, for the fast path (fast_reader.Layout).
_FAST_LAYOUTS = {
    "movielens": fast_reader.Layout("::", 4, user=0, item=1, timestamp=3),
    "udata": fast_reader.Layout("\t", 4, user=0, item=1, timestamp=3),
    "sasrec": fast_reader.Layout(" ", 2, user=0, item=1),
}


def _read_fast(path, raw, header_line, header, format):
    """The events of ``fast_reader.read_columns`` (None where it does not apply).

    Args:
      path: the file, as named in errors.
      raw: its UTF-8 bytes without the byte-order mark.
      header_line, header: its first non-blank line and that line's number.
      format: its format.
    """
    try:
        if format in _FAST_LAYOUTS:
            layout, header_line = _FAST_LAYOUTS[format], 0
        elif format == "recbole":
            count, (u, i, t) = _recbole_header(path, header_line, header)
            layout = fast_reader.Layout("\t", count, u, i, t)
        else:  # a file with a double quote is left to the exact parser, so split() is csv's
            count, (u, i, t) = _csv_header(path, header_line, header.split(","))
            layout = fast_reader.Layout(",", count, u, i, t, quotes=True)
    except DataError:  # a bad header: the exact parser says so
        return None
    return fast_reader.read_columns(raw, layout, header_line)


def _utf8_bytes(content, text):
    """The UTF-8 bytes of a file without its byte-order mark (None: not encodable)."""
    if isinstance(content, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            return None
    raw = bytes(content)
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def _read_exact(path, text, format):
    """The exact parser's (users, items, timestamps, line numbers) arrays."""
    if format == "recbole":
        out = _read_recbole(path, text)
    elif format == "movielens":
        out = _read_delimited(path, text, "::", 4, "user::item::rating::timestamp", (0, 1, 3))
    elif format == "udata":
        out = _read_delimited(path, text, "\t", 4, "tab-separated user item rating timestamp", (0, 1, 3))
    elif format == "sasrec":
        out = _read_sasrec(path, text)
    else:
        out = _read_csv(path, text)
    if not out[0]:
        raise DataError(f"{path}: no interactions in the file ({format} format)")
    return (np.asarray(out[0], dtype=str), np.asarray(out[1], dtype=str),
            np.asarray(out[2], dtype=np.float64), np.asarray(out[3], dtype=np.int64))


def _parse(path, content, format, fast):
    text = decode_text(path, content)  # the exact check of the encoding
    header_line, first = _first_line(text)
    if format == "auto":
        if first is None:
            raise DataError(f"{path}: empty file, no interactions")
        format = guess_format(path, first)
    out = None
    if fast and first is not None:
        raw = _utf8_bytes(content, text)
        if not isinstance(content, str):
            text = None  # not held while pyarrow reads: decoded again if the exact parser runs
        out = None if raw is None else _read_fast(path, raw, header_line, first, format)
    if out is None:
        out = _read_exact(path, decode_text(path, content) if text is None else text, format)
    users, items, timestamps, lines = out
    interactions = Interactions(users, items, timestamps, source=str(path), format=format)
    return interactions, lines
