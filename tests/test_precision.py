"""The precision plan on GPUs and CPUs, data-sheet peaks, and bf16 training against fp32."""
from __future__ import annotations


import pytest
import torch

from nanogpt import GPT, GPTConfig
from nanogpt.data import RandomBatches
from nanogpt.evaluate import evaluate_full
from nanogpt.precision import Precision, default_peak_flops, precision_plan, resolve_dtype
from nanogpt.train import TrainConfig, set_up, train
from train_helpers import TINY, needs_cuda


@pytest.mark.parametrize("gpu,dtype,peak", [
    ("NVIDIA A100-SXM4-80GB", torch.float32, 156e12),   # fp32 runs on TF32 tensor cores
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.5e12),
    ("NVIDIA H200", torch.float16, 989.5e12),
    ("Tesla T4", torch.float16, 65e12),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756.5e12),      # the PCIe card is slower than the SXM one
    ("NVIDIA H100 NVL", torch.float32, 417.5e12),
    ("NVIDIA H200 NVL", torch.bfloat16, 835.5e12),      # an H200 has the compute of the H100 of its form
    ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165.2e12),
    ("Tesla V100-SXM2-16GB", torch.float16, None),      # unknown: the caller passes a measured peak
])
def test_default_peak_flops_reads_the_data_sheet_table(gpu, dtype, peak, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: gpu)
    assert default_peak_flops("cuda", dtype) == peak
    assert default_peak_flops("cpu", torch.float32) is None


def _pretend_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    # Every GPU says yes when emulation counts, as CUDA does for a T4.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability >= (8, 0))


@pytest.mark.parametrize("name,capability,expected,peak", [
    ("Tesla T4", (7, 5), Precision(torch.float16, use_scaler=True, tf32=False), 65e12),
    ("NVIDIA A100-SXM4-40GB", (8, 0), Precision(torch.bfloat16, use_scaler=False, tf32=True), 312e12),
    ("NVIDIA H100 80GB HBM3", (9, 0), Precision(torch.bfloat16, use_scaler=False, tf32=True), 989.5e12),
])
def test_precision_plan_on_gpus(monkeypatch, name, capability, expected, peak):
    _pretend_gpu(monkeypatch, name, capability)
    plan = precision_plan("cuda")
    assert plan[:3] == expected[:3] and plan.reason  # dtype, scaler, TF32; and a reason to print
    assert resolve_dtype("cuda") == expected.dtype
    assert default_peak_flops("cuda", plan.dtype) == peak
    # An explicit dtype wins; fp16 always comes with the scaler; TF32 follows the GPU.
    assert precision_plan("cuda", "float16")[:3] == (torch.float16, True, expected.tf32)
    assert precision_plan("cuda", "float32")[:3] == (torch.float32, False, expected.tf32)
    # set_up applies the plan: the scaler, the TF32 switches and the MFU peak.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        setup = set_up(TrainConfig(device="cuda"))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (expected.tf32,) * 2
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert setup.precision == plan
    assert setup.scaler.is_enabled() == expected.use_scaler
    assert setup.peak_flops == peak


@pytest.mark.parametrize("flags, width, expected", [
    ({"amx_bf16"}, 384, torch.bfloat16),     # AMX: bf16 at every width
    ({"amx_bf16"}, 64, torch.bfloat16),
    ({"avx512_bf16"}, 384, torch.bfloat16),  # AVX512-BF16 alone: from CPU_BF16_MIN_WIDTH
    ({"avx512_bf16"}, None, torch.bfloat16), # width unknown: the units decide
    ({"avx512_bf16"}, 128, torch.float32),   # narrower: not known to pay there
    (set(), 384, torch.float32),             # no bf16 units: bf16 would be emulated, slowly
    (set(), 128, torch.float32),
])
def test_precision_plan_on_cpu(monkeypatch, flags, width, expected):
    import nanogpt.precision as T

    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: bool(flags))
    monkeypatch.setattr(T, "cpu_flags", lambda: {"avx512f", *flags})
    plan = precision_plan("cpu", width=width)
    assert (plan.dtype, plan.use_scaler, plan.tf32) == (expected, False, False)
    assert plan.reason.startswith("bf16" if expected == torch.bfloat16 else "fp32")
    assert resolve_dtype("cpu", "auto", width) == expected
    assert set_up(TrainConfig(device="cpu"), width).precision == plan
    # An explicit dtype wins on every CPU.
    assert precision_plan("cpu", "float32", width).dtype == torch.float32
    assert precision_plan("cpu", "bfloat16", width).dtype == torch.bfloat16
    assert precision_plan("cpu", "float16", width).use_scaler


