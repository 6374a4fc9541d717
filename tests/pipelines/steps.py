"""The pipeline's own steps run one by one on tiny inputs, outside Beam.

Used by test_runner_flags.py in the test process and, as a script, in a fresh process that
cannot import the pipeline module (what a remote Beam worker sees)::

    python tests/pipelines/steps.py PAYLOAD INPUTS.pkl WORK_DIR RESULT.json

PAYLOAD is ``apache_beam.internal.pickler.dumps({label: (dofn, args, kwargs)})``. This
module imports nothing from the tests or from pipelines/.
"""

import importlib.util
import json
import pickle
import sys
from pathlib import Path

# The steps of pipelines/preprocess.py by their labels in the Beam graph.
OWN_STEPS = (
    "Parse/FlatMap(_read_file)",
    "Sequences/FlatMap(_sequence)",
    "CountKept",
    "SumKept/CombinePerKey/Combine/ParDo(CombineValuesDoFn)",
    "ToRecordBatch",
    "OrderVocabulary",
    "ToExample",
    "WriteMetadata",
)
PAD, OOV = "[PAD]", "[OOV]"  # tfrs_linear.constants (checked in check_against_hand_computed)


def pardos(pipeline):
    """{full label: (DoFn, args, kwargs)} of every ParDo in a built (not run) pipeline."""
    import apache_beam as beam

    found = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.ParDo):
                t = node.transform
                found[node.full_label] = (t.fn, tuple(t.args), dict(t.kwargs))

    pipeline.visit(Visitor())
    return found


def tiny_inputs(root):
    """{label: (elements, side-input values)}; writes a CSV and tft's two frequency files."""
    root = Path(root)
    csv = root / "part-0.csv"
    csv.write_text("user,item,timestamp\nu1,a,3\nu1,b,1\nu2,b,1\n")
    assets = root / "transform_fn" / "assets"
    assets.mkdir(parents=True)
    (assets / "kept_item_frequency").write_text("2 b\n2 a\n1 c\n1 10\n")  # tft's order
    (assets / "train_item_frequency").write_text("1 b\n1 a\n")
    vocabulary = {"vocab": [PAD, OOV, "a", "b"], "popularity": [0, 0, 2, 1]}
    return {
        "Parse/FlatMap(_read_file)": ([(0, str(csv))], {}),
        "Sequences/FlatMap(_sequence)": (
            [("u1", [(3.0, 0, 2, "a"), (1.0, 0, 3, "b"), (1.0, 1, 1, "b"), (2.0, 0, 4, "c")]),
             ("u2", [(1.0, 0, 1, "x"), (2.0, 0, 2, "y")])], {}),
        "CountKept": ([("u1", ["a", "b", "c"])], {}),
        "SumKept/CombinePerKey/Combine/ParDo(CombineValuesDoFn)": ([(None, [(1, 2), (1, 3)])], {}),
        "ToRecordBatch": ([[("u1", ["a", "b", "c", "é"]), ("u2", ["b", "a", "a"])]], {}),
        "OrderVocabulary": ([str(root / "transform_fn")], {"totals": (2, 6), "dropped": (1, 2, 0)}),
        "ToExample": ([("u1", ["b", "a", "b"])], {"vocabulary": vocabulary}),
        "WriteMetadata": ([None], {
            "vocabulary": vocabulary, "totals": (1, 3), "dropped": (1, 2, 1),
            "files": [{"index": 0, "path": "x.csv", "format": "csv", "events": 6}],
            "shards": ["/x/sequences-00000-of-00001.tfrecord"]}),
    }


