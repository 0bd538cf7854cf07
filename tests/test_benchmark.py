"""Benchmark smoke test (tiny model, one step) and the pieces it relies on."""

import contextlib
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest



from benchmarks import benchmark
from rapool_jax import sharding
from rapool_jax.models import rapool_net

pytestmark = pytest.mark.slow  # timing runs of the performance lab


def _torch_or_skip():
  ok, why = benchmark.torch_available()
  if not ok:
    print(f"skipping the torch part: {why}")
    pytest.skip(why)
  import torch
  return torch


def test_upsampling_formulations_agree():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 3, 2)).astype(np.float32)
  kernel = rng.normal(size=(64, 64, 2, 2)).astype(np.float32)
  subpixel = rapool_net.transposed_conv_as_subpixel(jnp.asarray(x),
                                                    jnp.asarray(kernel), 32)
  zero_stuffed = benchmark.conv_transpose_zero_stuffed(
      jnp.asarray(x), jnp.asarray(kernel), 32)
  assert subpixel.shape == (2, 96, 96, 2)
  np.testing.assert_allclose(subpixel, zero_stuffed, atol=1e-4)
  as_dot = benchmark.subpixel_as_dot(jnp.asarray(x), jnp.asarray(kernel), 32)
  np.testing.assert_allclose(as_dot, subpixel, atol=1e-4)
  # And the same gradients, which is what a train step would use.
  loss = lambda fn, x, w: jnp.sum(jnp.sin(fn(x, w, 32)))  # noqa: E731
  g_conv = jax.grad(functools.partial(loss, rapool_net.transposed_conv_as_subpixel),
                    argnums=(0, 1))(jnp.asarray(x), jnp.asarray(kernel))
  g_dot = jax.grad(functools.partial(loss, benchmark.subpixel_as_dot),
                   argnums=(0, 1))(jnp.asarray(x), jnp.asarray(kernel))
  for a, b in zip(g_dot, g_conv):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_torch_upsampling_matches():
  torch = _torch_or_skip()
  from benchmarks import torch_reference
  model = torch_reference.RAPoolNet("tiny", width=0.125, stride=32)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 3, 2)).astype(np.float32)
  # torch layout [Cin, Cout, k, k].
  weight = rng.normal(size=(2, 2, 64, 64)).astype(np.float32)
  with torch.no_grad():
    model.seg_upsample.weight.copy_(torch.from_numpy(weight))
    y = model.seg_upsample(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  ours = rapool_net.transposed_conv_as_subpixel(
      jnp.asarray(x), jnp.asarray(weight.transpose(2, 3, 0, 1)), 32)
  np.testing.assert_allclose(y.numpy().transpose(0, 2, 3, 1), ours, atol=1e-4)
  np.testing.assert_array_equal(
      model.seg_upsample.bias.detach().numpy(), 0)


def test_torch_segmentation_step_trains_only_seg_conv():
  torch = _torch_or_skip()
  from benchmarks import torch_reference as tr
  model = tr.make_model("tiny", 0.125)
  images, masks, labels = tr.synthetic_data(4, 40)
  before = {k: v.clone() for k, v in model.state_dict().items()}
  step = tr.TrainStep(model, "segmentation", images, masks, labels,
                      tr.StepOptions(crop=32), torch.device("cpu"))
  loss = step.step(torch.arange(4))
  assert torch.isfinite(loss)
  for name, value in model.state_dict().items():
    changed = not torch.equal(value, before[name])
    assert changed == name.startswith("seg_conv."), name
  for kind in ("classification", "joint"):
    step = tr.TrainStep(model, kind, images, masks, labels,
                        tr.StepOptions(crop=32), torch.device("cpu"))
    assert torch.isfinite(step.step(torch.arange(4)))


def test_xla_flag_helpers():
  assert benchmark.merge_xla_flags("--a=1 --b=2", "--b=3 --c=4") == (
      "--a=1 --b=2 --c=4")
  assert benchmark.merge_xla_flags("", benchmark.cpu_xla_flags()) == (
      benchmark.cpu_xla_flags())
  assert benchmark.cpu_compiler_options("gpu") == {}
  options = benchmark.cpu_compiler_options("cpu")
  f = jax.jit(lambda x: jnp.sum(x * 2))
  assert float(f.lower(jnp.ones(3)).compile(compiler_options=options)(
      jnp.ones(3))) == 6.0


def test_benchmark_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  argv = ["--out", str(out), "--device-size", "tiny", "--step-kinds", "joint",
          "--no-analysis"]
  with_torch = benchmark.torch_available()[0]
  if not with_torch:
    print(f"torch part skipped: {benchmark.torch_available()[1]}")
    argv.append("--no-torch")
  benchmark.main(argv)
  result = json.loads(out.read_text())
  assert {"platform", "device_kind", "cpu_count"} <= set(result["device"])
  frameworks = {"jax", "torch"} if with_torch else {"jax"}
  rows = {(e["framework"], e["step"]) for e in result["results"]}
  assert rows == {(f, s) for f in frameworks for s in ("joint", "eval")}
  for e in result["results"]:
    assert e["batch"] == 4 and e["image_size"] == 64
    assert e["dtype"] == "float32"
    assert e["img_per_s"] > 0
    assert {"compile_s", "peak_mem_bytes", "img_per_s_quiet",
            "other_cpu_frac"} <= set(e)
    if e["framework"] == "jax":
      assert e["compile_s"] > 0 and e["gflop_per_step"] > 0
      assert ("vs_torch" in e) == with_torch
      assert not with_torch or e["vs_torch"]["num_pairs"] == 1
  assert result["load"]["loadavg_start"] and result["load"]["loadavg_end"]
  # The recount restores a count that a backend could not give (the CUDA
  # plugin's None), from the program lowered for the platform named.
  counted = {e["step"]: e["gflop_per_step"] for e in result["results"]
             if e["framework"] == "jax"}
  for e in result["results"]:
    e["gflop_per_step"] = None
  out.write_text(json.dumps(result))
  recount = _benchmark_script("recount_gpu_flops")
  recount.main([str(out)], platform="cpu")
  recounted = json.loads(out.read_text())
  for e in recounted["results"]:
    if e["framework"] == "jax":
      assert e["gflop_per_step"] == counted[e["step"]]
      assert e["achieved_tflop_per_s"] > 0
  recount.main([str(out)], platform="cuda")
  for e in json.loads(out.read_text())["results"]:
    # jax lowers threefry (the dropout masks) for cuda otherwise than for
    # the CPU: 3.2% more counted FLOPs on the tiny joint step, 0.01% with
    # model.dropout_rate=0.
    if e["framework"] == "jax":
      assert e["gflop_per_step"] == pytest.approx(counted[e["step"]], rel=0.05)


def test_row_plan_puts_the_headline_rows_first():
  plan = benchmark.row_plan((10, 256), benchmark.STEP_KINDS, 256)
  assert plan[:3] == [("joint", 256), ("joint", 10), ("eval", 256)]
  assert sorted(plan[3:]) == sorted(
      (k, b) for k in ("classification", "segmentation") for b in (10, 256))
  assert benchmark.steps_per_block({"steps": 20, "min_images_per_block": 2000},
                                   10) == 200
  assert benchmark.steps_per_block({"steps": 20}, 10) == 20


class _TenSecondPieces(benchmark._Budget):  # pylint: disable=protected-access
  """A budget on a clock that moves 10 s per piece of work, and only then."""

  def __init__(self, seconds):
    self.now = 0.0
    super().__init__(seconds, clock=lambda: self.now)

  @contextlib.contextmanager
  def piece(self, what):
    with super().piece(what):
      yield
      self.now += 10.0


def test_budget_starts_a_piece_only_if_it_is_expected_to_end_in_time():
  budget = _TenSecondPieces(25.0)
  assert budget.allows("train")  # nothing known yet: 0 s < 25 s left
  with budget.piece("train"):
    pass
  assert budget.left() == 15.0 and budget.allows("train")
  assert not budget.allows("analysis", estimate=15.0)
  with budget.piece("train"):
    pass
  assert budget.left() == 5.0 and not budget.allows("train")
  assert budget.allows("eval")  # another kind: no estimate yet


def test_benchmark_budget_skips_rows_and_keeps_partial_json(tmp_path,
                                                            monkeypatch):
  out = tmp_path / "bench.json"
  # Each row "takes" 10 s of a 15 s budget. The joint row runs; eval, a kind
  # with no estimate yet, runs in the 5 s left; then the segmentation row
  # (a train row: 10 s) and the analysis (1.5x that) would not end in time.
  monkeypatch.setattr(benchmark, "_Budget", _TenSecondPieces)
  benchmark.main(["--out", str(out), "--device-size", "tiny", "--no-torch",
                  "--step-kinds", "joint", "segmentation", "--time-budget-s",
                  "15"])
  result = json.loads(out.read_text())
  assert result["complete"] and not result["errors"]
  assert [(e["step"], e["batch"]) for e in result["results"]] == [
      ("joint", 4), ("eval", 4)]
  assert result["skipped"] == [{"step": "segmentation", "batch": 4},
                               {"step": "analysis"}]


def test_conv_ops_reads_plain_and_cudnn_convolutions():
  hlo = "\n".join([
      "  %convolution.3 = f32[4,2,2,2048]{3,2,1,0} convolution(%a, %b), "
      "window={size=2x2 rhs_reversal=1x1}, dim_labels=01fb_o01i->f01b, "
      "metadata={}",
      '  %cudnn-conv.1 = (bf16[256,56,56,64]{3,2,1,0}, u8[0]{0}) '
      'custom-call(%p, %w), window={size=3x3 pad=1_1x1_1}, '
      'dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", '
      'backend_config={}',
      "  %add = f32[4]{0} add(%x, %y)"])
  assert benchmark.conv_ops(hlo) == [
      "f32[4,2,2,2048]{3,2,1,0} window={size=2x2 rhs_reversal=1x1} "
      "dim_labels=01fb_o01i->f01b",
      "bf16[256,56,56,64]{3,2,1,0} window={size=3x3 pad=1_1x1_1} "
      "dim_labels=b01f_o01i->b01f __cudnn$convForward"]


def test_input_pipeline_throughput_runs_both_paths():
  config = benchmark.make_config(benchmark.SIZES["tiny"], "float32")
  out = benchmark.input_pipeline_throughput(config, batch=4, steps=3)
  assert out["device_augment_img_per_s"] > 0
  assert out["host_stream_img_per_s"] > 0
  assert out["num_examples"] == 16


def _benchmark_script(name):
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _cpu_breakdown():
  return _benchmark_script("cpu_breakdown")


def test_cpu_breakdown_finds_every_backbone_convolution():
  cb = _cpu_breakdown()
  config = benchmark.make_config(benchmark.SIZES["tiny"], "float32")
  model = rapool_net.build_model(config.model, config.systems)
  variables = benchmark.init_variables(model, 64)
  convs = cb.network_convolutions(model, variables, 2, 64)
  # Tiny ResNet: stem + 4 basic blocks x 2 convs + 3 projection shortcuts.
  assert sum(count for *_, count in convs) == 12
  shapes = {(lhs, rhs, tuple(p["window_strides"])) for lhs, rhs, p, _ in convs}
  assert ((2, 64, 64, 3), (7, 7, 3, 8), (2, 2)) in shapes
  assert all(len(lhs) == 4 and len(rhs) == 4 for lhs, rhs, *_ in convs)


def test_cpu_breakdown_torch_conv_replays_the_jaxpr_convolution():
  torch = _torch_or_skip()
  cb = _cpu_breakdown()
  config = benchmark.make_config(benchmark.SIZES["tiny"], "float32")
  model = rapool_net.build_model(config.model, config.systems)
  variables = benchmark.init_variables(model, 64)
  rng = np.random.default_rng(0)
  for lhs, rhs, params, _ in cb.network_convolutions(model, variables, 2, 64):
    x = rng.normal(size=lhs).astype(np.float32)
    w = rng.normal(size=rhs).astype(np.float32)
    want = jax.lax.conv_general_dilated_p.bind(
        jnp.asarray(x), jnp.asarray(w),
        **{**params, "preferred_element_type": None})
    got = cb.torch_conv(params)(torch.tensor(x).permute(0, 3, 1, 2),
                                torch.tensor(w).permute(3, 2, 0, 1))
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), want,
                               rtol=1e-4, atol=1e-3)


