"""scripts/profile_step.py: the HLO parsing and the grouping of thunk time (no TensorFlow)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "profile_step.py"
_spec = importlib.util.spec_from_file_location("profile_step", _PATH)
profile_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile_step)

# Lines in the form of XLA's optimised CPU HLO dump (shortened from a real one).
HLO = """\
HloModule a_inference_step_3803__XlaMustCompile_true, entry_computation_layout={()}

%fused_computation.64 (param_0: f32[8,2,1024,32]) -> f32[2,1024,32] {
  %param_0 = f32[8,2,1024,32]{3,2,1,0} parameter(0)
  ROOT %bitcast.1 = f32[2,1024,32]{2,1,0} bitcast(%param_0), metadata={op_type="Einsum" op_name="attention/einsum_6/Einsum"}
}

ENTRY %main (Arg_0.1: f32[8,1024,64]) -> f32[] {
  %dot.295 = f32[2,16,1024]{2,1,0} dot(%a, %b), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={2}
  %copy_bitcast_fusion.15 = f32[8,2,1024,32]{3,2,1,0} fusion(%p), kind=kLoop, calls=%fused_computation.64, metadata={op_type="Transpose" op_name="gradient_tape/attention/transpose_1/transpose"}
  %exponential-minus-one_select_fusion = f32[8,2,1024,32]{3,2,1,0} fusion(%q), kind=kLoop, calls=%c, metadata={op_type="Elu" op_name="attention/Elu"}
  %while.111 = (s32[], f32[8,2,1024,32]{3,2,1,0}, /*index=5*/f32[8,2,16,32]{3,2,1,0}) while(%tuple), condition=%cond, body=%body, metadata={op_type="While" op_name="while"}
  %bitcast_concatenate_fusion.4 = u32[409600,4]{1,0} fusion(%rng-get-and-update-state.2), kind=kLoop, calls=%fused_computation.290
  ROOT %reduce.7 = f32[] reduce(%x, %zero), dimensions={0,1}, to_apply=%add, metadata={op_type="Sum" op_name="Sum_1"}
}
"""


@pytest.fixture
def instructions(tmp_path):
    (tmp_path / "module_0000.a_inference_step_3803__.83.cpu_after_optimizations.txt").write_text(HLO)
    (tmp_path / "module_0001.other_module.cpu_after_optimizations.txt").write_text(HLO * 3)
    return profile_step.hlo_instructions(str(tmp_path), "step")


def test_hlo_instructions_names_opcodes_and_tf_ops(instructions):
    assert instructions["dot.295"] == ("dot", "(no TF op)")
    assert instructions["copy_bitcast_fusion.15"] == (
        "fusion", "gradient_tape/attention/transpose_1/transpose")
    assert instructions["while.111"] == ("while", "while")
    assert instructions["reduce.7"] == ("reduce", "Sum_1")  # a ROOT line
    assert instructions["bitcast.1"] == ("bitcast", "attention/einsum_6/Einsum")
    assert instructions["param_0"][0] == "parameter"
    assert instructions["bitcast_concatenate_fusion.4"] == ("fusion", "(random bits)")


def test_hlo_instructions_refuses_a_missing_module(tmp_path):
    with pytest.raises(SystemExit, match="no optimised HLO module matching 'step'"):
        profile_step.hlo_instructions(str(tmp_path), "step")


@pytest.mark.parametrize("opcode, name, kind", [
    ("dot", "dot.3", "matmul"),
    ("fusion", "copy_bitcast_fusion.15", "copy/transpose"),
    ("fusion", "transpose_copy_fusion.2", "copy/transpose"),
    ("fusion", "exponential-minus-one_select_fusion", "elementwise"),
    ("fusion", "dot_add_fusion", "matmul"),
    ("fusion", "reduce_fusion.1", "reduce"),
    ("while", "while.111", "control"),
    ("reduce-window", "reduce-window.2", "reduce"),
    ("exponential", "exponential.4", "elementwise"),
])
def test_kind_of(opcode, name, kind):
    assert profile_step.kind_of(opcode, name) == kind


@pytest.mark.parametrize("op, part", [
    ("gradient_tape/multi_head_attention/query/einsum/Einsum", "projections (q, k, v, output)"),
    ("lin_rec_attention/attention_output/einsum/Einsum", "projections (q, k, v, output)"),
    ("encoder/block_0/ffn_inner/Gelu/Erfc", "feed-forward"),
    ("while_1/MatMul", "loss"),
    ("argsort/TopKV2", "loss"),
    ("encoder/block_1/attention_norm/batchnorm/mul", "layer norms"),
    ("encoder/block_0/attention/einsum_3/Einsum", "attention (rest)"),
    ("gradient_tape/UnsortedSegmentSum", "embeddings"),
    ("Sum_1", "other"),
    ("(random bits)", "dropout (random bits, masks)"),
    ("encoder/block_0/dropout_1/dropout/SelectV2", "dropout (random bits, masks)"),
    ("encoder/block_0/counter_dropout/mul_1", "dropout (random bits, masks)"),
])
def test_part_of(op, part):
    assert profile_step.part_of(op) == part


def test_summarise_adds_up(instructions):
    times = {"dot.295": 3.0, "copy_bitcast_fusion.15": 2.0,
             "exponential-minus-one_select_fusion": 1.0, "reduce.7": 0.5}
    report = profile_step.summarise(times, instructions, top=2)
    assert report["thunk_cpu_ms"] == 6.5
    assert report["thunks"] == 4
    assert report["kinds"] == {"matmul": 3.0, "copy/transpose": 2.0, "elementwise": 1.0,
                               "reduce": 0.5}
    assert report["parts"] == {"other": 3.5, "attention (rest)": 3.0}
    assert report["ops"] == [["(no TF op)", 3.0],
                             ["gradient_tape/attention/transpose_1/transpose", 2.0]]


def test_train_scope_refuses_a_layer_configuration(capsys):
    with pytest.raises(SystemExit):
        profile_step.parse_args(["--scope", "train", "--attention", "linrec-paper-causal"])
    assert "--scope train takes --attention softmax, linrec or elastic" in capsys.readouterr().err


# Dots in the entry computation, in a fusion it calls, and in a conditional branch (not
# run by a fast-path step: not counted); operand shapes from definitions and parameters.
DOT_HLO = """\
HloModule a_inference_step_1__XlaMustCompile_true

