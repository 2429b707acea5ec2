"""Training compute, in numbers: milestones, GPU peaks, and the arithmetic that links them.

Chapter 10 ("the history of compute") uses this module to put the course's own runs on the
same axis as AlexNet, GPT-3 and GPT-4, and to re-check a training plan before spending a
month of CPU time on it.

Units: FLOP (a count of floating-point operations; one multiply-add counts as 2) and FLOP/s
(a rate). "Data-sheet peak" is the vendor's maximum for one precision; real training reaches
a fraction of it, the MFU (model FLOPs utilisation, see ``GPT.estimate_mfu``).

Every figure carries a ``source``. Figures that were not published by the people who
trained the model are marked ``is_estimate=True`` and say whose estimate they are.

Only torch and the standard library are imported, so the file can be copied on its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


from ..bench import measure_matmul_flops
from ..precision import GPU_PEAKS, GPUPeak, datasheet_peak, gpu_peak

SECONDS_PER_DAY = 86_400
PFS_DAY = 1e15 * SECONDS_PER_DAY
"""One petaflop/s-day, 8.64e19 FLOP: the unit of OpenAI's "AI and Compute" (2018)."""

CHINCHILLA_TOKENS_PER_PARAM = 20.0
"""Compute-optimal tokens per parameter, the rule of thumb from Hoffmann et al. (2022)."""

ENGLISH_BYTES_PER_GPT2_TOKEN = 4.0
"""Assumption: ordinary English web text averages about 4 bytes (characters) per GPT-2 token."""

TINY_SHAKESPEARE_CHARS_PER_TOKEN = 3.30
"""Measured in the course: 1,115,394 characters of Tiny Shakespeare are 338,025 GPT-2 tokens."""


# --- milestones -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Milestone:
    """One point on the history-of-compute timeline.

    ``training_flops``, ``n_params`` and ``n_tokens`` are None where no figure is public
    (or, for a dataset, where it makes no sense).
    """

    name: str
    year: int
    kind: str  # "dataset", "model" or "product"
    what: str
    training_flops: float | None
    n_params: float | None
    n_tokens: float | None
    source: str
    is_estimate: bool = False

    @property
    def pfs_days(self) -> float | None:
        """Training compute in petaflop/s-days, or None."""
        return None if self.training_flops is None else self.training_flops / PFS_DAY


MILESTONES: tuple[Milestone, ...] = (
    Milestone(
        name="ImageNet", year=2009, kind="dataset",
        what="Labelled image dataset (3.2M images at publication; the ILSVRC-2012 subset "
             "has 1.2M training images in 1000 classes). Made large-scale supervised vision possible.",
        training_flops=None, n_params=None, n_tokens=None,
        source="Deng et al. 2009, 'ImageNet: A large-scale hierarchical image database', CVPR. "
               "A dataset: no training compute.",
    ),
    Milestone(
        name="AlexNet", year=2012, kind="model",
        what="8-layer CNN (60M parameters) that won ILSVRC-2012; trained for 5-6 days "
             "on two NVIDIA GTX 580 3 GB GPUs.",
        training_flops=4.7e17, n_params=60e6, n_tokens=None,
        source="Model and hardware: Krizhevsky, Sutskever & Hinton 2012, 'ImageNet Classification "
               "with Deep Convolutional Neural Networks', NeurIPS. Compute: ESTIMATE as commonly "
               "quoted (Epoch AI 'Notable AI Models'); OpenAI's 'AI and Compute' (2018) gives "
               "~0.0058 petaflop/s-days, about 5e17. The paper states no FLOP count.",
        is_estimate=True,
    ),
    Milestone(
        name="Transformer (big)", year=2017, kind="model",
        what="Encoder-decoder Transformer, 213M parameters, for WMT14 translation; "
             "3.5 days on 8 NVIDIA P100 GPUs.",
        training_flops=2.3e19, n_params=213e6, n_tokens=None,
        source="Vaswani et al. 2017, 'Attention Is All You Need', NeurIPS, Table 2. ESTIMATE by the "
               "authors: training time x number of GPUs x an assumed sustained fp32 rate per GPU "
               "(not a count of operations).",
        is_estimate=True,
    ),
    Milestone(
        name="GPT-1", year=2018, kind="model",
        what="12-layer decoder-only Transformer (117M parameters) pre-trained on BooksCorpus, "
             "then fine-tuned per task; about a month on 8 GPUs.",
        training_flops=8.6e19, n_params=117e6, n_tokens=None,
        source="Radford et al. 2018, 'Improving Language Understanding by Generative Pre-Training' "
               "(OpenAI). Compute: ESTIMATE, about 1 petaflop/s-day; OpenAI's blog post for the "
               "paper quotes 0.96 pfs-days (~8.3e19).",
        is_estimate=True,
    ),
    Milestone(
        name="GPT-2", year=2019, kind="model",
        what="48-layer decoder-only Transformer (1.5B parameters) trained on WebText (40 GB).",
        training_flops=1.5e21, n_params=1.5e9, n_tokens=None,
        source="Radford et al. 2019, 'Language Models are Unsupervised Multitask Learners' (OpenAI). "
               "Compute: ESTIMATE (third-party, e.g. Epoch AI 'Notable AI Models'); OpenAI "
               "published no training-compute figure.",
        is_estimate=True,
    ),
    Milestone(
        name="GPT-3", year=2020, kind="model",
        what="96-layer decoder-only Transformer (175B parameters) trained on 300B tokens.",
        training_flops=3.14e23, n_params=175e9, n_tokens=300e9,
        source="Brown et al. 2020, 'Language Models are Few-Shot Learners', NeurIPS, Table D.1 "
               "(3.14e23 FLOP, 3640 petaflop/s-days). Published by the authors.",
    ),
    Milestone(
        name="Chinchilla", year=2022, kind="model",
        what="70B-parameter model trained on 1.4T tokens (~20 tokens per parameter) with "
             "Gopher's compute budget; showed models of the day were under-trained.",
        training_flops=5.76e23, n_params=70e9, n_tokens=1.4e12,
        source="Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', "
               "arXiv:2203.15556 (5.76e23 FLOP is the Gopher-sized budget it was sized for; "
               "6*N*D gives 5.9e23). Published by the authors.",
    ),
    Milestone(
        name="ChatGPT", year=2022, kind="product",
        what="Chat assistant fine-tuned (with RLHF) from a GPT-3.5-series model; released 30 Nov 2022.",
        training_flops=None, n_params=None, n_tokens=None,
        source="OpenAI 2022, 'Introducing ChatGPT' (blog post). No training compute, parameter "
               "or token count was published.",
    ),
    Milestone(
        name="GPT-4", year=2023, kind="model",
        what="OpenAI's 2023 flagship model; architecture and size not disclosed.",
        training_flops=2.1e25, n_params=None, n_tokens=None,
        source="OpenAI 2023, 'GPT-4 Technical Report' (no compute disclosed). Compute: ESTIMATE "
               "by Epoch AI ('Notable AI Models' database), ~2.1e25 FLOP.",
        is_estimate=True,
    ),
)