def test_cpu_breakdown_thunk_kinds():
  kind = _cpu_breakdown().thunk_kind
  assert kind("convolution-window-dilated.3") == "convolution"
  assert kind("transpose_copy_fusion.89") == "layout transpose"
  assert kind("wrapped_reduce-window") == kind("wrapped_iota.2")
  assert kind("wrapped_reduce-window").startswith("max pool")
  assert kind("ynn_fusion.12").startswith("reduction")
  assert kind("multiply_add_fusion.4").startswith("elementwise")
  assert kind("ThunkExecutor::Execute") is None


def test_cpu_breakdown_end_to_end_tiny(tmp_path):
  _torch_or_skip()
  cb = _cpu_breakdown()
  out = tmp_path / "breakdown.json"
  cb.main(["--out", str(out), "--cpus", "1", "--size", "tiny", "--batch", "2",
           "--repeats", "1"])
  (run,) = json.loads(out.read_text())["runs"]
  assert run["cpus"] == 1 and run["depth"] == "tiny"
  assert run["num_convolutions"] == 12
  assert run["step"]["jax_img_per_s"] > 0 and run["step"]["torch_img_per_s"] > 0
  jax_total = sum(run["convolutions_ms"][f"jax_{k}_ms"]
                  for k in ("fwd", "dx", "dw"))
  assert run["convolutions_ms"]["jax"] == pytest.approx(jax_total)
  trace = run["thunk_trace"]
  assert trace["threads"] == 1 and trace["thread_ms_per_step"]
  assert sum(trace["thread_ms_per_step"].values()) > 0


