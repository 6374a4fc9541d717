"""Smoke test of ``tfrs-linear bench`` (``run_bench``) end to end on a tiny grid (no timing asserts).

One run through the CLI, in worker subprocesses, checked for its files, the ``bench.json``
schema, the memory-limit skip, the fitted exponents and the markdown sections.
"""

import json
import os

import pytest

from tfrs_linear import bench
from tfrs_linear.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIGS = ["softmax", "linrec-paper", "elastic-k16"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # Softmax's predicted score memory at batch 2, 2 heads, float32, factor 8:
    # N=32 -> 128 KiB, N=64 -> 512 KiB; a 0.0002 GiB (~210 KiB) limit skips N=64 only.
    argv = [
        "bench",
        "--out", str(out),
        "--lengths", "32,64",
        "--attentions", ",".join(CONFIGS),
        "--quick",
        "--modes", "graph",
        "--repeats", "1",
        "--min-repeats", "1",
        "--warmup", "0",
        "--batch-size", "2",
        "--d-model", "8",
        "--heads", "2",
        "--memory-limit-gib", "0.0002",
        "--peak-matmul-size", "64",
        "--softmax-memory-factor", "8",
        "--device", "cpu",
    ]
    assert main(argv) == 0
    with open(os.path.join(out, "bench.json")) as f:
        report = json.load(f)
    with open(os.path.join(out, "bench.md")) as f:
        markdown = f.read()
    return out, report, markdown


def test_outputs_exist(tiny_run):
    out, _, _ = tiny_run
    for name in ("bench.json", "bench.md", "bench.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "bench.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_json_structure(tiny_run):
    _, report, _ = tiny_run
    assert report["schema"] == bench.SCHEMA
    for key in ("cpu_model", "logical_cores", "tensorflow", "device", "date"):
        assert key in report["machine"]
    assert report["machine"]["device"] == "cpu"
    assert report["settings"]["lengths"] == [32, 64]
    configs = {r["config"] for r in report["timings"]}
    assert configs == set(CONFIGS)
    for r in report["timings"]:
        assert r["status"] in ("ok", "skipped", "failed", "unavailable")
        if r["status"] == "ok":
            for key in ("median_s", "iqr_s", "min_s", "max_s", "samples_s"):
                assert key in r
    # LinRec always runs: layer, op and matmuls at both lengths.
    linrec = [r for r in report["timings"] if r["config"] == "linrec-paper"]
    assert {(r["scope"], r["n"]) for r in linrec} >= {
        ("layer", 32), ("layer", 64), ("op", 64), ("matmuls", 64)
    }
    assert all(r["status"] == "ok" for r in linrec), linrec
    # ELASTIC either ran or says why not, never a crash.
    elastic = [r for r in report["timings"] if r["config"] == "elastic-k16"]
    assert elastic
    if report["elastic_unavailable"]:
        assert all(r["status"] == "unavailable" for r in elastic)
        assert all(r["reason"].startswith("unavailable: ") for r in elastic)
    # Memory of every point in a fresh subprocess.
    mem = [m for m in report["memory"] if m.get("method") == "fresh-subprocess-rss-hwm"]
    assert {(m["config"], m["n"]) for m in mem} >= {
        ("softmax", 32), ("linrec-paper", 32), ("linrec-paper", 64)
    }
    assert all(m["baseline_length"] == 16 for m in mem)
    assert report["peak_matmul"]["flops_per_s"] > 0
    assert report["efficiency"] and report["efficiency"][0]["ratio"] is not None
    assert {t["id"] for t in report["targets"]} >= {
        "linrec_speed", "linrec_memory", "elastic_speed", "linrec_efficiency", "linrec_linear"
    }


def test_softmax_skipped_by_memory_limit(tiny_run):
    _, report, markdown = tiny_run
    soft = {r["n"]: r for r in report["timings"] if r["config"] == "softmax"}
    assert soft[32]["status"] == "ok"
    assert soft[64]["status"] == "skipped"
    assert soft[64]["reason"].startswith("skipped: predicted ")
    assert "> available" in soft[64]["reason"]
    factor = report["settings"]["softmax_memory_factor"]
    assert soft[64]["predicted_bytes"] == pytest.approx(2 * 2 * 64 * 64 * 4 * factor)
    assert "skipped (mem)" in markdown


def test_fitted_exponent(tiny_run):
    _, report, markdown = tiny_run
    rows = [
        e for e in report["exponents"]
        if e["config"] == "linrec-paper" and e["scope"] == "layer"
    ]
    assert rows and isinstance(rows[0]["time_exponent"], float)
    assert rows[0]["lengths"] == [32, 64]
    assert "## Fitted exponents in N" in markdown


def test_markdown_sections(tiny_run):
    _, _, markdown = tiny_run
    for text in ("## Targets", "## Time", "## Memory", "## Efficiency limit of LinRec",
                 "| N=32 | N=64 |", "linrec-paper", "softmax", "elastic-k16"):
        assert text in markdown

