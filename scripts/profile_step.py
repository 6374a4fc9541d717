"""Where the time of one XLA-compiled step goes: thunk CPU time by kind and by TensorFlow op.

Two scopes:

* ``--scope layer``: the attention layer's forward+backward exactly as ``tfrs-linear
  bench`` times it (its configurations, e.g. ``softmax-causal``, ``linrec-paper-causal``,
  ``elastic-k16-causal-recency``; batch 8, d_model 64, 2 heads by default);
* ``--scope train``: a whole training step of the retrieval model (``ModelConfig``'s
  defaults with ``--attention``, full-catalogue loss, regime ``all``, Adam), on real
  batches of ``--data`` (ml-100k by default), as the quality script's throughput measure
  runs it (batch 128).

The step is compiled once with XLA's HLO dump on, timed (median wall time of
``--repeats`` calls), then run ``--profile-steps`` times under ``tf.profiler``. Every
XLA CPU thunk the trace shows is matched to its instruction in the optimised HLO, whose
metadata names the TensorFlow op it came from. Thunks run on several threads at once, so
their CPU time adds up to more than the wall time when both cores are busy and to less
when the step waits on dependencies; the "thunks" line says how many there are.

Kinds: ``matmul`` (dot and its fusions), ``copy/transpose`` (copies, transposes,
pads, concatenations, slices), ``reduce`` (reductions and reduce-windows), ``control``
(conditionals, loops), ``elementwise`` (every other fusion and op).

    .venv/bin/python scripts/profile_step.py --scope layer --attention linrec-paper-causal --length 1024
    .venv/bin/python scripts/profile_step.py --scope train --attention elastic --length 200 --top 30
    .venv/bin/python scripts/profile_step.py --scope layer --attention softmax-causal \\
        --length 256 --json runs/profile-softmax-256.json
"""

import argparse
import collections
import glob
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ml-100k" / "ml-100k.inter"

_KIND_OF_OPCODE = {
    "dot": "matmul", "convolution": "matmul",
    "copy": "copy/transpose", "transpose": "copy/transpose", "pad": "copy/transpose",
    "concatenate": "copy/transpose", "slice": "copy/transpose",
    "dynamic-slice": "copy/transpose", "dynamic-update-slice": "copy/transpose",
    "reduce": "reduce", "reduce-window": "reduce",
    "conditional": "control", "while": "control", "call": "control",
}
_RANDOM_BITS = re.compile(r"%rng-get-and-update-state|rng-bit-generator\(|= \S+ rng\(")
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+(?: \S+)*? ([a-z\-]+)\(")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scope", choices=("layer", "train"), default="layer")
    p.add_argument("--attention", required=True,
                   help="layer: a bench configuration (tfrs-linear bench --attentions); "
                        "train: softmax, linrec or elastic")
    p.add_argument("--length", type=int, default=256, help="N (layer) or max_len (train)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 8 (layer, the bench's) or 128 (train)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="train scope: the .inter file")
    p.add_argument("--repeats", type=int, default=9, help="timed calls (median)")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25, help="TensorFlow ops listed")
    p.add_argument("--json", default=None, help="also write the tables here")
    args = p.parse_args(argv)
    if args.length < 1 or args.repeats < 1 or args.profile_steps < 1:
        p.error("--length, --repeats and --profile-steps must be >= 1")
    if args.scope == "train" and args.attention not in ("softmax", "linrec", "elastic"):
        p.error(f"--scope train takes --attention softmax, linrec or elastic, "
                f"not {args.attention!r}")
    if args.scope == "train" and not Path(args.data).is_file():
        p.error(f"--data {args.data}: no such file")
    return args


def layer_step(args):
    """``(step, inputs)``: the bench's forward+backward of one attention layer (XLA)."""
    from tfrs_linear.bench.plan import CONFIGS
    from tfrs_linear.bench.worker import build_subject, step_function
    if args.attention not in CONFIGS:
        sys.exit(f"--attention {args.attention!r}: not a bench configuration; one of "
                 f"{', '.join(sorted(CONFIGS))}")
    spec = dict(batch_size=args.batch_size or 8, d_model=64, heads=2, num_blocks=2,
                chunk_size=32)
    forward, make_inputs, variables = build_subject("layer", CONFIGS[args.attention], spec)
    step = step_function(forward, variables, "fwdbwd", "xla")
    inputs = make_inputs(args.length)
    return (lambda: step(*inputs).numpy()), "step"