def test_recomputing_transposes_counts_multi_operand_transpose_fusions():
  count = _benchmark_script("cpu_step_variants").recomputing_transposes
  hlo = """HloModule m
%fused_computation.1 (p: f32[2,3]) -> f32[3,2] { ... }
ENTRY %main (a: f32[2,3], b: f32[2,3]) -> f32[3,2] {
  %transpose_copy_fusion = f32[3,2]{1,0} fusion(%a), kind=kLoop
  %transpose_copy_fusion.2 = f32[3,2]{1,0} fusion(%a, %b), kind=kLoop
  %add_fusion = f32[2,3]{1,0} fusion(%a, %b), kind=kLoop
}"""
  assert count(hlo) == 1


def test_cpu_step_variants_compare_tiny():
  variants = _benchmark_script("cpu_step_variants")
  names = {"hash_dropout", "materialised_conv_inputs", "no_dropout",
           "dropout_8bit"}
  out = variants.compare(sorted(names), size_name="tiny", batch=2, repeats=1,
                         log=lambda _: None)
  assert set(out) == names
  for name, row in out.items():
    assert row["img_per_s"] > 0 and row["as_built_img_per_s"] > 0
    # Each variant reaches the compiled step (a knob that no longer exists
    # would time the step as built against itself).
    assert row["program_changed"], name


