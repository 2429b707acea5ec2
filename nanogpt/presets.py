"""Named training runs: a model configuration, a training configuration and the data they use.

``PRESETS`` is the one registry of the course's runs. ``train_preset`` is the course's main
job (``python -m nanogpt train``): it prepares the data, builds the
model, trains it and returns everything. ``plan_run`` works out what a run will cost before
it starts (``describe_plan`` says it in words).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .data import DATASETS, RandomBatches, load_text, train_val_split
from .model import GPT, GPTConfig
from .checkpoint import CHECKPOINT_NAME, read_checkpoint
from .precision import Precision, cpu_has_native_bf16, cpu_step_timer, default_peak_flops, precision_plan, short_name
from .runtime import compile_plan, pick_device
from .schedule import CALIBRATION_STEPS, RETIME_AT, calibration_steps, eval_batches
from .tokenizer import CharTokenizer
from .train import History, TrainConfig, train


@dataclass(frozen=True)
class RunPreset:
    """A complete, reproducible training run."""

    name: str
    model: GPTConfig
    train: TrainConfig
    description: str
    dataset: str = "tinyshakespeare"
    # A CPU run with a time budget may take fewer layers where few steps fit: (n_layer, the
    # fewest steps of ``model`` that must fit the budget for it), deepest first (size_for_budget).
    depths: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        layers = [n for n, _ in self.depths]
        if self.depths and (layers[0] != self.model.n_layer or layers != sorted(layers, reverse=True)
                            or self.depths[-1][1] != 0):
            raise ValueError(f"depths must start at the model's {self.model.n_layer} layers, go down, "
                             f"and end with a depth for any rate (0 steps); got {self.depths}")


PRESETS: dict[str, RunPreset] = {
    # The video's model with nanoGPT's recipe (config/train_shakespeare_char.py: lr 1e-3 to 1e-4,
    # batch 64 x 256, exact GELU), cut to where that recipe stops improving. On an H200 (records
    # shakespeare-char-variant-*, 2026-11-30) nanoGPT's 5,000-step cosine overfits this 1 MB corpus
    # from step ~1,250 (best val estimate 1.4809, then 2.13 at step 5,000); with dropout on the
    # attention probabilities too, as nanoGPT has it, the best was 1.459 at step 1,750. So: attention
    # dropout 0.2, and a cosine that ends at step 2,000, so the last weights are about the best (keep_best
    # stays as a safety net). 50 evaluation batches (nanoGPT: 200), as in that study, cost 15% of the
    # training FLOP instead of 60%.
    "shakespeare-char": RunPreset(
        name="shakespeare-char",
        model=GPTConfig(block_size=256, vocab_size=65, n_layer=6, n_head=6, n_embd=384, dropout=0.2,
                        attn_dropout=0.2, gelu="exact"),
        train=TrainConfig(max_iters=2000, batch_size=64, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
                          lr_decay_iters=2000, weight_decay=0.1, beta2=0.99, eval_interval=250, eval_iters=50,
                          keep_best=True),
        description="6 layers, 6 heads, 384 wide, context 256, dropout 0.2 (GPU-sized)",
    ),
    # Sized for a CPU: nanoGPT's suggested CPU model (128 wide) one layer deeper, trained for about
    # ten minutes (the steps that fit, counted from its timed warmup). Chosen by 10-minute races
    # (benchmarks/cpu_race.py, 2 cores). On Intel Xeons with AMX: many small, fast steps win; at lr
    # 3e-3 a context of 128 (batch 6, the same 768 tokens a step) beat 64 and 256; at context 128,
    # lr 3e-3 beat 1e-3 (at 64 they tied); ending the cosine at lr / 100 beat lr / 10; nanoGPT's
    # model (no biases, exact GELU), cheaper a step than GPT-2's, won; bf16 autocast bought a fifth
    # more steps, and with them 5 layers beat 4 and 6. On an AMD EPYC with AVX2 only (fp32, about
    # half the steps): in the same time 4 layers beat 5 (hence ``depths``) and 3; lr 6e-3, batch 4
    # and torch.compile lost. Weight decay 0.5 beat 0.1 by 0.013 on average over five pairs of runs,
    # each pair sharing a seed (three pairs better, two within 0.004 worse; one setting's seeds
    # spread by up to 0.044): the model sees its 1M characters about ten times, and regularisation
    # pays. 0.5 was not raced on the AMX machine.
    # The best val estimate's weights are kept (the last or nearly, in practice).
    "shakespeare-char-cpu": RunPreset(
        name="shakespeare-char-cpu",
        model=GPTConfig(block_size=128, vocab_size=65, n_layer=5, n_head=4, n_embd=128, dropout=0.0, bias=False,
                        gelu="exact"),
        train=TrainConfig(max_iters=None, time_budget_s=600, batch_size=6, learning_rate=3e-3, min_lr=3e-5,
                          warmup_iters=100, weight_decay=0.5, beta2=0.99, eval_interval=1000, eval_iters=100,
                          keep_best=True),
        description="5 layers or, on a slow CPU, 4; 4 heads, 128 wide, context 128, no biases, batch 6, "
                    "10 minutes (CPU-sized)",
        # Raced: where about 21,000 steps of 5 layers fit (AMX, bf16), 5 layers beat 4 and 6; where
        # about 10,300 fit (AVX2, fp32), 4 layers in the same time (12,707 steps) beat 5. 16,000 lies between.
        depths=((5, 16_000), (4, 0)),
    ),
    # GPT-2 small (124M) as build-nanogpt trains it: 2**19 = 524,288 tokens per step (64 x 1,024
    # tokens, 8 micro-steps on one GPU), 19,073 steps = one pass over FineWeb-Edu's 10B-token
    # sample. The vocabulary is padded from 50,257 to 50,304 (a multiple of 128) for speed.
    # Its token shards come from nanogpt.data.tokenize_to_shards; train_preset does not prepare them.
    "gpt2": RunPreset(
        name="gpt2",
        model=GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768, dropout=0.0),
        train=TrainConfig(max_iters=19073, batch_size=64, grad_accum_steps=8, learning_rate=6e-4, min_lr=6e-5,
                          warmup_iters=715, lr_decay_iters=19073, weight_decay=0.1, beta2=0.95,
                          eval_interval=250, eval_iters=20),
        description="GPT-2 small: 12 layers, 12 heads, 768 wide, context 1024 (build-nanogpt's 10B-token run)",
        dataset="fineweb-edu",
    ),
}


def resolve_preset(name: str, device: str, *, explicit_device: bool = False) -> tuple[RunPreset, str | None]:
    """The preset to run on ``device``, and a note when it was swapped for the CPU-sized one.

    ``shakespeare-char`` on a CPU picked by ``--device auto`` becomes ``shakespeare-char-cpu``;
    asking for the CPU explicitly keeps the full size.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    cpu_name = f"{name}-cpu"
    if device == "cpu" and not explicit_device and cpu_name in PRESETS:
        note = (f"no GPU found: running the CPU-sized preset {cpu_name!r} ({PRESETS[cpu_name].description}); "
                f"pass --device cpu to train the full {name!r} model on the CPU anyway")
        return PRESETS[cpu_name], note
    return PRESETS[name], None