def milestone(name: str) -> Milestone:
    """The milestone called ``name`` (case-insensitive)."""
    for m in MILESTONES:
        if m.name.lower() == name.lower():
            return m
    raise KeyError(f"no milestone {name!r}; known: {[m.name for m in MILESTONES]}")


# --- GPU peaks ------------------------------------------------------------------------------


RTX_3070_TI_COURSE_FLOPS = 2.3e13
"""The figure the course's source notes quote for an RTX 3070 Ti (fp32). It is not a rounding
of NVIDIA's data-sheet peak, 2.175e13 (6144 CUDA cores x 2 FLOP per FMA x 1.77 GHz rated
boost), but ~6% above it: what the same cores give at ~1.87 GHz, a clock such cards often hold
above their rated boost. Treat it as "about 22-23 TFLOP/s fp32", not a guarantee."""


# --- arithmetic -----------------------------------------------------------------------------


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def training_flops(n_params: float, n_tokens: float) -> float:
    """Training compute by the 6·N·D rule: 2 FLOP per weight per token forward, 4 backward.

    Ignores the attention-score term; for that, use ``GPT.flops_per_token() * n_tokens``.
    """
    if n_params < 0 or n_tokens < 0:
        raise ValueError("n_params and n_tokens must be non-negative")
    return 6.0 * n_params * n_tokens


def flop_per_day(flops_per_s: float) -> float:
    """FLOP done in 24 hours at a sustained ``flops_per_s`` (2.3e13 → 1.987e18)."""
    return flops_per_s * SECONDS_PER_DAY


def training_days(n_params: float, n_tokens: float, peak_flops: float, mfu: float, n_devices: int = 1) -> float:
    """Days to train N parameters on D tokens (6·N·D) on ``n_devices`` reaching ``mfu`` of ``peak_flops`` each."""
    _check_positive(peak_flops=peak_flops, mfu=mfu, n_devices=n_devices)
    if mfu > 1:
        raise ValueError(f"mfu is a fraction of peak, at most 1, got {mfu}")
    return training_flops(n_params, n_tokens) / (peak_flops * mfu * n_devices) / SECONDS_PER_DAY


def training_cost(days: float, usd_per_hour: float, n_gpus: int = 1) -> float:
    """Rental cost in USD: ``days`` × 24 h × ``usd_per_hour`` per GPU × ``n_gpus``."""
    if days < 0 or usd_per_hour < 0 or n_gpus < 1:
        raise ValueError("days and usd_per_hour must be non-negative and n_gpus at least 1")
    return days * 24.0 * usd_per_hour * n_gpus