def train_step(args):
    """``(run one step, module name pattern)``: the model's XLA train step on real data."""
    import tensorflow as tf
    from tfrs_linear import data as data_lib
    from tfrs_linear.config import ModelConfig, TrainConfig
    from tfrs_linear.models import SequentialRetrievalModel
    data = data_lib.load_dataset(args.data)
    batch = args.batch_size or 128
    batches = data_lib.training_dataset(data, args.length, batch, regime="all", seed=0)
    batches = iter(batches.take(4).cache().repeat())
    tf.keras.utils.set_random_seed(0)
    config = ModelConfig().replace(attention=args.attention, max_len=args.length)
    model = SequentialRetrievalModel(config, data.num_items).build_all()
    model.compile(optimizer=tf.keras.optimizers.Adam(TrainConfig().learning_rate),
                  jit_compile=True)
    step = model.make_train_function()
    return (lambda: float(step(batches)["loss"])), "run_step"


def hlo_instructions(dump_dir, module_pattern):
    """``{instruction: (opcode, tf op name)}`` of the largest optimised HLO module."""
    found = {}
    with open(_largest_module(dump_dir, module_pattern)) as f:
        for line in f:
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            op = re.search(r'op_name="([^"]*)"', line)
            if op:
                op = op.group(1)
            elif _RANDOM_BITS.search(line):
                op = "(random bits)"  # XLA's expansion of a random op (e.g. dropout's)
            else:
                op = "(no TF op)"
            found[m.group(1)] = (m.group(2), op)
    return found