@pytest.mark.slow
def test_bf16_training_matches_fp32_within_a_hundredth():
    # The same seeds, data and steps in fp32 and with bf16 autocast, scored on the whole
    # validation split in fp32: bf16's rounding must not cost the model its loss.
    from nanogpt.presets import prepare_char_data

    data = prepare_char_data()
    config = GPTConfig(block_size=32, vocab_size=data.tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=64)
    val = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = GPT(config)
        cfg = TrainConfig(max_iters=1000, batch_size=16, learning_rate=3e-3, warmup_iters=20, eval_interval=1000,
                          eval_iters=1, device="cpu", dtype=dtype)
        train(model, RandomBatches(data.train, 16, 32, seed=3), {"val": RandomBatches(data.val, 16, 32, seed=2)},
              cfg, progress=False)
        val[dtype] = evaluate_full(model, data.val[:20_000], 32)
    assert val["float32"] < 2.2  # past the bigram plateau (2.5), where small differences decide when it escapes
    assert abs(val["bfloat16"] - val["float32"]) < 0.01, val


@pytest.mark.parametrize("capability, flags, native", [
    ("AVX512", {"avx512f", "avx512_bf16"}, True),
    ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, True),
    ("AVX512", {"avx512f"}, False),          # AVX-512 without bf16 instructions
    ("AVX2", {"avx2", "avx512_bf16"}, False),  # torch told to use its AVX2 kernels
    ("DEFAULT", set(), False),
])
def test_cpu_has_native_bf16_reads_capability_and_flags(monkeypatch, capability, flags, native):
    import nanogpt.precision as T

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(T, "cpu_flags", lambda: flags)
    assert T.cpu_has_native_bf16() is native




@needs_cuda
def test_precision_plan_on_this_gpu():
    native_bf16 = torch.cuda.get_device_capability() >= (8, 0)
    plan = precision_plan("cuda")
    assert plan.dtype == (torch.bfloat16 if native_bf16 else torch.float16)
    assert plan.use_scaler == (not native_bf16)


@pytest.mark.parametrize("device_type,platform,triton,capability,requested,expected,reason", [
    ("cuda", "linux", True, (9, 0), None, True, "torch.compile"),
    ("cuda", "linux", False, (9, 0), None, False, "Triton, which is not installed"),
    ("cuda", "win32", True, (8, 6), None, False, "does not run on Windows"),
    ("cuda", "linux", True, (6, 1), None, False, "compute capability 7.0 or newer"),
    ("cpu", "linux", True, None, None, False, "on CUDA GPUs only"),
    ("cpu", "linux", True, None, True, True, "as requested"),
    ("cuda", "linux", True, (9, 0), False, False, "eager, as requested"),
])
def test_compile_is_on_by_default_where_triton_can_run(monkeypatch, device_type, platform, triton, capability,
                                                       requested, expected, reason):
    import nanogpt.runtime as R

    monkeypatch.setattr(R.sys, "platform", platform)
    monkeypatch.setattr(R.importlib.util, "find_spec", lambda name, *a: object() if triton else None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    use, why = R.compile_plan(device_type, requested)
    assert use is expected and reason in why


@pytest.mark.parametrize("fp32_ms,bf16_ms,expected", [
    (30.0, 20.0, torch.bfloat16),   # 1.5x: bf16 pays
    (30.0, 29.0, torch.float32),    # 1.03x: within the noise, fp32 is exact
    (30.0, 45.0, torch.float32),    # bf16 slower (small heads, casts)
])
def test_auto_on_a_cpu_with_bf16_units_takes_the_faster_precision_as_timed(monkeypatch, fp32_ms, bf16_ms, expected):
    import nanogpt.precision as P

    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})  # the static rule says bf16
    timed = []

    def time_step(dtype):
        timed.append(dtype)
        return (fp32_ms if dtype == torch.float32 else bf16_ms) / 1000

    plan = precision_plan("cpu", time_step=time_step)
    assert plan.dtype == expected and sorted(map(str, timed)) == ["torch.bfloat16", "torch.float32"]
    assert f"{bf16_ms:.1f} ms in bf16 and {fp32_ms:.1f} ms in fp32" in plan.reason and plan.timed
    forced = precision_plan("cpu", "float32", time_step=time_step)
    assert forced.dtype == torch.float32 and not forced.timed  # forced: no timing
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert precision_plan("cpu", time_step=lambda dtype: pytest.fail("no bf16 units: nothing to time")).dtype == torch.float32


def test_the_step_timer_leaves_the_model_and_the_random_state_alone():
    from nanogpt.precision import cpu_step_timer

    torch.manual_seed(0)
    model = GPT(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    seconds = cpu_step_timer(model, batch_size=2, steps=2)(torch.float32)
    assert seconds > 0 and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert type(model.transformer.drop) is torch.nn.Dropout  # the copy was tuned, not the model
    assert cpu_step_timer(torch.nn.Linear(2, 2), batch_size=2) is None  # no GPT config: nothing to time
