"""Presets: one registry, and the plan printed before a run (with mocked GPUs)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import nanogpt
from nanogpt import model as model_module
from nanogpt import presets as P
from nanogpt.presets import PRESETS, describe_plan, plan_run, resolve_preset, run_config, train_preset


def test_one_registry_with_the_three_runs():
    assert nanogpt.PRESETS is PRESETS
    assert set(PRESETS) == {"shakespeare-char", "shakespeare-char-cpu", "gpt2"}
    assert not hasattr(model_module, "PRESETS") and not hasattr(P, "RUN_PRESETS")
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert isinstance(preset.model, nanogpt.GPTConfig) and isinstance(preset.train, nanogpt.train.TrainConfig)


def test_shakespeare_char_is_the_videos_model_with_nanogpts_recipe_cut_to_its_best():
    p = PRESETS["shakespeare-char"]
    m, t = p.model, p.train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout, m.attn_dropout) == (6, 6, 384, 256, 0.2, 0.2)
    assert (t.max_iters, t.batch_size, t.learning_rate, t.min_lr, t.warmup_iters, t.lr_decay_iters) == (
        2000, 64, 1e-3, 1e-4, 100, 2000)
    assert (t.beta2, t.eval_interval, t.eval_iters, t.time_budget_s, t.keep_best) == (0.99, 250, 50, None, True)


def test_cpu_preset_runs_by_the_clock_without_a_step_sentinel():
    t = PRESETS["shakespeare-char-cpu"].train
    assert t.max_iters is None and t.time_budget_s == 600


def fixed_step_time(monkeypatch, seconds: dict):
    """cpu_step_timer, as size_for_budget calls it, times a step at ``seconds[dtype]``."""
    monkeypatch.setattr(P, "cpu_step_timer", lambda model, batch_size, steps=3: lambda dtype: seconds[dtype])
    monkeypatch.setattr(P, "precision_plan", lambda device_type, requested, width, time_step=None:
                        P.Precision(torch.float32 if requested in ("auto", "float32") else torch.bfloat16, False, False, ""))


@pytest.mark.parametrize("step_s,layers,why", [
    (0.030, 5, "5 layers: 20,000 steps of the 5-layer model fit 600 s here (30.0 ms a step, fp32), at least the 16,000"),
    (0.050, 4, "4 layers: 12,000 steps of the 5-layer model fit 600 s here (50.0 ms a step, fp32), under the 16,000 "
               "that 5 layers need"),
])
def test_the_cpu_preset_takes_fewer_layers_where_fewer_steps_fit(monkeypatch, step_s, layers, why):
    fixed_step_time(monkeypatch, {torch.float32: step_s})
    preset = PRESETS["shakespeare-char-cpu"]
    config, words = P.size_for_budget(preset, "cpu", 65)
    assert config == replace(preset.model, vocab_size=65, n_layer=layers)
    assert words.startswith(why)


def test_a_depth_table_starts_at_the_models_depth_and_covers_every_rate():
    cpu = PRESETS["shakespeare-char-cpu"]
    for depths in (((4, 16_000), (3, 0)), ((5, 16_000), (4, 100)), ((5, 100), (6, 0))):
        with pytest.raises(ValueError, match="depths must start at the model's 5 layers"):
            replace(cpu, depths=depths)


def test_only_a_cpu_run_with_a_time_budget_and_a_depth_table_is_sized(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("nothing to time")

    monkeypatch.setattr(P, "cpu_step_timer", never)
    cpu = PRESETS["shakespeare-char-cpu"]
    assert P.size_for_budget(cpu, "cuda", 65) == (replace(cpu.model, vocab_size=65), "")
    assert P.size_for_budget(PRESETS["shakespeare-char"], "cpu", 65) == (PRESETS["shakespeare-char"].model, "")
    fixed = replace(cpu, train=replace(cpu.train, max_iters=100, time_budget_s=None))
    assert P.size_for_budget(fixed, "cpu", 65)[1] == ""
    assert ("  depth     5 layers if 16,000 of their steps fit the budget, else 4: timed before the first step"
            in describe_plan(cpu, "cpu"))
    assert "depth" not in describe_plan(cpu, "cpu", max_iters=50)


def test_a_sized_run_keeps_its_choice_in_the_checkpoint_and_a_resume_keeps_the_model(monkeypatch, tmp_path):
    import nanogpt.train
    from nanogpt.checkpoint import read_checkpoint
    from nanogpt.presets import CharData
    from nanogpt.tokenizer import CharTokenizer

    text = "to be or not to be, that is the question. " * 40
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text))
    data = CharData(tok, ids[:1500], ids[1500:])
    cpu = PRESETS["shakespeare-char-cpu"]
    tiny = replace(cpu, model=replace(cpu.model, n_layer=3, n_embd=16, n_head=2, block_size=8),
                   train=replace(cpu.train, time_budget_s=0.2, warmup_iters=2, eval_interval=10, batch_size=4),
                   depths=((3, 100), (2, 0)))
    fixed_step_time(monkeypatch, {torch.float32: 0.004})  # 50 steps of 3 layers fit: under 100, so 2 layers
    ticks = iter(range(10**6))
    monkeypatch.setattr(nanogpt.train, "clock", lambda: next(ticks) * 0.005)
    model, history, _ = train_preset(tiny, device="cpu", data=data, out_dir=tmp_path, progress=False, eval_iters=2)
    assert model.config.n_layer == 2
    assert history.notes == ["2 layers: 50 steps of the 3-layer model fit 0.2 s here (4.0 ms a step, fp32), "
                             "under the 100 that 3 layers need"]
    state = read_checkpoint(tmp_path / "ckpt.pt")
    assert state["model_spec"]["config"]["n_layer"] == 2 and state["history"]["notes"] == history.notes
    fixed_step_time(monkeypatch, {torch.float32: 0.001})  # now 3 layers would fit, but a resume keeps its model
    resumed, again, _ = train_preset(tiny, device="cpu", data=data, out_dir=tmp_path, resume=True, progress=False,
                                     eval_iters=2)
    assert resumed.config.n_layer == 2 and again.notes == history.notes


def test_gpt2_is_build_nanogpts_recipe():
    p = PRESETS["gpt2"]
    m, t = p.model, p.train
    assert (m.block_size, m.vocab_size, m.n_layer, m.n_head, m.n_embd, m.dropout) == (1024, 50304, 12, 12, 768, 0.0)
    assert t.batch_size * m.block_size * t.grad_accum_steps == 2**19 == 524_288
    assert (t.learning_rate, t.min_lr, t.warmup_iters, t.max_iters, t.lr_decay_iters) == (6e-4, 6e-5, 715, 19073, 19073)
    assert (t.beta2, t.weight_decay) == (0.95, 0.1)
    assert p.dataset == "fineweb-edu"


def test_resolve_preset_swaps_to_the_cpu_size_only_when_the_device_was_not_chosen():
    preset, note = resolve_preset("shakespeare-char", "cpu")
    assert preset.name == "shakespeare-char-cpu" and "pass --device cpu" in note
    assert resolve_preset("shakespeare-char", "cpu", explicit_device=True) == (PRESETS["shakespeare-char"], None)
    assert resolve_preset("shakespeare-char", "cuda") == (PRESETS["shakespeare-char"], None)
    assert resolve_preset("gpt2", "cpu") == (PRESETS["gpt2"], None)
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose from shakespeare-char"):
        resolve_preset("nope", "cpu")


def test_run_config_applies_a_step_count_in_place_of_the_time_budget():
    cfg = run_config(PRESETS["shakespeare-char-cpu"], device="cpu", max_iters=40, eval_iters=3)
    assert (cfg.max_iters, cfg.lr_decay_iters, cfg.time_budget_s, cfg.eval_iters) == (40, 40, None, 3)
    assert cfg.warmup_iters == 4 and cfg.eval_interval == 40 and cfg.device == "cpu"
    assert run_config(PRESETS["shakespeare-char"], device="cuda").max_iters == 2000


def test_train_preset_refuses_a_dataset_it_cannot_prepare():
    with pytest.raises(ValueError, match="preset 'gpt2' trains on 'fineweb-edu', which train_preset cannot prepare"):
        train_preset(PRESETS["gpt2"], device="cpu")


# --- the plan -----------------------------------------------------------------------------

def flops_per_token(n_layer: int, n_embd: int, vocab: int, T: int) -> int:
    """Independent count for a GPT-2-style model with biases and a tied head: 6N + 12·L·C·T,
    N without the position table."""
    per_block = 12 * n_embd**2 + 13 * n_embd  # qkv, proj, 4x MLP (weights + biases), two LayerNorms
    n = vocab * n_embd + n_layer * per_block + 2 * n_embd  # token table, blocks, final LayerNorm
    return 6 * n + 12 * n_layer * n_embd * T


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    """Make torch report ``name`` as the CUDA device (T4s say bf16 works, by emulation only)."""
    native_bf16 = capability >= (8, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native_bf16 or including_emulation)


def test_plan_on_a_cpu_counts_tokens_and_flop_and_leaves_the_time_to_a_measurement():
    plan = describe_plan(PRESETS["shakespeare-char"], "cpu", max_iters=100, eval_iters=2)
    fpt = flops_per_token(6, 384, 65, 256)
    assert f"{fpt:,} FLOP per token" in plan
    n_params = 65 * 384 + 256 * 384 + 6 * (12 * 384**2 + 13 * 384) + 2 * 384  # tables, blocks, final LayerNorm
    assert f"{n_params:,} parameters (6 layers, 6 heads, 384 wide, context 256)" in plan
    assert f"100: {100 * 64 * 256:,} tokens, {fpt * 100 * 64 * 256:.3g} FLOP" in plan
    assert "time      measured: the first 20 steps are timed" in plan and "assumed" not in plan
    assert "compile   eager: torch.compile is on by default on CUDA GPUs only" in plan


def test_plan_for_a_time_budget_says_the_timing_decides():
    numbers = plan_run(PRESETS["shakespeare-char-cpu"], "cpu")
    assert numbers.train_flop is None and numbers.evaluations is None
    plan = describe_plan(PRESETS["shakespeare-char-cpu"], "cpu")
    assert ("about 600 s of training: the steps that fit, counted from the time of the first 100 and re-timed at "
            "10% and 50%") in plan
    assert "6 x 128 = 768 tokens per step" in plan and "steps     " not in plan


@pytest.mark.parametrize("gpu,capability,peak", [
    ("Tesla T4", (7, 5), 65e12),                   # fp16 tensor cores
    ("NVIDIA A100-SXM4-40GB", (8, 0), 312e12),     # bf16
    ("NVIDIA H100 80GB HBM3", (9, 0), 989.5e12),   # bf16
])
def test_the_plan_on_a_gpu_names_its_peak_for_mfu_and_compiles(monkeypatch, gpu, capability, peak):
    fake_gpu(monkeypatch, gpu, capability)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "triton" else None)
    plan = describe_plan(PRESETS["shakespeare-char"], "cuda")
    assert plan_run(PRESETS["shakespeare-char"], "cuda").peak_flops == peak
    assert f"MFU against {gpu}'s {peak / 1e12:,.0f} TFLOP/s data-sheet peak" in plan
    assert "compile   torch.compile" in plan and "assumed" not in plan and "minutes" not in plan


def test_plan_on_an_unlisted_gpu_says_why_there_is_no_estimate(monkeypatch):
    fake_gpu(monkeypatch, "Tesla V100-SXM2-16GB", (7, 0))
    plan = describe_plan(PRESETS["shakespeare-char"], "cuda")
    assert "no data-sheet peak for Tesla V100-SXM2-16GB" in plan


def test_train_preset_calls_on_eval_after_every_loss_estimate():
    from nanogpt.presets import CharData
    from nanogpt.tokenizer import CharTokenizer

    text = "to be or not to be, that is the question. " * 40
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text))
    data = CharData(tok, ids[:1500], ids[1500:])
    small = replace(PRESETS["shakespeare-char-cpu"],
                    model=replace(PRESETS["shakespeare-char-cpu"].model, n_layer=1, n_embd=16, n_head=2, block_size=8),
                    train=replace(PRESETS["shakespeare-char-cpu"].train, eval_interval=10, batch_size=4), depths=())
    seen = []
    train_preset(small, device="cpu", max_iters=20, data=data, progress=False, eval_iters=2,
                 on_eval=lambda it, losses: seen.append((it, sorted(losses))))
    assert seen == [(0, ["train", "val"]), (10, ["train", "val"]), (20, ["train", "val"])]


def test_the_cpu_run_reloads_its_kept_best_weights(tmp_path):
    """Chapter 06's reload path: the folder gives the weights of the best evaluation."""
    from nanogpt.checkpoint import load_checkpoint

    preset = PRESETS["shakespeare-char-cpu"]
    assert preset.train.keep_best
    short = replace(preset, train=replace(preset.train, eval_interval=10))
    model, history, _ = train_preset(short, device="cpu", max_iters=30, eval_iters=2, out_dir=tmp_path, progress=False)
    loaded, _, state = load_checkpoint(tmp_path)
    assert state["iter"] == history.best_eval["iter"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