%fused_computation.2 (param_0.1: f32[4,8,3], param_1.2: f32[4,3,5]) -> f32[4,8,5] {
  %param_0.1 = f32[4,8,3]{2,1,0} parameter(0)
  %param_1.2 = f32[4,3,5]{2,1,0} parameter(1)
  ROOT %dot.7 = f32[4,8,5]{2,1,0} dot(%param_0.1, %param_1.2), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

%branch_1 (p: f32[64,64]) -> f32[64,64] {
  %p = f32[64,64]{1,0} parameter(0)
  ROOT %dot.9 = f32[64,64]{1,0} dot(%p, %p), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main.3 (Arg_0.1: f32[16,6], Arg_1.2: f32[6,2]) -> f32[16,2] {
  %Arg_0.1 = f32[16,6]{1,0} parameter(0)
  %Arg_1.2 = f32[6,2]{1,0} parameter(1)
  %dot.1 = f32[16,2]{1,0} dot(%Arg_0.1, %Arg_1.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_type="MatMul"}
  %fusion.5 = f32[4,8,5]{2,1,0} fusion(%a, %b), kind=kOutput, calls=%fused_computation.2
  %conditional.1 = f32[64,64]{1,0} conditional(%pred, %x, %x), branch_computations={%branch_0, %branch_1}
  %while.1 = (s32[], f32[4,8,5]) while(%t), condition=%cond.1, body=%loop_body.1, backend_config={"known_trip_count":{"n":"7"}}
  %while.2 = (s32[], f32[64,64]) while(%u), condition=%cond.2, body=%branch_1
  ROOT %copy.1 = f32[16,2]{1,0} copy(%dot.1)
}
"""
LOOP_BODY = """%loop_body.1 (arg.1: (s32[], f32[4,8,5])) -> (s32[], f32[4,8,5]) {
  %fusion.9 = f32[4,8,5]{2,1,0} fusion(%a, %b), kind=kOutput, calls=%fused_computation.2
}

"""


def test_dot_flops_counts_entry_fused_and_loop_dots_not_branches(tmp_path):
    path = tmp_path / "m.cpu_after_optimizations.txt"
    head, entry = DOT_HLO.split("ENTRY")
    path.write_text(head + LOOP_BODY + "ENTRY" + entry)
    # 2·16·2·6 (entry) + 2·(4·8·5)·3 (fusion), and the fusion again 7 times in the loop
    # of known trip count; the branch's 2·64·64·64 is left out, and so is the loop of
    # unknown trip count (counted as such).
    fusion = 2 * 4 * 8 * 5 * 3
    assert profile_step.dot_flops(str(path)) == (2 * 16 * 2 * 6 + fusion + 7 * fusion, 1)
