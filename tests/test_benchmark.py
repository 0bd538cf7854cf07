"""Benchmark smoke test (tiny model, one step) and the pieces it relies on."""

import functools
import json
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest



from benchmarks import analyses
from benchmarks import benchmark
from benchmarks import runners
from benchmarks import timing
from rapool_jax import sharding
from rapool_jax import xla_flags
from rapool_jax.models import rapool_net
from test_benchmark_timing import TenSecondPieces

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
  zero_stuffed = analyses.conv_transpose_zero_stuffed(
      jnp.asarray(x), jnp.asarray(kernel), 32)
  assert subpixel.shape == (2, 96, 96, 2)
  np.testing.assert_allclose(subpixel, zero_stuffed, atol=1e-4)
  as_dot = analyses.subpixel_as_dot(jnp.asarray(x), jnp.asarray(kernel), 32)
  np.testing.assert_allclose(as_dot, subpixel, atol=1e-4)
  # And the same gradients, which is what a train step would use.
  loss = lambda fn, x, w: jnp.sum(jnp.sin(fn(x, w, 32)))  # noqa: E731
  g_conv = jax.grad(functools.partial(loss, rapool_net.transposed_conv_as_subpixel),
                    argnums=(0, 1))(jnp.asarray(x), jnp.asarray(kernel))
  g_dot = jax.grad(functools.partial(loss, analyses.subpixel_as_dot),
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
  assert xla_flags.merge_xla_flags("--a=1 --b=2", "--b=3 --c=4") == (
      "--a=1 --b=2 --c=4")
  assert xla_flags.merge_xla_flags("", xla_flags.cpu_xla_flags()) == (
      xla_flags.cpu_xla_flags())
  assert xla_flags.cpu_compiler_options("gpu") == {}
  options = xla_flags.cpu_compiler_options("cpu")
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


def test_benchmark_budget_skips_rows_and_keeps_partial_json(tmp_path,
                                                            monkeypatch):
  out = tmp_path / "bench.json"
  # Each row "takes" 10 s of a 15 s budget. The joint row runs; eval, a kind
  # with no estimate yet, runs in the 5 s left; then the segmentation row
  # (a train row: 10 s) and the analysis (1.5x that) would not end in time.
  monkeypatch.setattr(timing, "Budget", TenSecondPieces)
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
  assert analyses.conv_ops(hlo) == [
      "f32[4,2,2,2048]{3,2,1,0} window={size=2x2 rhs_reversal=1x1} "
      "dim_labels=01fb_o01i->f01b",
      "bf16[256,56,56,64]{3,2,1,0} window={size=3x3 pad=1_1x1_1} "
      "dim_labels=b01f_o01i->b01f __cudnn$convForward"]


def test_input_pipeline_throughput_runs_both_paths():
  config = runners.make_config(benchmark.SIZES["tiny"], "float32")
  out = analyses.input_pipeline_throughput(config, batch=4, steps=3)
  assert out["device_augment_img_per_s"] > 0
  assert out["host_stream_img_per_s"] > 0
  assert out["num_examples"] == 16


def test_run_gpu_rejects_an_unknown_part_before_installing(tmp_path):
  script = pathlib.Path(__file__).parents[1] / "benchmarks" / "run_gpu.sh"
  out = tmp_path / "out"
  proc = subprocess.run(["bash", str(script), str(out), "10", "variants",
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
  for name in analyses.JOINT_VARIANTS:
    assert joint[name]["img_per_s"] > 0, name
  assert joint["hash_dropout"]["systems_overrides"] == {"dropout_rng": "hash"}
  assert joint["default_layout"]["systems_overrides"] == {
      "state_layout": "default"}
  assert joint["no_dropout"]["model_overrides"] == {"dropout_rate": 0.0}
  assert joint["dropout_time_share"] == pytest.approx(
      1 - joint["project"]["img_per_s"] / joint["no_dropout"]["img_per_s"])
  # The seg loss passed in as a constant: XLA drops the upsampling and the
  # pixel CE.
  assert joint["no_seg_loss"]["gflop_vs_project"] < 1
  assert set(result["analysis"]) == set(benchmark.ANALYSIS_PIECES)
  if with_torch:
    # Each variant's ratio pairs its blocks with the torch blocks of the
    # same rounds, timed among the variants, as a row's ratio is.
    torch_rates = joint["torch_reference"]["img_per_s_repeats"]
    for name in analyses.JOINT_VARIANTS:
      per_round = [j / t for j, t in zip(joint[name]["img_per_s_repeats"],
                                         torch_rates)]
      assert joint[name]["vs_torch"]["median"] == pytest.approx(
          np.median(per_round), rel=1e-3)
    assert "within_noise" in joint["project_vs_row"]


def test_input_pipeline_without_grain_keeps_the_device_figure(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "grain", None)   # import grain fails
  config = runners.make_config(benchmark.SIZES["tiny"], "float32")
  out = analyses.input_pipeline_throughput(config, batch=4, steps=2,
                                           log=lambda *_: None)
  assert out["device_augment_img_per_s"] > 0
  assert out["host_stream_img_per_s"] is None
  assert "grain" in out["host_stream_skipped"]


def test_a_failing_analysis_piece_does_not_cost_the_others(monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("cuDNN said no")
  monkeypatch.setattr(analyses, "joint_step_variants", broken)
  monkeypatch.setattr(analyses, "upsample_analysis",
                      lambda *a, **k: {"stub": True, **{
                          n: {"forward_gflop": 0.0, "forward_ms": 0.0,
                              "forward_backward_ms": 0.0,
                              "forward_hlo_convolutions": [],
                              "max_abs_diff_vs_subpixel": 0.0}
                          for n in analyses.UPSAMPLE_IMPLS},
                          "dense_zero_stuffed_gflop": 0.0})
  monkeypatch.setattr(analyses, "input_pipeline_throughput",
                      lambda *a, **k: {"device_augment_img_per_s": 1.0,
                                       "host_stream_img_per_s": None})
  job = benchmark.Job(benchmark.SIZES["tiny"], "float32", "recommended",
                      with_torch=False, torch_compile="off",
                      log=lambda *_: None)
  result = {"results": [], "errors": []}
  benchmark.run_analysis(result, job)
  assert result["errors"] == [{"step": "analysis/joint_step_variants",
                               "error": "RuntimeError: cuDNN said no"}]
  assert result["analysis"]["upsample_alone"]["stub"]
  assert result["analysis"]["input_pipeline"]["device_augment_img_per_s"] == 1
  assert "joint_step_variants" not in result["analysis"]


@pytest.mark.parametrize("donate", [True, False])
def test_donate_state_decides_whether_the_step_consumes_its_state(donate):
  config = runners.make_config(benchmark.SIZES["tiny"], "float32")
  config.systems.donate_state = donate
  step, state, idxs, key, split, mesh = runners.train_step_program(
      config, "joint", 4)
  step_fn = runners.lower_train_step(config, step, state,
                                     (idxs[0], key, split), mesh).compile()
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
  on_backend = runners.cost(lowered, None)["gflop_per_step"]
  assert on_backend == pytest.approx(2 * 8 * 16 * 4 / 1e9, rel=0.2)
  plugin_like = _LoweredWithoutCostAnalysis(lowered)
  assert runners.cost(plugin_like, None)["gflop_per_step"] == on_backend