_HLO = """HloModule jit_step, is_scheduled=true

%fused_computation.1 (param_0.2: f32[4,8,8,2], param_1.5: f32[]) -> f32[2] {
  %param_0.2 = f32[4,8,8,2]{3,2,1,0} parameter(0)
  %param_1.5 = f32[] parameter(1)
  ROOT %reduce.7 = f32[2]{0} reduce(%param_0.2, %param_1.5), dimensions={0,1,2}, to_apply=%region_add, metadata={op_name="jit(step)/reduce_sum"}
}

%region_add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.1 = f32[] add(%a, %b)
}

%fused_computation.2 (p0: u32[64], p1: u32[64]) -> u32[64] {
  %p0 = u32[64]{0} parameter(0)
  %p1 = u32[64]{0} parameter(1)
  %xor.1 = u32[64]{0} xor(%p0, %p1)
  %c = u32[] constant(13)
  %bc = u32[64]{0} broadcast(%c), dimensions={}
  ROOT %shift-right-logical.1 = u32[64]{0} shift-right-logical(%xor.1, %bc)
}

%fused_transpose (p0: f32[8,4]) -> f32[4,8] {
  %p0 = f32[8,4]{1,0} parameter(0)
  ROOT %transpose.1 = f32[4,8]{1,0} transpose(%p0), dimensions={1,0}
}

%fused_relu (p0: f32[8,4]) -> f32[4,8] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %zero = f32[] constant(0)
  %bz = f32[8,4]{1,0} broadcast(%zero), dimensions={}
  %max = f32[8,4]{1,0} maximum(%p0, %bz)
  ROOT %transpose.2 = f32[4,8]{1,0} transpose(%max), dimensions={1,0}
}

%fused_relu_only (p0: f32[8,4]) -> f32[8,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %zero = f32[] constant(0)
  %bz = f32[8,4]{1,0} broadcast(%zero), dimensions={}
  ROOT %max = f32[8,4]{1,0} maximum(%p0, %bz)
}

%body (t: (s32[], u32[64])) -> (s32[], u32[64]) {
  %t = (s32[], u32[64]{0}) parameter(0)
  ROOT %t2 = (s32[], u32[64]{0}) tuple(%t)
}

ENTRY %main.9 (x: f32[4,8,8,2], w: f32[3,3,2,2]) -> f32[2] {
  %x = f32[4,8,8,2]{3,2,1,0} parameter(0), metadata={op_name="x"}
  %w = f32[3,3,2,2]{3,2,1,0} parameter(1)
  %custom-call.3 = (bf16[4,8,8,2]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/conv_general_dilated"}
  %custom-call.4 = f32[8,8]{1,0} custom-call(%x, %w), custom_call_target="__cublas$gemm"
  %convolution.1 = f32[4,8,8,2]{3,2,1,0} convolution(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  %input_reduce_fusion = f32[2]{0} fusion(%x, %c0), kind=kInput, calls=%fused_computation.1
  %loop_xor_fusion.2 = u32[64]{0} fusion(%u, %v), kind=kLoop, calls=%fused_computation.2, metadata={op_name="jit(step)/jit(_bernoulli)/xor"}
  %transpose_fusion = f32[4,8]{1,0} fusion(%y), kind=kLoop, calls=%fused_transpose
  %relu_transpose_fusion = f32[4,8]{1,0} fusion(%y), kind=kLoop, calls=%fused_relu
  %relu_fusion = f32[8,4]{1,0} fusion(%y), kind=kLoop, calls=%fused_relu_only
  %reduce-window.1 = f32[4,4,4,2]{3,2,1,0} reduce-window(%x, %c0), window={size=1x3x3x1 stride=1x2x2x1}, to_apply=%region_add
  %gather.5 = f32[4,2]{1,0} gather(%x, %i), offset_dims={1}, collapsed_slice_dims={0,1,2}
  %while.3 = (s32[], u32[64]{0}) while(%t0), condition=%cond, body=%body
  ROOT %r = f32[2]{0} add(%input_reduce_fusion, %input_reduce_fusion)
}
"""


