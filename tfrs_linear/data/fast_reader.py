"""The fast path of the interaction readers: ``pyarrow.csv`` on clean files, None on anything else.

:mod:`tfrs_linear.data.readers` decides a file's :class:`Layout` (separator, number of
fields, which field is the user, the item and the time) with its exact rules, from the
header when the format has one, then asks :func:`read_columns` for the events of the lines
after it. :func:`read_columns` returns them only when ``pyarrow.csv``'s reading is, by
construction, the exact parser's, so every result is identical (same arrays, same dtypes,
same line numbers); on anything irregular it returns None and the reader runs its exact
parser on the file, whose errors name the file and the line. Irregular is:

* pyarrow not installed (an optional dependency);
* a line of the wrong number of fields, or a parse error of any kind;
* a user or item id empty after stripping, a timestamp that is not a plain decimal
  number (``[+-]digits[.digits][e[+-]digits]``) or not finite;
* bytes whose reading could differ: a ``\\r`` not followed by ``\\n``, a control
  character other than tab, a whitespace character other than space and tab (Python's
  ``str.split`` and ``str.strip`` know more than pyarrow), a line starting with a space
  or a tab (padded first fields, whitespace-only lines), a byte-order mark after the
  header, a double quote in a CSV file (the exact parser honours CSV quoting);
* no events.

Clean files (ids and numbers separated by the format's separator, ``\\n`` or ``\\r\\n``
line ends, empty lines anywhere, spaces around fields other than the first) are read by
pyarrow. ``tests/data/test_fast_reader.py`` checks both claims on generated files.
"""

import dataclasses
import re

import numpy as np

# Python's non-ASCII whitespace (str.isspace) as UTF-8 byte sequences (the ASCII ones
# other than space, tab and the line ends are control bytes, refused by _is_clean).
_OTHER_WHITESPACE = re.compile(b"|".join(re.escape(chr(c).encode("utf-8")) for c in (
    0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)))