def run_config(preset: RunPreset, *, device: str, max_iters: int | None = None,
               eval_iters: int | None = None) -> TrainConfig:
    """The training configuration ``train_preset`` uses: the preset's, with the overrides applied.

    ``max_iters`` fixes the number of steps: the schedule follows it, and a preset's time
    budget no longer applies.
    """
    cfg = replace(preset.train, device=device)
    if max_iters is not None:
        cfg = replace(cfg, max_iters=max_iters, lr_decay_iters=max_iters, time_budget_s=None,
                      warmup_iters=min(cfg.warmup_iters, max(1, max_iters // 10)),
                      eval_interval=min(cfg.eval_interval, max(1, max_iters)))
    if eval_iters is not None:
        cfg = replace(cfg, eval_iters=eval_iters)
    return cfg


# --- the plan printed before a run --------------------------------------------------------

EVAL_SPLITS = 2  # train_preset estimates the loss on the train and val splits


@dataclass(frozen=True)
class RunPlan:
    """What a run will do and cost, worked out before it starts (for one process).

    FLOP are ``GPT.flops_per_token`` times tokens; an evaluation batch is a forward pass only,
    about a third of a training step's FLOP per token. With a time budget (``max_iters`` None)
    the number of steps, and so the FLOP, are unknown until the run ends.
    """

    preset: RunPreset
    device: str
    config: TrainConfig             # the preset's, with the run's overrides
    parameters: int
    flops_per_token: int
    tokens_per_step: int
    eval_batches: int               # batches per split in each loss estimate
    evaluations: int | None         # loss estimates in the run; None with a time budget
    train_flop: float | None
    eval_flop: float | None
    gpu: str | None = None          # the CUDA device's name
    peak_flops: float | None = None  # its data-sheet peak for the dtype training will use
    precision: Precision | None = None  # what dtype="auto" (or the preset's dtype) trains in here
    compile_reason: str = ""        # whether torch.compile is used, and why


def _evaluations(cfg: TrainConfig) -> int:
    """Loss estimates a fixed-length run makes: every ``eval_interval`` steps and at the end."""
    n = cfg.max_iters // cfg.eval_interval + 1
    return n + (1 if cfg.max_iters % cfg.eval_interval else 0)


def plan_run(preset: RunPreset, device: str, max_iters: int | None = None,
             eval_iters: int | None = None) -> RunPlan:
    """The ``RunPlan`` of ``train_preset(preset, device=device, max_iters=..., eval_iters=...)``."""
    cfg = run_config(preset, device=device, max_iters=max_iters, eval_iters=eval_iters)
    with torch.device("meta"):  # sizes only: no memory, no initialisation cost
        model = GPT(preset.model)
    flops_per_token = model.flops_per_token()
    tokens_per_step = cfg.batch_size * preset.model.block_size * cfg.grad_accum_steps
    n_batches = eval_batches(cfg)  # short runs evaluate on fewer batches
    evaluations = train_flop = eval_flop = None
    if cfg.max_iters is not None:
        evaluations = _evaluations(cfg)
        train_flop = flops_per_token * cfg.max_iters * tokens_per_step
        eval_tokens = evaluations * n_batches * EVAL_SPLITS * cfg.batch_size * preset.model.block_size
        eval_flop = flops_per_token / 3 * eval_tokens
    device_type = torch.device(device).type
    precision = precision_plan(device_type, cfg.dtype, preset.model.n_embd)
    gpu = torch.cuda.get_device_name(device) if device_type == "cuda" else None
    peak = default_peak_flops(device_type, precision.dtype, gpu)
    return RunPlan(preset, device, cfg, model.num_params(), flops_per_token, tokens_per_step, n_batches,
                   evaluations, train_flop, eval_flop, gpu, peak, precision, compile_plan(device_type, cfg.compile)[1])


def _sizes_itself(preset: RunPreset, device: str, time_budget_s: float | None) -> bool:
    """Whether a run of ``preset`` picks its depth by timing (``size_for_budget``): a CPU run with
    a time budget, of a preset with ``depths``."""
    return bool(preset.depths) and torch.device(device).type == "cpu" and time_budget_s is not None


def _sizing_lines(preset: RunPreset, device: str, cfg: TrainConfig) -> list[str]:
    """The plan's line on what ``size_for_budget`` may change (none where it changes nothing)."""
    if not _sizes_itself(preset, device, cfg.time_budget_s):
        return []
    rules = ", ".join(f"{n} layers if {least:,} of their steps fit the budget" if least else f"else {n}"
                      for n, least in preset.depths)
    return [f"  depth     {rules}: timed before the first step"]


def describe_plan(preset: RunPreset, device: str, max_iters: int | None = None,
                  eval_iters: int | None = None) -> str:
    """What a run will do, in a few lines: precision, compilation, parameters, steps, tokens, FLOP.

    How long it takes is not guessed here: ``train`` times its first steps on this machine and
    prints the expected total then (``History.expected_seconds``).
    """
    plan = plan_run(preset, device, max_iters, eval_iters)
    cfg, m = plan.config, preset.model
    micro = f"{cfg.grad_accum_steps} x " if cfg.grad_accum_steps > 1 else ""
    timed = torch.device(device).type == "cpu" and cfg.dtype == "auto" and cpu_has_native_bf16()
    precision = ("fp32 or bf16 autocast, whichever trains this model faster here: timed before the first step"
                 if timed else plan.precision.reason)
    lines = [f"plan: {preset.name} on {device}, trained on {preset.dataset}, {precision}",
             f"  compile   {plan.compile_reason}",
             f"  model     {plan.parameters:,} parameters ({m.n_layer} layers, {m.n_head} heads, "
             f"{m.n_embd} wide, context {m.block_size})",
             *_sizing_lines(preset, device, cfg),
             f"  batch     {micro}{cfg.batch_size} x {m.block_size} = {plan.tokens_per_step:,} tokens per step, "
             f"{plan.flops_per_token:,} FLOP per token (GPT.flops_per_token)"]
    if cfg.max_iters is None:  # a run with a time budget: its length is the clock's
        lines += [f"  length    about {cfg.time_budget_s:,.0f} s of training: the steps that fit, counted from "
                  f"the time of the first {calibration_steps(cfg)} and re-timed at "
                  + " and ".join(f"{f:.0%}" for f in RETIME_AT),
                  f"  evaluate  every {cfg.eval_interval:,} steps and at the end, "
                  f"{plan.eval_batches} batches x {EVAL_SPLITS} splits"]
    else:
        lines += [f"  steps     {cfg.max_iters:,}: {cfg.max_iters * plan.tokens_per_step:,} tokens, "
                  f"{plan.train_flop:.3g} FLOP",
                  f"  evaluate  {plan.evaluations} times x {plan.eval_batches} batches x {EVAL_SPLITS} splits: "
                  f"{plan.eval_flop:.3g} FLOP ({plan.eval_flop / max(plan.train_flop, 1):.0%} of training)"]
    if cfg.keep_best:
        lines.append("  keeps     the weights of the lowest val estimate (best.pt), should the corpus be "
                     "overfitted before the schedule ends")
    peak = (f"; MFU against {plan.gpu}'s {plan.peak_flops / 1e12:,.0f} TFLOP/s data-sheet peak" if plan.peak_flops
            else f"; no data-sheet peak for {plan.gpu} in nanogpt.precision.GPU_PEAKS, so no MFU" if plan.gpu else "")
    lines.append(f"  time      measured: the first {CALIBRATION_STEPS} steps are timed, then the expected total "
                 f"is printed{peak}")
    return "\n".join(lines)


# --- training -----------------------------------------------------------------------------

@dataclass
class CharData:
    """A character-level corpus, encoded and split 90/10."""

    tokenizer: CharTokenizer
    train: torch.Tensor  # (N_train,) int64
    val: torch.Tensor    # (N_val,) int64


def prepare_char_data(dataset: str = "tinyshakespeare") -> CharData:
    text = load_text(dataset)
    tokenizer = CharTokenizer.from_text(text)
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train_data, val_data = train_val_split(data)
    return CharData(tokenizer, train_data, val_data)


def size_for_budget(preset: RunPreset, device: str, vocab_size: int) -> tuple[GPTConfig, str]:
    """The model a run of ``preset`` trains on ``device``, and a line that says why ("" if fixed).

    With ``preset.depths``, a CPU run with a time budget times ten training steps of the preset's
    model (in the precision it will train in) and takes the deepest ``n_layer`` whose fewest steps
    fit the budget at that rate: a slow CPU gets a shallower model and more of its steps.
    """
    model_cfg = replace(preset.model, vocab_size=vocab_size)
    if not _sizes_itself(preset, device, preset.train.time_budget_s):
        return model_cfg, ""
    with torch.random.fork_rng(devices=[]):
        timer = functools.cache(cpu_step_timer(GPT(model_cfg), preset.train.batch_size, steps=10))  # once a dtype
    dtype = precision_plan("cpu", preset.train.dtype, model_cfg.n_embd, time_step=timer).dtype
    step_s = timer(dtype)
    budget = preset.train.time_budget_s
    fit = int(budget / step_s)
    chosen = next((i for i, (_, least) in enumerate(preset.depths) if fit >= least), len(preset.depths) - 1)
    n_layer, least = preset.depths[chosen]
    why = (f"{n_layer} layers: {fit:,} steps of the {model_cfg.n_layer}-layer model fit {budget:g} s here "
           f"({step_s * 1000:.1f} ms a step, {short_name(dtype)})")
    if chosen:  # a deeper model needed more steps than fit
        deeper, deeper_least = preset.depths[chosen - 1]
        why += f", under the {deeper_least:,} that {deeper} layers need"
    elif least:
        why += f", at least the {least:,} that {n_layer} layers need"
    return replace(model_cfg, n_layer=n_layer), why


def _resumed_config(out_dir: str | Path | None) -> GPTConfig | None:
    """The model configuration of the run to resume in ``out_dir`` (None without its checkpoint)."""
    path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if path is None or not path.exists():
        return None
    return GPTConfig.from_dict(read_checkpoint(path, ("model_spec",))["model_spec"]["config"])


def train_preset(
    preset: RunPreset,
    *,
    device: str = "auto",
    max_iters: int | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    data: CharData | None = None,
    eval_iters: int | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
) -> tuple[GPT, History, CharData]:
    """Train a character-level ``preset`` and return (model, history, data).

    ``max_iters`` fixes the number of steps (the schedule follows, and a preset's time budget
    no longer applies). A time-budget run of a preset with ``depths`` sizes its model first
    (``size_for_budget``: printed with ``progress``, kept in the history's ``notes``); a resumed
    run keeps its checkpoint's. ``on_eval(iter, losses)`` is called after every loss estimate,
    as in ``nanogpt.train.train``.
    """
    if data is None and preset.dataset not in DATASETS:
        raise ValueError(
            f"preset {preset.name!r} trains on {preset.dataset!r}, which train_preset cannot prepare "
            f"(it trains character-level models on {', '.join(DATASETS)}); build its token shards and call "
            "nanogpt.train.train as chapter 07 does"
        )
    device = pick_device(device)
    data = data or prepare_char_data(preset.dataset)
    cfg = run_config(preset, device=device, max_iters=max_iters, eval_iters=eval_iters)
    model_cfg, why = replace(preset.model, vocab_size=data.tokenizer.vocab_size), ""
    if resume and preset.depths:
        model_cfg = _resumed_config(out_dir) or model_cfg
    elif cfg.time_budget_s is not None:
        model_cfg, why = size_for_budget(preset, device, data.tokenizer.vocab_size)
        if why and progress:
            print(f"model sized for the budget: {why}")
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg)
    T = model_cfg.block_size
    batches = RandomBatches(data.train, cfg.batch_size, T, seed=cfg.seed, device=device)
    evals = {"train": RandomBatches(data.train, cfg.batch_size, T, seed=1, device=device),
             "val": RandomBatches(data.val, cfg.batch_size, T, seed=2, device=device)}
    history = train(model, batches, evals, cfg, out_dir=out_dir, resume=resume,
                    tokenizer=data.tokenizer, progress=progress, on_eval=on_eval, notes=[why] if why else None)
    return model, history, data