def test_gpu_static_cost_counts_bytes_and_element_ops_per_kernel():
  gsc = _benchmark_script("gpu_static_cost")
  rows = {r["name"]: r for r in gsc.kernel_costs(_HLO)}
  # Launch-free instructions (parameters) and containers are not kernels.
  assert "x" not in rows and "while.3" not in rows
  conv = rows["custom-call.3"]
  assert conv["kind"] == "convolution"
  # Reads x f32[4,8,8,2] and w f32[3,3,2,2]; writes bf16[4,8,8,2] + u8[0].
  assert conv["read_bytes"] == 4 * (4 * 8 * 8 * 2 + 3 * 3 * 2 * 2)
  assert conv["written_bytes"] == 2 * 4 * 8 * 8 * 2
  # xor and shift count; parameters, constants and broadcasts do not.
  assert rows["loop_xor_fusion.2"]["element_ops"] == 2 * 64
  assert rows["relu_fusion"]["element_ops"] == 1 * 32
  summary = gsc.summarise_costs(list(rows.values()))
  assert summary["total"]["kernels"] == len(rows)
  assert summary["random bits"]["G_element_ops"] == pytest.approx(0, abs=1e-3)
  assert summary["convolution"]["kernels"] == 2


def test_step_profile_classifies_hlo_ops_by_what_they_compute():
  kinds = _benchmark_script("step_profile").hlo_op_kinds(_HLO)
  assert kinds["custom-call.3"] == "convolution"
  assert kinds["convolution.1"] == "convolution"
  assert kinds["custom-call.4"] == "matmul"
  assert kinds["input_reduce_fusion"] == "reduction"
  assert kinds["loop_xor_fusion.2"] == "random bits"
  assert kinds["transpose_fusion"] == "layout copy"
  # Producers copied into a transpose are the layout change's cost.
  assert kinds["relu_transpose_fusion"] == "layout copy"
  assert kinds["relu_fusion"] == "elementwise"
  assert kinds["reduce-window.1"] == "max pool"
  assert kinds["gather.5"] == "gather/scatter"
  assert kinds["r"] == "elementwise"
  # A container's body is traced op by op: counting it would count twice.
  assert kinds["while.3"] is None


