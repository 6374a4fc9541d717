"""The vocabulary lookup and the ``vocab.txt`` format (``tfrs_linear.data.vocabulary``)."""

import pytest

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tfrs_linear.data import DataError


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


def test_vocabulary_text_is_exactly_the_saved_file(tmp_path):
    vocab = ["[PAD]", "[OOV]", "é", "10", 9]
    path = tmp_path / "vocab.txt"
    data.save_vocabulary(vocab, path)
    text = data.vocabulary_text(vocab, "somewhere/vocab.txt")
    assert text == "[PAD]\n[OOV]\né\n10\n9\n"
    assert path.read_bytes() == text.encode("utf-8")
    with pytest.raises(DataError, match=r"^somewhere/vocab.txt: a vocabulary must start with"):
        data.vocabulary_text(["[OOV]", "[PAD]", "x"], "somewhere/vocab.txt")
    with pytest.raises(DataError, match="index 2: raw id '' is empty"):
        data.vocabulary_text(["[PAD]", "[OOV]", ""], "v")
