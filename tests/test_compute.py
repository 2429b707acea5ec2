"""Tests for nanogpt.course.compute: the 6ND arithmetic, the sourced tables, the plan re-check."""
from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt.course import compute
from nanogpt.course.compute import (
    GPU_PEAKS,
    MILESTONES,
    PFS_DAY,
    RTX_3070_TI_COURSE_FLOPS,
    TINY_SHAKESPEARE_CHARS_PER_TOKEN,
    Milestone,
    chinchilla_tokens,
    days_to_match,
    flop_per_day,
    gpu_peak,
    measure_matmul_flops,
    milestone,
    recheck_plan,
    training_cost,
    training_days,
    training_flops,
)

# --- 6ND ----------------------------------------------------------------------------------


def test_training_flops_is_six_n_d():
    assert training_flops(1, 1) == 6
    assert training_flops(124e6, 10e9) == pytest.approx(7.44e18)
    assert training_flops(0, 1e9) == 0


def test_six_n_d_agrees_with_the_gpt3_paper():
    gpt3 = milestone("GPT-3")
    rule = training_flops(gpt3.n_params, gpt3.n_tokens)
    assert rule == pytest.approx(3.15e23)
    assert gpt3.training_flops == 3.14e23
    assert rule == pytest.approx(gpt3.training_flops, rel=0.02)
    assert gpt3.pfs_days == pytest.approx(3634, rel=0.01)  # the paper's table says 3640


def test_six_n_d_agrees_with_chinchilla():
    chin = milestone("chinchilla")
    assert training_flops(chin.n_params, chin.n_tokens) == pytest.approx(chin.training_flops, rel=0.03)
    assert chin.n_tokens / chin.n_params == pytest.approx(20, rel=0.01)


def test_training_flops_rejects_negative():
    with pytest.raises(ValueError):
        training_flops(-1, 10)


# --- rates and days -----------------------------------------------------------------------


def test_flop_per_day_for_the_course_gpu():
    assert RTX_3070_TI_COURSE_FLOPS == 2.3e13
    assert flop_per_day(2.3e13) == pytest.approx(1.9872e18)
    assert flop_per_day(1e15) == PFS_DAY == 8.64e19


def test_training_days_and_cost():
    # 6 * 1e9 * 1e12 = 6e21 FLOP at 1e15 * 0.5 FLOP/s -> 1.2e7 s -> 138.9 days
    days = training_days(1e9, 1e12, peak_flops=1e15, mfu=0.5)
    assert days == pytest.approx(6e21 / 5e14 / 86400)
    assert training_days(1e9, 1e12, 1e15, 0.5, n_devices=8) == pytest.approx(days / 8)
    assert training_cost(2, 1.5) == pytest.approx(72.0)
    assert training_cost(2, 1.5, n_gpus=8) == pytest.approx(576.0)
    with pytest.raises(ValueError):
        training_days(1e9, 1e12, 1e15, 1.5)
    with pytest.raises(ValueError):
        training_days(1e9, 1e12, 1e15, 0.0)


def test_chinchilla_tokens_for_the_course_plan():
    assert chinchilla_tokens(36.3e6) == pytest.approx(726e6)
    assert chinchilla_tokens(70e9) == pytest.approx(1.4e12)
    assert chinchilla_tokens(1e6, tokens_per_param=5) == pytest.approx(5e6)


def test_days_to_match_values():
    gpt3 = milestone("GPT-3")
    # one RTX 3070 Ti at the course figure and full utilisation: 3.14e23 / 1.987e18 = 158,000 days
    days = days_to_match(gpt3, RTX_3070_TI_COURSE_FLOPS, 1.0)
    assert days == pytest.approx(3.14e23 / flop_per_day(2.3e13))
    assert 4.3e2 < days / 365.25 < 4.4e2  # about 430 years
    assert days_to_match(gpt3.training_flops, 2.3e13, 0.5) == pytest.approx(2 * days)
    with pytest.raises(ValueError, match="ChatGPT"):
        days_to_match(milestone("ChatGPT"), 1e12, 0.5)


def test_days_to_match_monotonic_over_history():
    known = [m for m in MILESTONES if m.training_flops is not None]
    days = [days_to_match(m, 2.3e13, 0.4) for m in known]
    by_flops = [d for _, d in sorted(zip([m.training_flops for m in known], days))]
    assert by_flops == sorted(by_flops)


@settings(max_examples=50, deadline=None)
@given(
    flops=st.floats(1e10, 1e27),
    rate=st.floats(1e9, 1e16),
    mfu=st.floats(0.01, 1.0),
    factor=st.floats(1.01, 100.0),
)
def test_days_to_match_monotonic_property(flops, rate, mfu, factor):
    base = days_to_match(flops, rate, mfu)
    assert days_to_match(flops * factor, rate, mfu) > base  # more compute: longer
    assert days_to_match(flops, rate * factor, mfu) < base  # faster device: shorter
    assert days_to_match(flops, rate, mfu / factor) > base  # lower utilisation: longer


# --- the tables ---------------------------------------------------------------------------


