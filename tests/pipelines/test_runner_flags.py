"""pipelines/preprocess.py on other runners: Beam flags pass through, bad ones are refused,
and every function the pipeline hands to Beam pickles (both of Beam's picklers) and runs the
same once unpickled -- also by value in a process that cannot import the pipeline module,
as on a Dataflow/Flink/Spark worker."""

import json
import pickle
import subprocess
import sys

import pytest

import tfrs_linear  # noqa: F401  (Keras 2 before tf.keras)
from tests.pipelines import steps
from tests.pipelines.common import preprocess


class _Stop(Exception):
    """Raised by the recording Pipeline: the pipeline is never run."""


@pytest.fixture
def built_options(monkeypatch):
    """Replaces beam.Pipeline: records the PipelineOptions preprocess() builds, then stops."""
    import apache_beam as beam
    import tensorflow_transform.beam  # noqa: F401  (imported before the patch, as in a real run)

    seen = []

    class RecordingPipeline(beam.Pipeline):
        def __init__(self, *args, options=None, **kwargs):  # noqa: D107 - never builds
            seen.append(options)
            raise _Stop

    monkeypatch.setattr(beam, "Pipeline", RecordingPipeline)
    return seen


@pytest.fixture
def tiny_input(tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("user,item,timestamp\nu,1,1\nu,2,2\nu,3,3\n")
    return src


def _run_main(argv, built_options):
    with pytest.raises(_Stop):
        preprocess.main(argv)
    (options,) = built_options
    return options


DIRECT = ["--runner", "DirectRunner", "--direct_num_workers", "2",
          "--direct_running_mode", "multi_processing"]
DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "r",
            "--temp_location", "gs://b/t", "--setup_file", "./setup.py",
            "--requirements_file=pipelines/requirements.txt"]


def test_direct_runner_flags_reach_the_pipeline_options(tmp_path, tiny_input, built_options):
    from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions,
                                                      StandardOptions)

    out = tmp_path / "out"
    # Beam's flags before, between and after the script's own, with both `--f v` and `--f=v`.
    argv = DIRECT[:2] + ["--input", str(tiny_input)] + DIRECT[2:4] + ["--output", str(out),
            "--num-shards", "1", DIRECT[4] + "=" + DIRECT[5], "--temp_location", str(tmp_path / "t")]
    options = _run_main(argv, built_options)
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert options.view_as(GoogleCloudOptions).temp_location == str(tmp_path / "t")
    # Exactly these options, none of the script's own (--input, --output, --num-shards).
    assert options.get_all_options(drop_default=True, retain_unknown_options=True) == {
        "runner": "DirectRunner", "direct_num_workers": 2,
        "direct_running_mode": "multi_processing", "temp_location": str(tmp_path / "t")}
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_dataflow_flags_reach_the_pipeline_options(tmp_path, tiny_input, built_options):
    from apache_beam.options.pipeline_options import (GoogleCloudOptions, SetupOptions,
                                                      StandardOptions)

    argv = ["--input", str(tiny_input), "--output", str(tmp_path / "out")] + DATAFLOW
    options = _run_main(argv, built_options)  # parsed only: nothing is submitted
    cloud = options.view_as(GoogleCloudOptions)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert (cloud.project, cloud.region, cloud.temp_location) == ("p", "r", "gs://b/t")
    setup = options.view_as(SetupOptions)
    assert (setup.setup_file, setup.requirements_file) == ("./setup.py", "pipelines/requirements.txt")
    assert preprocess.pipeline_options(DATAFLOW).get_all_options(drop_default=True) == \
        options.get_all_options(drop_default=True)