def chinchilla_tokens(n_params: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> float:
    """Compute-optimal training tokens for ``n_params`` (Chinchilla rule of thumb, 20 per parameter)."""
    if n_params < 0 or tokens_per_param <= 0:
        raise ValueError("n_params must be non-negative and tokens_per_param positive")
    return n_params * tokens_per_param


def days_to_match(milestone_flops: float | Milestone, flops_per_s: float, mfu: float) -> float:
    """Days one device sustaining ``mfu`` × ``flops_per_s`` needs to do a milestone's training compute.

    ``milestone_flops`` is a FLOP count or a ``Milestone`` with a known compute figure.
    """
    if isinstance(milestone_flops, Milestone):
        if milestone_flops.training_flops is None:
            raise ValueError(f"{milestone_flops.name} has no public training-compute figure")
        milestone_flops = milestone_flops.training_flops
    _check_positive(flops_per_s=flops_per_s, mfu=mfu)
    if milestone_flops < 0:
        raise ValueError("milestone_flops must be non-negative")
    return milestone_flops / (flops_per_s * mfu) / SECONDS_PER_DAY


# --- measuring your own machine -------------------------------------------------------------


# --- re-checking a plan ---------------------------------------------------------------------


@dataclass(frozen=True)
class PlanCheck:
    """A training plan recomputed from its parameter count; see ``recheck_plan``."""

    n_params: float
    n_tokens: float
    text_bytes: float
    flops: float
    days: float
    sustained_flops: float
    claimed_days: float | None = None
    claimed_text_bytes: float | None = None

    @property
    def text_gb(self) -> float:
        """Text needed, in GB (1e9 bytes)."""
        return self.text_bytes / 1e9

    @property
    def text_overestimate(self) -> float | None:
        """How many times larger the claimed text size is than the recomputed one."""
        return None if self.claimed_text_bytes is None else self.claimed_text_bytes / self.text_bytes

    @property
    def days_ratio(self) -> float | None:
        """Claimed days ÷ recomputed days (above 1: the plan is pessimistic)."""
        return None if self.claimed_days is None else self.claimed_days / self.days

    def summary(self) -> str:
        """A few lines for a notebook cell."""
        lines = [
            f"data:    {self.n_tokens / 1e6:,.0f}M tokens -> {self.text_gb:.2f} GB of text",
            f"compute: {self.flops:.3g} FLOP at {self.sustained_flops:.3g} FLOP/s sustained -> {self.days:.1f} days",
        ]
        if self.claimed_text_bytes is not None:
            lines.append(f"claimed text {self.claimed_text_bytes / 1e9:,.0f} GB is {self.text_overestimate:,.0f}x too much")
        if self.claimed_days is not None:
            lines.append(f"claimed {self.claimed_days:g} days vs recomputed {self.days:.1f} days")
        return "\n".join(lines)


def recheck_plan(
    n_params: float,
    measured_flops: float,
    mfu: float,
    bytes_per_token: float = ENGLISH_BYTES_PER_GPT2_TOKEN,
    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
    flops_per_token: float | None = None,
    claimed_days: float | None = None,
    claimed_text_bytes: float | None = None,
) -> PlanCheck:
    """Recompute a plan's data and time from its parameter count.

    Tokens from the Chinchilla rule (``tokens_per_param`` per parameter), text size from
    ``bytes_per_token`` (4.0 for English web text, an assumption; ``TINY_SHAKESPEARE_CHARS_PER_TOKEN``
    = 3.30 measured), compute from 6·N·D, or ``flops_per_token`` × D when given
    (e.g. ``GPT.flops_per_token()``, which adds the attention term), and time from
    ``measured_flops`` (e.g. ``measure_matmul_flops()``) × ``mfu``.

    For the course's example (36.3M parameters, "954 GB of text", "32 days on a work CPU"):
    ``recheck_plan(36.3e6, measured, 0.3, claimed_days=32, claimed_text_bytes=954e9)``.
    """
    _check_positive(n_params=n_params, measured_flops=measured_flops, mfu=mfu, bytes_per_token=bytes_per_token)
    if mfu > 1:
        raise ValueError(f"mfu is a fraction of peak, at most 1, got {mfu}")
    n_tokens = chinchilla_tokens(n_params, tokens_per_param)
    flops = training_flops(n_params, n_tokens) if flops_per_token is None else flops_per_token * n_tokens
    sustained = measured_flops * mfu
    return PlanCheck(
        n_params=n_params,
        n_tokens=n_tokens,
        text_bytes=n_tokens * bytes_per_token,
        flops=flops,
        days=flops / sustained / SECONDS_PER_DAY,
        sustained_flops=sustained,
        claimed_days=claimed_days,
        claimed_text_bytes=claimed_text_bytes,
    )


__all__ = [
    "SECONDS_PER_DAY", "PFS_DAY", "CHINCHILLA_TOKENS_PER_PARAM", "ENGLISH_BYTES_PER_GPT2_TOKEN",
    "TINY_SHAKESPEARE_CHARS_PER_TOKEN", "RTX_3070_TI_COURSE_FLOPS",
    "Milestone", "MILESTONES", "milestone", "GPUPeak", "GPU_PEAKS", "gpu_peak", "datasheet_peak",
    "training_flops", "flop_per_day", "training_days", "training_cost", "chinchilla_tokens",
    "days_to_match", "measure_matmul_flops", "PlanCheck", "recheck_plan",
]