def _plain(value):
    """A JSON-able form of a step's output (TaggedOutput, Arrow batch, tuples, bytes)."""
    import apache_beam as beam
    import pyarrow as pa

    if isinstance(value, beam.pvalue.TaggedOutput):
        return ["tagged", value.tag, _plain(value.value)]
    if isinstance(value, pa.RecordBatch):
        return {k: _plain(v) for k, v in value.to_pydict().items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _example(serialized):
    from tensorflow.core.example import example_pb2

    f = example_pb2.Example.FromString(serialized).features.feature
    return {"user_id": f["user_id"].bytes_list.value[0].decode(),
            "item_ids": list(f["item_ids"].int64_list.value),
            "item_raw_ids": [v.decode() for v in f["item_raw_ids"].bytes_list.value]}


def run_steps(dofns, inputs, work_dir):
    """{label: outputs} of each own step's DoFn on its tiny inputs (JSON-able)."""
    results = {}
    for label in OWN_STEPS:
        dofn, args, kwargs = dofns[label]
        elements, side = inputs[label]
        kwargs = dict(kwargs, **side)
        out = Path(work_dir) / "metadata"
        if label == "WriteMetadata":
            kwargs["out_dir"] = str(out)
        dofn.setup()
        outputs = [o for element in elements for o in dofn.process(element, *args, **kwargs)]
        if label == "ToExample":
            outputs = [_example(o) for o in outputs]
        if label == "WriteMetadata":
            outputs = {p.name: p.read_text(encoding="utf-8") for p in sorted(out.iterdir())}
        results[label] = _plain(outputs)
    return results


def check_against_hand_computed(results):
    """The outputs the module's rules give on tiny_inputs, worked out by hand."""
    from tfrs_linear.constants import OOV as oov, PAD as pad

    assert (pad, oov) == (PAD, OOV)
    parse = results["Parse/FlatMap(_read_file)"]
    assert parse[0][:2] == ["tagged", "files"] and parse[0][2]["events"] == 3
    assert parse[1:] == [["u1", [3.0, 0, 2, "a"]], ["u1", [1.0, 0, 3, "b"]], ["u2", [1.0, 0, 4, "b"]]]
    # u1: (1.0, b) twice -> the first (file 0) kept; u2: 2 events -> dropped.
    assert results["Sequences/FlatMap(_sequence)"] == [
        ["tagged", "dropped", [0, 0, 1]], ["u1", ["b", "c", "a"]], ["tagged", "dropped", [1, 2, 0]]]
    assert results["CountKept"] == [[1, 3]]
    assert results["SumKept/CombinePerKey/Combine/ParDo(CombineValuesDoFn)"] == [[None, [2, 5]]]
    assert results["ToRecordBatch"] == [{"items": [["a", "b", "c", "é"], ["b", "a", "a"]],
                                         "train_items": [["a", "b"], ["b"]]}]
    # Training frequency a=1, b=1 (tie: string order), then frequency 0: "10" < "c".
    assert results["OrderVocabulary"] == [{"vocab": [PAD, OOV, "a", "b", "10", "c"],
                                           "popularity": [0, 0, 1, 1, 0, 0]}]
    assert results["ToExample"] == [{"user_id": "u1", "item_ids": [3, 2, 3],
                                     "item_raw_ids": ["b", "a", "b"]}]
    files = results["WriteMetadata"]
    assert sorted(files) == ["item_popularity.txt", "metadata.json", "vocab.txt"]
    assert files["vocab.txt"] == f"{PAD}\n{OOV}\na\nb\n"
    assert files["item_popularity.txt"] == "0\n0\n2\n1\n"
    meta = json.loads(files["metadata.json"])
    assert (meta["num_users"], meta["num_interactions"], meta["dropped_duplicates"]) == (1, 3, 1)
    assert meta["shards"] == ["sequences-00000-of-00001.tfrecord"] and meta["num_items"] == 2


def main(payload, inputs, work_dir, result):
    from apache_beam.internal import pickler

    dofns = pickler.loads(Path(payload).read_bytes())
    with open(inputs, "rb") as f:
        tiny = pickle.load(f)
    importable = any(name.startswith("tfrs_pipelines") for name in sys.modules) or \
        importlib.util.find_spec("tfrs_pipelines_preprocess") is not None
    steps = run_steps(dofns, tiny, work_dir)
    Path(result).write_text(json.dumps({"module_importable": importable, "steps": steps}))


if __name__ == "__main__":
    main(*sys.argv[1:])