def test_no_beam_flag_is_taken_by_the_script():
    """argparse takes abbreviations: a Beam flag that prefixed one of the script's would
    silently become the script's. Checked against every flag of every Beam options class."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    beam_flags = sorted({s for a in parsers[0]._actions for s in a.option_strings} - {"-h", "--help"})
    assert {"--runner", "--direct_num_workers", "--setup_file", "--flink_master"} <= set(beam_flags)
    ours = preprocess.build_parser()
    taken = []
    for flag in beam_flags:
        args, rest = ours.parse_known_args(["--input", "x", "--output", "y", flag, "V"])
        if rest != [flag, "V"] or (args.input, args.output) != (["x"], "y"):
            taken.append(flag)
    assert taken == []


@pytest.mark.parametrize("extra, message", [
    # An unquoted glob expanded by the shell: only the first file would be read.
    (["b.csv", "c.csv"], "unexpected argument 'b.csv'"),
    (["--direct_num_worker", "2"], "--direct_num_worker: not an option of this script nor a Beam "
                                   "pipeline option (did you mean --direct_num_workers?)"),
    (["--runnr=DataflowRunner"], "--runnr: not an option of this script nor a Beam pipeline option "
                                 "(did you mean --runner?)"),
    (["--direct_num_workers", "two"], "argument --direct_num_workers: invalid int value: 'two'"),
])
def test_flags_beam_would_discard_are_refused_before_anything_is_written(
        tmp_path, tiny_input, built_options, capsys, extra, message):
    # Beam drops flags it does not know with a log line only: a typo would run 1 worker
    # locally, a shell-expanded glob would read its first file only.
    argv = ["--input", str(tiny_input)] + extra + ["--output", str(tmp_path / "out")]
    assert preprocess.main(argv) == 2
    assert built_options == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"python pipelines/preprocess.py: error: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]
    with pytest.raises(preprocess.PreprocessError, match="not an option|unexpected argument|invalid"):
        preprocess.preprocess([str(tiny_input)], str(tmp_path / "out"), beam_args=extra)


# ------------------------------------------------------------------------------ pickling


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """Every ParDo of the pipeline graph (built, never run) and the tiny inputs of its own steps."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    root = tmp_path_factory.mktemp("graph")
    inputs = steps.tiny_inputs(root)
    pipeline = beam.Pipeline(runner="DirectRunner")
    with tft_beam.Context(temp_dir=str(root / "tft")):
        preprocess.build_pipeline(pipeline, [inputs["Parse/FlatMap(_read_file)"][0][0][1]],
                                  str(root / "unused"))
    pardos = steps.pardos(pipeline)
    assert set(steps.OWN_STEPS) <= set(pardos), sorted(pardos)
    return root, pardos, inputs


def _pickle_libraries():
    from apache_beam.internal import pickler

    libraries = ["cloudpickle"]  # Beam's default
    if pickler.dill_pickler is not None:
        libraries.append("dill")
    return libraries


@pytest.mark.parametrize("library", _pickle_libraries())
def test_every_function_of_the_graph_pickles_and_runs_the_same(graph, library, tmp_path):
    from apache_beam.internal import pickler

    root, pardos, inputs = graph
    pickler.set_library(library)
    try:
        restored = pickler.loads(pickler.dumps(pardos))  # the whole graph's DoFns, args, kwargs
    finally:
        pickler.set_library("default")
    assert sorted(restored) == sorted(pardos)
    got = steps.run_steps(restored, inputs, tmp_path / "unpickled")
    want = steps.run_steps(pardos, inputs, tmp_path / "original")
    assert got == want
    steps.check_against_hand_computed(want)


def test_own_functions_unpickle_by_value_where_the_module_cannot_be_imported(graph, tmp_path):
    """What a remote worker does: cloudpickle by value (the script runs as __main__ there),
    unpickled in a fresh process that has tfrs_linear but not this module."""
    from apache_beam.internal import cloudpickle, pickler

    root, pardos, inputs = graph
    own = {label: pardos[label] for label in steps.OWN_STEPS}
    cloudpickle.register_pickle_by_value(preprocess)
    try:
        payload = pickler.dumps(own)
    finally:
        cloudpickle.unregister_pickle_by_value(preprocess)
    (tmp_path / "payload").write_bytes(payload)
    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps(inputs))
    proc = subprocess.run(
        [sys.executable, steps.__file__, str(tmp_path / "payload"), str(tmp_path / "inputs.pkl"),
         str(tmp_path / "worker"), str(tmp_path / "result.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["module_importable"] is False
    assert result["steps"] == json.loads(json.dumps(steps.run_steps(own, inputs, tmp_path / "here")))