def test_milestones_sorted_and_sourced():
    years = [m.year for m in MILESTONES]
    assert years == sorted(years)
    names = {m.name for m in MILESTONES}
    assert {"ImageNet", "AlexNet", "Transformer (big)", "GPT-1", "GPT-2", "GPT-3",
            "Chinchilla", "ChatGPT", "GPT-4"} <= names
    for m in MILESTONES:
        assert isinstance(m, Milestone)
        assert len(m.source) > 20, m.name
        if m.training_flops is not None:
            assert m.training_flops > 0 and math.isfinite(m.training_flops)
        if m.is_estimate:
            assert "ESTIMATE" in m.source, m.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        MILESTONES[0].year = 1999  # type: ignore[misc]


def test_milestone_figures():
    assert milestone("ImageNet").training_flops is None
    assert milestone("ChatGPT").training_flops is None
    assert milestone("AlexNet").is_estimate and milestone("AlexNet").training_flops == pytest.approx(4.7e17)
    assert milestone("GPT-1").n_params == 117e6 and milestone("GPT-1").training_flops == 8.6e19
    assert milestone("GPT-2").n_params == 1.5e9 and milestone("GPT-2").training_flops == 1.5e21
    assert milestone("GPT-4").is_estimate and milestone("GPT-4").training_flops == pytest.approx(2.1e25)
    assert not milestone("GPT-3").is_estimate
    # compute grows along the language-model line
    line = [milestone(n).training_flops for n in ("Transformer (big)", "GPT-1", "GPT-2", "GPT-3", "GPT-4")]
    assert line == sorted(line)
    with pytest.raises(KeyError):
        milestone("GPT-5")


def test_gpu_peaks():
    for p in GPU_PEAKS:
        assert p.label == "data-sheet peak"
        assert p.precision in {"fp32", "tf32", "bf16", "fp16"}
        assert len(p.source) > 20
    assert gpu_peak("A100", "bf16") == 312e12
    assert gpu_peak("a100", "TF32") == 156e12
    assert gpu_peak("H100 SXM", "fp32") == 67e12
    assert gpu_peak("T4", "fp16") == 65e12
    # the notes' 2.3e13 is within 10% of the RTX 3070 Ti data sheet's 21.75 TFLOP/s, and above it:
    # not a rounding of the data sheet (which would give 2.2e13), and no source says it is
    assert gpu_peak("RTX 3070 Ti") == pytest.approx(RTX_3070_TI_COURSE_FLOPS, rel=0.10)
    assert gpu_peak("RTX 3070 Ti") < RTX_3070_TI_COURSE_FLOPS
    assert not any("rounds" in p.source for p in GPU_PEAKS)
    assert gpu_peak("RTX 4090", "bf16") == 165.2e12 and gpu_peak("RTX 4090") == 82.6e12
    for gpu in ("A100", "H100 SXM"):
        assert gpu_peak(gpu, "fp32") < gpu_peak(gpu, "tf32") < gpu_peak(gpu, "bf16")
    with pytest.raises(KeyError):
        gpu_peak("T4", "bf16")


# --- measuring ----------------------------------------------------------------------------


def test_measure_matmul_flops_positive_finite():
    rate = measure_matmul_flops(n=64, repeats=3)
    assert rate > 0 and math.isfinite(rate)
    rate64 = measure_matmul_flops(n=32, dtype=torch.float64, repeats=2)
    assert rate64 > 0 and math.isfinite(rate64)
    with pytest.raises(ValueError):
        measure_matmul_flops(n=0)


# --- the plan re-check --------------------------------------------------------------------


def test_recheck_plan_text_size_far_below_954_gb():
    plan = recheck_plan(36.3e6, measured_flops=1e11, mfu=0.3, claimed_days=32, claimed_text_bytes=954e9)
    assert plan.n_tokens == pytest.approx(726e6)
    assert plan.text_bytes == pytest.approx(2.904e9)  # 4 bytes per GPT-2 token
    assert plan.text_gb < 954 / 100  # at least two orders of magnitude below the claim
    assert plan.text_overestimate > 300
    shakespeare = recheck_plan(36.3e6, 1e11, 0.3, bytes_per_token=TINY_SHAKESPEARE_CHARS_PER_TOKEN)
    assert shakespeare.text_gb == pytest.approx(2.3958, rel=1e-3)
    # compute: 6 * 36.3e6 * 726e6 = 1.581e17 FLOP; at 3e10 FLOP/s sustained that is 61 days
    assert plan.flops == pytest.approx(1.5812e17, rel=1e-3)
    assert plan.days == pytest.approx(1.5812e17 / 3e10 / 86400, rel=1e-3)
    assert plan.days_ratio == pytest.approx(32 / plan.days)
    assert "GB" in plan.summary() and "days" in plan.summary()


def test_recheck_plan_uses_model_flops_per_token():
    from nanogpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
    per_token = model.flops_per_token()
    plan = recheck_plan(model.num_params(), 1e10, 0.5, flops_per_token=per_token)
    assert plan.flops == pytest.approx(per_token * plan.n_tokens)
    assert per_token > 6 * (model.num_params() - model.transformer.wpe.weight.numel())


def test_recheck_plan_rejects_bad_inputs():
    with pytest.raises(ValueError):
        recheck_plan(36.3e6, 1e11, 0.3, bytes_per_token=0)
    with pytest.raises(ValueError):
        recheck_plan(36.3e6, -1.0, 0.3)


# --- the module stays light ---------------------------------------------------------------


def test_module_imports_only_torch_and_stdlib():
    import sys

    tree = ast.parse(Path(compute.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots - {"torch"} <= set(sys.stdlib_module_names) | {"__future__"}
    assert set(compute.__all__) <= set(dir(compute))
