"""The preprocessed directory that the tests of pipelines/ share (one Beam run for the package)."""

import pytest

from tests.pipelines.common import preprocess, write_inputs


@pytest.fixture(scope="package")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    paths = write_inputs(root / "raw")
    out = root / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")  # replaced with --overwrite
    # Two --input flags: a file, then a glob matching the other two (in path order).
    meta = preprocess.preprocess(
        [str(paths[0]), str(root / "raw" / "[pr]*[tv]")], str(out),
        overwrite=True, num_shards=2, beam_args=["--runner", "DirectRunner"],
    )
    return paths, out, meta
