"""The Keras 3 layers take the tf-keras layers' defaults (the README promises the same
arguments and defaults). Read from the sources' ``__init__`` signatures with ``ast``, so
that this process imports neither Keras: the two cannot share one ``tf.keras``."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tfrs_linear"
CLASSES = [
    ("LinRecAttention", "layers/linrec.py", "keras3/linrec.py"),
    ("LinearDispatcherAttention", "layers/dispatcher.py", "keras3/dispatcher.py"),
    ("TransformerBlock", "layers/transformer.py", "keras3/transformer.py"),
    ("SequenceEncoder", "layers/encoder.py", "keras3/encoder.py"),
    ("InterestMemory", "layers/interest_memory.py", "keras3/memory.py"),
]


def init_defaults(path, name):
    """``{argument: default}`` of ``name.__init__`` in ``path`` (literal defaults only)."""
    tree = ast.parse((ROOT / path).read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args
    positional = args.args[len(args.args) - len(args.defaults):]
    pairs = list(zip(positional, args.defaults)) + [
        (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    out = {}
    for arg, default in pairs:
        try:
            out[arg.arg] = ast.literal_eval(default)
        except ValueError:  # a name or call: compared as source text
            out[arg.arg] = ast.unparse(default)
    return out


@pytest.mark.parametrize("name,keras2,keras3", CLASSES)
def test_keras3_layer_defaults_are_the_tf_keras_ones(name, keras2, keras3):
    old, new = init_defaults(keras2, name), init_defaults(keras3, name)
    shared = sorted(set(old) & set(new))
    assert "chunk_size" in shared or name == "InterestMemory"
    assert len(shared) >= 3
    differ = {k: (old[k], new[k]) for k in shared if old[k] != new[k]}
    assert not differ, f"{name}: tf-keras default != Keras 3 default: {differ}"