def test_step_profile_classifies_torch_kernels_by_name():
  kind = _benchmark_script("step_profile").torch_kind
  assert kind("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc"
              "_nhwc_tilesize128x128x64") == "convolution"
  assert kind("sm90_xmma_wgrad_implicit_gemm_indexed_bf16") == "convolution"
  assert kind("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize") == "matmul"
  # Inductor names kernels after the aten ops they fused.
  assert kind("triton_poi_fused_add_convolution_backward_relu_12") == (
      "elementwise")
  assert kind("triton_red_fused_native_batch_norm_backward_7") == "reduction"
  assert kind("triton_poi_fused_bernoulli_mul_3") == "random bits"
  assert kind("void at::native::(anonymous namespace)::distribution_"
              "elementwise_grid_stride_kernel<float, 4>") == "random bits"
  assert kind("void at::native::vectorized_elementwise_kernel<4, "
              "at::native::FillFunctor<float>>") == "elementwise"
  assert kind("aten::max_pool2d_with_indices_backward") == "max pool"
  assert kind("aten::grid_sampler_2d") == "gather/scatter"
  assert kind("Memcpy DtoD (Device -> Device)") == "layout copy"
  assert kind("aten::randint") == "random bits"
  assert kind("some_operand_kernel") == "other"


def test_step_profile_summary_counts_busy_time_once():
  sp = _benchmark_script("step_profile")
  assert sp.union_ns([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
  events = [("conv.1", "convolution", 0, 4e6), ("fusion.2", "elementwise",
                                                2e6, 4e6),
            ("conv.1", "convolution", 10e6, 4e6),
            ("fusion.2", "elementwise", 14e6, 2e6)]
  s = sp.summarise(events, steps=2, wall_s=0.02)
  assert s["ms_per_step_by_kind"]["convolution"] == pytest.approx(4.0)
  assert s["ms_per_step_by_kind"]["elementwise"] == pytest.approx(3.0)
  assert set(s["ms_per_step_by_kind"]) == set(sp.KINDS)
  assert s["kernel_ms_per_step"] == pytest.approx(7.0)
  assert s["busy_ms_per_step"] == pytest.approx(6.0)   # overlap counted once
  assert s["wall_ms_per_step_traced"] == pytest.approx(10.0)
  assert s["kernels_per_step"] == 2
  assert [t["name"] for t in s["top"]] == ["conv.1", "fusion.2"]


def test_step_profile_end_to_end_tiny(tmp_path):
  sp = _benchmark_script("step_profile")
  with_torch = benchmark.torch_available()[0]
  sp.main(["--out", str(tmp_path), "--size", "tiny", "--steps", "2"]
          + ([] if with_torch else ["--no-torch"]))
  result = json.loads((tmp_path / "step_profile.json").read_text())
  (entry,) = result["profiles"]
  assert entry["batch"] == 4 and entry["step"] == "joint"
  jax_kinds = entry["jax"]["ms_per_step_by_kind"]
  assert jax_kinds["convolution"] > 0 and jax_kinds["elementwise"] > 0
  assert entry["jax"]["kernels_per_step"] > 50
  import gzip
  from jax.profiler import ProfileData
  with gzip.open(tmp_path / "joint_b4" / "jax.xplane.pb.gz") as f:
    assert ProfileData.from_serialized_xspace(f.read()).planes
  if with_torch:
    torch_kinds = entry["torch"]["ms_per_step_by_kind"]
    assert torch_kinds["convolution"] > 0
    assert entry["torch"]["wall_ms_per_step"] > 0


def test_run_gpu_rejects_an_unknown_part_before_installing(tmp_path):
  import pathlib
  import subprocess
  script = pathlib.Path(__file__).parents[1] / "benchmarks" / "run_gpu.sh"
  out = tmp_path / "out"
  proc = subprocess.run(["bash", str(script), str(out), "10", "profile",
                         "bogus"], capture_output=True, text=True, check=False)
  assert proc.returncode == 2
  assert "unknown part 'bogus'" in proc.stdout
  assert not out.exists()


def test_analysis_times_every_joint_variant_against_torch_tiny():
  with_torch = benchmark.torch_available()[0]
  snapshots = []   # the analysis pieces done at each partial write
  result = benchmark.run(
      "tiny", kinds=("joint",), with_torch=with_torch, log=lambda *_: None,
      on_row=lambda r: snapshots.append(list(r.get("analysis", {}))))
  assert not result["errors"], result["errors"]
  # A run cut short after the variants still has them in its JSON.
  assert ["joint_step_variants"] in snapshots
  assert snapshots[-1] == list(result["analysis"])
  joint = result["analysis"]["joint_step_variants"]
  for name in benchmark.JOINT_VARIANTS:
    assert joint[name]["img_per_s"] > 0, name
  assert joint["hash_dropout"]["systems_overrides"] == {"dropout_rng": "hash"}
  assert joint["default_layout"]["systems_overrides"] == {
      "state_layout": "default"}
  assert joint["no_dropout"]["model_overrides"] == {"dropout_rate": 0.0}
  assert joint["dropout_time_share"] == pytest.approx(
      1 - joint["project"]["img_per_s"] / joint["no_dropout"]["img_per_s"])
  # Without the seg loss XLA drops the upsampling and the pixel CE.
  assert joint["no_seg_loss"]["gflop_vs_project"] < 1
  effect = result["analysis"]["cpu_compiler_options_effect"]
  assert effect["xla_default"]["img_per_s"] > 0
  assert effect["speedup"] == pytest.approx(
      effect["cpu_compiler_options"]["img_per_s"]
      / effect["xla_default"]["img_per_s"])
  if with_torch:
    # Each variant's ratio pairs its blocks with the torch blocks of the
    # same rounds, timed among the variants, as a row's ratio is.
    torch_rates = joint["torch_reference"]["img_per_s_repeats"]
    for name in benchmark.JOINT_VARIANTS:
      per_round = [j / t for j, t in zip(joint[name]["img_per_s_repeats"],
                                         torch_rates)]
      assert joint[name]["vs_torch"]["median"] == pytest.approx(
          np.median(per_round), rel=1e-3)
    assert "within_noise" in joint["project_vs_row"]


def test_step_profile_reads_gpu_kernels_from_stream_lines_only():
  from types import SimpleNamespace as NS
  sp = _benchmark_script("step_profile")
  kinds = sp.hlo_op_kinds(_HLO)

  def event(name, start, dur, **stats):
    return NS(name=name, start_ns=start, duration_ns=dur,
              stats=list(stats.items()))

  stream = NS(name="Stream #14(Compute)", events=[
      event("sm90_xmma_fprop_implicit_gemm_bf16", 0, 100,
            hlo_op="custom-call.3", hlo_module="jit_step"),
      # Kernel name of a fusion inside a command buffer: its hlo_op is the
      # buffer's call, so the kernel name decides.
      event("loop_xor_fusion_2", 100, 50, hlo_op="while.3"),
      event("input_reduce_fusion", 150, 30, hlo_op="input_reduce_fusion"),
      event("MemcpyD2D", 200, 10)])
  derived = NS(name="XLA Ops", events=[
      event("custom-call.3", 0, 100, hlo_op="custom-call.3")])
  profile = NS(planes=[
      NS(name="/host:CPU", lines=[NS(name="python", events=[
          event("custom-call.3", 0, 999)])]),
      NS(name="/device:GPU:0", lines=[stream, derived])])
  events = sp._xplane_events(profile, kinds, on_gpu=True)
  assert [(k, d) for _, k, _, d in events] == [
      ("convolution", 100), ("random bits", 50), ("reduction", 30),
      ("layout copy", 10)]
  # On a CPU, thunks are named after their op; containers are not counted.
  cpu = NS(planes=[NS(name="/host:CPU", lines=[NS(name="tf_XLAEigen/1",
                                                  events=[
      event("convolution.1", 0, 5), event("while.3", 0, 20),
      event("ThunkExecutor::Execute", 0, 30)])])])
  assert [(n, k) for n, k, _, _ in sp._xplane_events(cpu, kinds, False)] == [
      ("convolution.1", "convolution")]


def test_step_profile_reads_torch_kernels_on_gpu_and_self_time_on_cpu():
  from types import SimpleNamespace as NS
  sp = _benchmark_script("step_profile")
  types = NS(CPU="cpu", CUDA="cuda")

  def fe(name, device, start_us, end_us, self_us=0.0):
    return NS(name=name, device_type=device, self_cpu_time_total=self_us,
              time_range=NS(start=start_us, end=end_us))

  events = [fe("aten::convolution", "cpu", 0, 50, self_us=5),
            fe("aten::cudnn_convolution", "cpu", 1, 40, self_us=30),
            fe("sm90_xmma_dgrad_implicit_gemm", "cuda", 10, 30),
            fe("triton_poi_fused_relu_1", "cuda", 30, 32)]
  gpu = sp._torch_events(events, True, types)
  assert gpu == [("sm90_xmma_dgrad_implicit_gemm", "convolution", 10e3, 20e3),
                 ("triton_poi_fused_relu_1", "elementwise", 30e3, 2e3)]
  cpu = sp._torch_events(events, False, types)
  assert [(n, d) for n, _, _, d in cpu] == [("aten::convolution", 5e3),
                                            ("aten::cudnn_convolution", 30e3)]


def test_input_pipeline_without_grain_keeps_the_device_figure(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "grain", None)   # import grain fails
  config = benchmark.make_config(benchmark.SIZES["tiny"], "float32")
  out = benchmark.input_pipeline_throughput(config, batch=4, steps=2,
                                            log=lambda *_: None)
  assert out["device_augment_img_per_s"] > 0
  assert out["host_stream_img_per_s"] is None
  assert "grain" in out["host_stream_skipped"]


def test_a_failing_analysis_piece_does_not_cost_the_others(monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("cuDNN said no")
  monkeypatch.setattr(benchmark, "joint_step_variants", broken)
  monkeypatch.setattr(benchmark, "upsample_analysis",
                      lambda *a, **k: {"stub": True, **{
                          n: {"forward_gflop": 0.0, "forward_ms": 0.0,
                              "forward_backward_ms": 0.0,
                              "forward_hlo_convolutions": [],
                              "max_abs_diff_vs_subpixel": 0.0}
                          for n in benchmark.UPSAMPLE_IMPLS},
                          "dense_zero_stuffed_gflop": 0.0})
  monkeypatch.setattr(benchmark, "input_pipeline_throughput",
                      lambda *a, **k: {"device_augment_img_per_s": 1.0,
                                       "host_stream_img_per_s": None})
  size = benchmark.SIZES["tiny"]
  config = benchmark.make_config(size, "float32")
  result = {"results": [], "errors": []}
  benchmark._analysis(result, config, size, {}, "gpu", "recommended",
                      lambda *_: None)
  assert result["errors"] == [{"step": "analysis/joint_step_variants",
                               "error": "RuntimeError: cuDNN said no"}]
  assert result["analysis"]["upsample_alone"]["stub"]
  assert result["analysis"]["input_pipeline"]["device_augment_img_per_s"] == 1
  assert "joint_step_variants" not in result["analysis"]


@pytest.mark.parametrize("donate", [True, False])
def test_donate_state_decides_whether_the_step_consumes_its_state(donate):
  config = benchmark.make_config(benchmark.SIZES["tiny"], "float32")
  config.systems.donate_state = donate
  step, state, idxs, key, split = benchmark.train_step_program(
      config, "joint", 4)
  step_fn = benchmark.lower_train_step(config, step, state,
                                       (idxs[0], key, split)).compile()
  placed = sharding.place_state(step_fn, state)
  new_state, _ = step_fn(placed, idxs[0], key, split)
  assert all(leaf.is_deleted() == donate
             for leaf in jax.tree.leaves(placed.params))
  assert int(new_state.step) == 1


class _LoweredWithoutCostAnalysis:
  """A lowering whose backend leaves ``cost_analysis`` unimplemented, as the
  CUDA plugin does (``Lowered.cost_analysis`` returns None there)."""

  def __init__(self, lowered):
    self._lowered = lowered

  def cost_analysis(self):
    return None

  def compiler_ir(self, dialect):
    return self._lowered.compiler_ir(dialect)


def test_flops_are_counted_where_the_backend_cannot_count_a_lowering():
  fn = jax.jit(lambda a, b: jnp.tanh(a @ b))
  lowered = fn.lower(jnp.ones((8, 16)), jnp.ones((16, 4)))
  on_backend = benchmark._cost(lowered, None)["gflop_per_step"]
  assert on_backend == pytest.approx(2 * 8 * 16 * 4 / 1e9, rel=0.2)
  plugin_like = _LoweredWithoutCostAnalysis(lowered)
  assert benchmark._cost(plugin_like, None)["gflop_per_step"] == on_backend
