"""Helpers shared by the tests of pipelines/: the two pipeline modules, loaded by file, and input data."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

import tfrs_linear  # noqa: F401  (Keras 2 before tf.keras)
from tfrs_linear import data
from tests.data.common import assert_same  # noqa: F401  (shared with tests/data)

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"


def load_pipeline_module(name):
    """Imports ``pipelines/NAME.py`` (not a package) as the module ``tfrs_pipelines_NAME``."""
    spec = importlib.util.spec_from_file_location(f"tfrs_pipelines_{name}", PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so Beam's pickler finds it by name
    spec.loader.exec_module(module)
    return module


preprocess = load_pipeline_module("preprocess")
tfx_trainer = load_pipeline_module("tfx_trainer")

# Raw ids that sort differently as strings and as numbers, and upper/lower/non-ASCII.
ITEMS = ["9", "10", "100", "a", "b", "B", "Z", "é", "x y"]


def events(seed, n_users, n_events, user_prefix):
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        user = f"{user_prefix}{u}"
        for _ in range(int(rng.integers(1, 9))):  # some users get 1-2 events
            out.append((user, str(rng.choice(ITEMS)), int(rng.integers(0, 4))))  # many time ties
    return out[:n_events]


def write_inputs(directory):
    """Three files, three formats; users span files; items only in the last 2 positions."""
    directory.mkdir(parents=True, exist_ok=True)
    a = events(1, 14, 60, "u")
    b = events(2, 14, 50, "u")  # same user names: sequences cross files with time ties
    c = events(3, 6, 30, "v")
    # u0's newest events (time 9 and 10) are items nobody else has: frequency 0.
    a += [("u0", "late-1", 9), ("u0", "only_valid", 9)]
    c += [("u0", "only_test", 10), ("w", "9", 1), ("w", "10", 1)]  # w: 2 events, dropped
    # Exact duplicates (same user, item, time): within a file, and across files (in time ties).
    a += a[3:6] + [b[0]]
    b += [b[1], a[0]]
    c += [("w", "9", 1), ("w", "10", 1)]  # w: still dropped by default, kept with duplicates
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t1\t{t}\n" for u, i, t in a)
    csv = "user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in b)
    dat = "".join(f"{u}::{i}::5::{t}\n" for u, i, t in c)
    paths = [directory / "part-0.inter", directory / "part-1.csv", directory / "ratings.dat"]
    for path, text in zip(paths, (inter, csv, dat)):
        path.write_text(text, encoding="utf-8")
    return paths


def reference(paths, keep_duplicates=False):
    """build_sequences over the files' events in file order (the in-memory rule)."""
    parts = [data.load_interactions(p) for p in paths]
    inter = data.Interactions(
        users=np.concatenate([p.users for p in parts]),
        items=np.concatenate([p.items for p in parts]),
        timestamps=np.concatenate([p.timestamps for p in parts]),
        source="reference",
    )
    return data.build_sequences(inter, keep_duplicates=keep_duplicates)


def exact_duplicates(paths):
    """Events of the files minus their distinct (user, item, timestamp) triples."""
    rows = [row for p in paths for row in zip(*(lambda i: (i.users, i.items, i.timestamps))(
        data.load_interactions(p)))]
    return len(rows) - len(set(rows))
