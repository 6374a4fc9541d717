"""The item vocabulary: raw id <-> index, and its file (``vocab.txt``).

A vocabulary is a list whose entry ``i`` is the raw id of index ``i``: index 0 is
``[PAD]``, index 1 ``[OOV]`` (``tfrs_linear.constants``), the catalogue is
``2 .. len(vocab) - 1``. :func:`tfrs_linear.data.build_sequences` builds it; this module
owns the package's one lookup (:func:`vocabulary_lookup`) and the one file format: one
raw id per line, line ``i`` holding index ``i``, UTF-8, ``\\n`` line ends
(:func:`vocabulary_text` / :func:`save_vocabulary` write it, :func:`parse_vocabulary` /
:func:`load_vocabulary` read it). The model directory, the training run and
``pipelines/preprocess.py`` all write ``vocab.txt`` through it.
"""

from pathlib import Path

import numpy as np

from tfrs_linear.constants import NUM_RESERVED, OOV, OOV_INDEX, PAD
from tfrs_linear.data.readers import DataError, line_error, read_text


def vocabulary_lookup(vocab):
    """``{raw id: index}`` for a vocabulary list."""
    return {raw: i for i, raw in enumerate(vocab)}


def encode_items(raw_ids, vocab):
    """``np.int32`` indices of raw ids (strings, or numbers converted with ``str``); unknown → 1.

    Args:
      raw_ids: an iterable of raw ids.
      vocab: a vocabulary list, or a lookup from :func:`vocabulary_lookup` (to reuse it).
    """
    lookup = vocab if isinstance(vocab, dict) else vocabulary_lookup(vocab)
    return np.asarray([lookup.get(str(r), OOV_INDEX) for r in raw_ids], dtype=np.int32)


def vocabulary_text(vocab, path):
    """The content of the vocabulary file of ``vocab``, checked (what :func:`save_vocabulary` writes).

    For writers that are not a local ``Path.write_text`` (``pipelines/preprocess.py``
    writes through Beam's file systems): encode it as UTF-8.

    Args:
      vocab: the vocabulary list (``[PAD]``, ``[OOV]``, then raw ids; ``str`` is applied).
      path: the destination, named in the errors.

    Raises:
      DataError: the vocabulary does not start with ``[PAD]``, ``[OOV]``, or a raw id is
        empty or holds a newline or tab (it could not be read back).
    """
    vocab = list(vocab)
    if vocab[:NUM_RESERVED] != [PAD, OOV]:
        raise DataError(f"{path}: a vocabulary must start with {PAD!r}, {OOV!r}, got {vocab[:2]}")
    for i, raw in enumerate(vocab):
        raw = str(raw)
        if not raw or any(c in raw for c in "\n\r\t"):
            raise DataError(
                f"{path}: cannot save vocabulary index {i}: raw id {raw!r} is empty or contains "
                "a newline/tab"
            )
    return "\n".join(str(r) for r in vocab) + "\n"


def save_vocabulary(vocab, path):
    """Writes one raw id per line (line ``i`` holds index ``i``), UTF-8, ``\\n`` line ends.

    Args:
      vocab: the vocabulary list (see :func:`vocabulary_text` for the checks).
      path: the file to write.
    """
    text = vocabulary_text(vocab, path)
    Path(path).write_text(text, encoding="utf-8")


def load_vocabulary(path):
    """Reads a file written by :func:`save_vocabulary` back into a list."""
    path = Path(path)
    return parse_vocabulary(path, read_text(path))


def parse_vocabulary(path, text):
    """The vocabulary list in the text of a vocabulary file.

    Args:
      path: the file, named in the errors.
      text: its decoded content.

    Raises:
      DataError: lines 1-2 are not ``[PAD]``, ``[OOV]``, or a raw id is empty or repeated
        (naming the line).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = [line.rstrip("\r") for line in lines]
    if vocab[:NUM_RESERVED] != [PAD, OOV]:
        raise DataError(f"{path}: line 1-2 must be {PAD!r} and {OOV!r}, got {vocab[:2]}")
    seen = {}
    for i, raw in enumerate(vocab):
        if not raw:
            raise line_error(path, i + 1, "empty raw id")
        if raw in seen:
            raise line_error(path, i + 1, f"raw id {raw!r} repeats line {seen[raw] + 1}")
        seen[raw] = i
    return vocab