# The bytes of the timestamps the fast path converts (see _numbers).
_NUMBER_BYTES = b"0123456789+-.eE"
_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the lines of one file split into fields, as the exact parser splits them.

    Attributes:
      separator: ``"\\t"``, ``","``, ``"::"``, or ``" "`` for any run of whitespace.
      fields: the number of fields of every line.
      user: the user id's field (0-based).
      item: the item id's field.
      timestamp: the timestamp's field, or None when an event's time is its line number.
      quotes: whether the exact parser honours CSV double quotes (a file holding a
        double quote is then left to it).
    """

    separator: str
    fields: int
    user: int
    item: int
    timestamp: int | None = None
    quotes: bool = False


def read_columns(raw, layout, header_line=0):
    """The events of a clean file, exactly as the exact parser reads them, or None.

    Args:
      raw: the file's bytes, valid UTF-8 (the caller decoded them) without the leading
        byte-order mark.
      layout: the :class:`Layout` of the lines after the header.
      header_line: the 1-based line number of the header (0: no header); the events are
        the non-empty lines after it.

    Returns:
      ``(users, items, timestamps, lines)``: NumPy unicode arrays of the stripped ids,
      float64 timestamps and int64 1-based line numbers, in file order; or None where the
      file is not clean (see the module docstring) or pyarrow is missing.
    """
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pcsv
    except ImportError:
        return None
    raw = bytes(raw)
    start = _body_start(raw, header_line)
    codes = np.frombuffer(raw, dtype=np.uint8)
    newlines = np.flatnonzero(codes == 10)
    if start is None or not _is_clean(raw, codes, len(newlines), start, layout):
        return None
    lines = _event_lines(codes, newlines, start, header_line)
    if lines is None or len(lines) == 0:
        return None
    body = pa.py_buffer(raw).slice(start)  # no copy
    delimiter, columns = _delimiter(raw, layout)
    if delimiter is None:
        return None
    names = [f"f{k}" for k in range(columns)]
    used = [layout.user, layout.item] + ([] if layout.timestamp is None else [layout.timestamp])
    if layout.separator == "::":  # "a::b" read as "a", "", "b" with ":" as the delimiter
        used = [2 * k for k in used] + list(range(1, columns, 2))
    try:
        table = pcsv.read_csv(
            pa.BufferReader(body),
            read_options=pcsv.ReadOptions(column_names=names),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, quote_char=False,
                                            escape_char=False, ignore_empty_lines=True),
            convert_options=pcsv.ConvertOptions(
                include_columns=[names[k] for k in used],
                column_types={names[k]: pa.string() for k in used}, strings_can_be_null=False),
        )
    except pa.ArrowException:
        return None
    if table.num_rows != len(lines):
        return None
    if layout.separator == "::" and any(
            pc.max(pc.binary_length(table.column(names[k]))).as_py() for k in range(1, columns, 2)):
        return None
    return _columns(table, [names[k] for k in used[:3]], lines, raw, layout, pa, pc)


def _body_start(raw, header_line):
    """The offset of the line after line ``header_line`` (None if the file has no such line)."""
    start = 0
    for _ in range(header_line):
        start = raw.find(b"\n", start) + 1
        if start == 0:
            return None
    return start if start < len(raw) else None


def _is_clean(raw, codes, newlines, start, layout):
    """Whether every byte of the file reads the same with pyarrow as with the exact parser.

    (Lines starting with whitespace are found by :func:`_event_lines`.)
    """
    if raw.startswith(_BOM, start) or (layout.quotes and b'"' in raw):
        return False
    returns = 0
    if b"\r" in raw:  # each "\r" must end a line: pyarrow ends one at a lone "\r"
        at = np.flatnonzero(codes == 13)
        if at[-1] == len(codes) - 1 or np.any(codes[at + 1] != 10):
            return False
        returns = len(at)
    if np.count_nonzero(codes < 32) != returns + newlines + raw.count(b"\t"):
        return False  # \v, \f, \x1c-\x1f (whitespace to Python) or another control byte
    return raw.isascii() or not _OTHER_WHITESPACE.search(raw)


def _delimiter(raw, layout):
    """(pyarrow's one-character delimiter, the number of columns it gives), or (None, 0)."""
    if layout.separator == "::":
        return ":", 2 * layout.fields - 1
    if layout.separator != " ":
        return layout.separator, layout.fields
    # Any run of whitespace: one space or one tab between fields, never both in a file
    # (an empty field, from a double separator or a trailing one, is refused later).
    if b"\t" not in raw:
        return " ", layout.fields
    return ("\t", layout.fields) if b" " not in raw else (None, 0)


def _event_lines(codes, newlines, start, header_line):
    """The 1-based numbers of the non-empty lines from byte ``start`` on, or None.

    A line holding only the ``\\r`` of its ``\\r\\n`` end is empty. None when a non-empty
    line starts with a space or a tab (a padded first field, or a whitespace-only line,
    which the exact parser skips).

    Args:
      codes: the file's bytes as uint8.
      newlines: the offsets of its ``\\n`` bytes.
      start: the offset of the first line after the header.
      header_line: the header's line number (0: none).
    """
    # line k holds the bytes between bounds[k] and bounds[k + 1], both excluded
    bounds = np.concatenate(([start - 1], newlines[newlines >= start], [len(codes)]))
    length = np.diff(bounds)
    length -= 1
    last = bounds[1:] - 1
    np.maximum(last, 0, out=last)
    length -= (length > 0) & (codes[last] == 13)
    del last
    events = np.flatnonzero(length > 0)
    del length
    first = codes[bounds[events] + 1]
    if np.any((first == 32) | (first == 9)):
        return None
    events += 1 + header_line
    return events.astype(np.int64, copy=False)


def _columns(table, names, lines, raw, layout, pa, pc):
    """The checked, converted columns (see :func:`read_columns`), or None."""
    padded = b" " in raw or (layout.separator not in ("\t", " ") and b"\t" in raw)
    columns = [table.column(name) for name in names]
    if padded:  # what str.strip() removes, given _is_clean: spaces and tabs
        columns = [pc.utf8_trim(c, characters=" \t") for c in columns]
    if any(pc.min(pc.binary_length(c)).as_py() == 0 for c in columns[:2]):
        return None  # an empty id: the exact parser names the line
    users, items = (_unicode_array(c, pa, pc) for c in columns[:2])
    if layout.timestamp is None:
        return users, items, lines.astype(np.float64), lines
    timestamps = _numbers(columns[2], pa, pc)
    if timestamps is None:
        return None
    return users, items, timestamps, lines


def _numbers(column, pa, pc):
    """float64 values of a column of plain decimal numbers (as Python's float()), or None.

    Arrow's cast accepts, of the strings made of ``0-9 + - . e E`` only, exactly those
    Python's float() accepts, with the same correctly rounded values (``-0.0`` too).
    """
    for chunk in column.chunks:
        if _utf8_bytes(chunk).tobytes().translate(None, _NUMBER_BYTES):
            return None  # a byte other than 0-9 + - . e E
    try:
        values = pc.cast(column, pa.float64())
    except pa.ArrowException:
        return None
    values = np.concatenate([chunk.to_numpy() for chunk in values.chunks]).astype(np.float64)
    return values if np.all(np.isfinite(values)) else None


def _utf8_bytes(chunk):
    """The UTF-8 bytes of one Arrow string array's values, as a NumPy uint8 array."""
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)
    start, stop = int(offsets[chunk.offset]), int(offsets[chunk.offset + len(chunk)])
    data = chunk.buffers()[2]
    return np.frombuffer(data, dtype=np.uint8)[start:stop] if data else np.zeros(0, np.uint8)


def _unicode_array(column, pa, pc):
    """A NumPy unicode array of an Arrow string column, as ``np.asarray(strings, dtype=str)``.

    Each chunk's strings are padded with NULs to the longest string's length in code
    points (NumPy's own padding), so their UTF-8 re-encodes in one piece as the array's
    fixed-width UTF-32 (widened from the bytes directly when they are ASCII).
    """
    width = pc.max(pc.utf8_length(column)).as_py()
    out = np.empty(len(column), dtype=f"U{width}")
    code_points = out.view(np.uint32).reshape(len(column), width)
    at = 0
    for chunk in column.chunks:
        data = _utf8_bytes(pc.utf8_rpad(chunk, width=width, padding="\x00"))
        if len(data) == width * len(chunk):  # ASCII: one byte per code point
            code_points[at: at + len(chunk)] = data.reshape(len(chunk), width)
        else:
            out[at: at + len(chunk)] = np.frombuffer(
                data.tobytes().decode("utf-8").encode("utf-32-le"), f"U{width}")
        at += len(chunk)
    return out