_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_DEFINED = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \(?[a-z0-9]+\[([\d,]*)\]")
_PARAMETER = re.compile(r"([\w.\-]+): [a-z0-9]+\[([\d,]*)\]")
_DOT = re.compile(r"\sdot\(%?([\w.\-]+), %?[\w.\-]+\).*?lhs_contracting_dims=\{([\d,]*)\}")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_WHILE_BODY = re.compile(r" while\(.*?body=%?([\w.\-]+)")
_TRIP_COUNT = re.compile(r'known_trip_count":\{"n":"(\d+)"')


def _dims(text):
    return [int(x) for x in text.split(",") if x]


def dot_flops(module_path):
    """``(flops, loops)``: the floating-point operations of the dots of one optimised HLO
    module, ``2 · |output| · Π(contracted sizes)`` summed over the dots of the entry
    computation and of the fusions and calls it makes, each counted once, and of the
    bodies of loops whose trip count XLA knows (times that count); ``loops`` is the
    number of loops without a known trip count, whose dots are left out (the train
    step's chunked catalogue loss). Dots in conditional branches are left out too
    (ELASTIC's exact fallback, which a fast-path step never runs)."""
    bodies, shapes, entry, current = collections.defaultdict(list), {}, None, None
    with open(module_path) as f:
        for line in f:
            header = _HEADER.match(line)
            if header and not line[:1].isspace():
                current = header.group(2)
                entry = current if header.group(1) else entry
                for name, dims in _PARAMETER.findall(line.split("->")[0]):
                    shapes[name] = _dims(dims)
                continue
            if current is None:
                continue
            defined = _DEFINED.match(line)
            if defined:
                shapes[defined.group(1)] = _dims(defined.group(2))
            bodies[current].append(line)
    memo = {}

    def count(computation):
        if computation not in memo:
            memo[computation] = (0, 0)  # a computation never calls itself
            total, loops = 0, 0
            for line in bodies[computation]:
                dot, defined = _DOT.search(line), _DEFINED.match(line)
                if dot and defined:
                    lhs = shapes[dot.group(1)]
                    contracted = [lhs[i] for i in _dims(dot.group(2))]
                    total += 2 * math.prod(shapes[defined.group(1)]) * math.prod(contracted)
                callees = [(called, 1) for called in _CALLS.findall(line)]  # (name, runs)
                body = _WHILE_BODY.search(line)
                if body:
                    trips = _TRIP_COUNT.search(line)
                    if trips:
                        callees.append((body.group(1), int(trips.group(1))))
                    else:
                        loops += 1
                for called, runs in callees:
                    flops, inner = count(called)
                    total, loops = total + runs * flops, loops + inner
            memo[computation] = (total, loops)
        return memo[computation]

    return count(entry)


def _largest_module(dump_dir, module_pattern):
    modules = [f for f in glob.glob(os.path.join(dump_dir, "*cpu_after_optimizations.txt"))
               if module_pattern in os.path.basename(f)]
    if not modules:
        sys.exit(f"no optimised HLO module matching {module_pattern!r} in {dump_dir}")
    return max(modules, key=os.path.getsize)


def thunk_times(trace_dir, instructions, steps):
    """``{instruction: CPU ms per step}`` of the thunks in the profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    planes = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(planes[0], "rb") as f:
        space.ParseFromString(f.read())
    total = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id)
                if name in instructions:
                    total[name] += event.duration_ps / 1e9 / steps
    return total


def kind_of(opcode, name):
    if opcode == "fusion":
        if "dot" in name or "matmul" in name.lower():
            return "matmul"
        if any(w in name for w in ("transpose", "copy", "concatenate", "pad", "slice")):
            return "copy/transpose"
        if "reduce" in name:
            return "reduce"
        return "elementwise"
    return _KIND_OF_OPCODE.get(opcode, "elementwise")


# Parts of a step, by the TensorFlow op name (gradients count with their forward op).
# The ELASTIC layer's projections are plain einsums of the layer: "attention (rest)".
_PARTS = (
    ("dropout (random bits, masks)", r"^\(random bits\)$|(^|/|_)dropout(_\d+)?/"),
    ("projections (q, k, v, output)", r"(^|/)(query|key|value|attention_output)(/|$)"),
    ("feed-forward", r"ffn_(inner|outer)"),
    ("loss", r"(^|/)(while(_\d+)?|argsort|catalogue\w*)(/|$)"),
    ("layer norms", r"_norm(/|$)|layer_norm"),
    ("attention (rest)", r"attention"),
    ("embeddings", r"embedding|UnsortedSegmentSum"),
)


def part_of(op):
    op = op.replace("gradient_tape/", "")
    for part, pattern in _PARTS:
        if re.search(pattern, op):
            return part
    return "other"


def summarise(times, instructions, top):
    total = sum(times.values())
    kinds, ops, parts = collections.Counter(), collections.Counter(), collections.Counter()
    for name, ms in times.items():
        opcode, op = instructions[name]
        kinds[kind_of(opcode, name)] += ms
        ops[op] += ms
        parts[part_of(op)] += ms
    return {
        "thunk_cpu_ms": round(total, 2),
        "thunks": len(times),
        "kinds": {k: round(v, 2) for k, v in kinds.most_common()},
        "parts": {k: round(v, 2) for k, v in parts.most_common()},
        "ops": [[op, round(ms, 2)] for op, ms in ops.most_common(top)],
    }


def main(argv=None):
    args = parse_args(argv)
    # The HLO dump and the trace can take hundreds of MB: removed when the report is made.
    with tempfile.TemporaryDirectory(prefix="profile-step-") as scratch:
        report = _profile(args, os.path.join(scratch, "hlo"), os.path.join(scratch, "trace"))
    print(f"{args.scope} {args.attention} N={args.length}: step {report['step_wall_ms']} ms "
          f"(median of {args.repeats}); thunk CPU {report['thunk_cpu_ms']} ms over "
          f"{report['thunks']} thunks; dots {report['dot_gflop']} GFLOP per step "
          f"({report['dot_gflop_per_s']} GFLOP/s of wall time"
          + (f"; {report['dot_loops_not_counted']} loop(s) of unknown trip count not counted"
             if report["dot_loops_not_counted"] else "") + "); load "
          f"{report['load_average'][0]:.2f}")
    for table in ("kinds", "parts"):
        for name, ms in report[table].items():
            print(f"  {name:30s} {ms:9.2f} ms  {100 * ms / report['thunk_cpu_ms']:5.1f}%")
    for op, ms in report["ops"]:
        print(f"  {ms:9.2f} ms  {op}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


def _profile(args, dump, trace):
    """Compiles, times and traces the step; the report (HLO dump in ``dump``, the
    profiler trace in ``trace``)."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump}"
                               " --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*step.*")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tfrs_linear  # noqa: F401  (Keras 2 before TensorFlow is used)
    import tensorflow as tf

    run, module_pattern = (layer_step if args.scope == "layer" else train_step)(args)
    for _ in range(3):  # compile and warm up
        run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    tf.profiler.experimental.start(trace)
    for _ in range(args.profile_steps):
        run()
    tf.profiler.experimental.stop()

    instructions = hlo_instructions(dump, module_pattern)
    report = summarise(thunk_times(trace, instructions, args.profile_steps), instructions,
                       args.top)
    wall = statistics.median(times)
    flops, loops = dot_flops(_largest_module(dump, module_pattern))
    report.update(scope=args.scope, attention=args.attention, length=args.length,
                  step_wall_ms=round(1000 * wall, 2), dot_gflop=round(flops / 1e9, 4),
                  dot_gflop_per_s=round(flops / 1e9 / wall, 1), dot_loops_not_counted=loops,
                  load_average=list(os.getloadavg()))
    return report


if __name__ == "__main__":
    main()
