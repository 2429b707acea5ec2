"""A next-token model solved in closed form: fixed random features + ridge regression.

No gradients, no optimizer, no training loop. A window of ``context`` tokens is embedded
with fixed vectors (seeded random, or one-hot), concatenated, pushed through a fixed random
tanh layer of K = ``hidden`` units, and only the output layer W is learned, by ridge
regression::

    H = tanh(X @ P + b)            (N, K)   plus a constant-1 column when bias=True
    (HᵀH + λI) W = HᵀY             solved by Cholesky

HᵀH and HᵀY are accumulated over the windows chunk by chunk, in float64 and in a fixed
order, so memory is O(K²) however long the text is, and two fits on the same machine (same
device, thread count and library versions) give bit-identical weights.

The scores s = hW become logits by ``RidgeConfig.readout``: "softmax" (β·s with one fitted
temperature β) or "clipped" (the scores read as probabilities, log of max(s, ε) renormalised),
which changes no weight, only how the scores are used.

Needs only torch, tqdm and the standard library, so it can be copied on its own.
"""
from __future__ import annotations

import hashlib
import math
import os
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

F64 = torch.float64


class RidgeMemoryError(MemoryError):
    """A RidgeLM would need more memory than allowed; raised before anything large is allocated."""


@dataclass
class RidgeConfig:
    """Every choice that defines a RidgeLM. Validated on creation."""

    vocab_size: int
    context: int = 24           # tokens in a window (the model sees exactly this many)
    embed_dim: int = 64         # size of a random token embedding (one-hot: vocab_size instead)
    hidden: int = 1024          # K, random tanh features; memory grows as K²
    ridge_lambda: float = 0.5   # λ in (HᵀH + λI) W = HᵀY
    embedding: str = "random"   # "random": fixed N(0, 1) vectors; "onehot": nothing random
    target: str = "onehot"      # "onehot": regress the next token's one-hot; "embedding": its embedding
    bias: bool = True           # append a constant-1 feature, i.e. an output bias
    seed: int = 0               # seeds the embeddings, projection and biases (and default sampling)
    chunk_size: int = 4096      # windows per chunk when accumulating and evaluating
    readout: str = "softmax"    # "softmax": logits = β·s; "clipped": log of max(s, clip_floor), renormalised
    clip_floor: float = 1e-3    # ε of the clipped-probability readout (one-hot targets only)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "embed_dim", "hidden", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"RidgeConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"RidgeConfig.seed must be a non-negative integer, got {self.seed!r}")
        lam = self.ridge_lambda
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"RidgeConfig.ridge_lambda must be a finite number > 0, got {lam!r}")
        if self.embedding not in ("random", "onehot"):
            raise ValueError(f"RidgeConfig.embedding must be 'random' or 'onehot', got {self.embedding!r}")
        if self.target not in ("onehot", "embedding"):
            raise ValueError(f"RidgeConfig.target must be 'onehot' or 'embedding', got {self.target!r}")
        if self.target == "embedding" and self.embedding == "onehot":
            raise ValueError("RidgeConfig.target='embedding' needs embedding='random' "
                             "(with one-hot embeddings it is the same as target='onehot')")
        if self.readout not in ("softmax", "clipped"):
            raise ValueError(f"RidgeConfig.readout must be 'softmax' or 'clipped', got {self.readout!r}")
        if self.readout == "clipped" and self.target != "onehot":
            raise ValueError("RidgeConfig.readout='clipped' needs target='onehot' "
                             "(only then are the scores estimated probabilities)")
        eps = self.clip_floor
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
            raise ValueError(f"RidgeConfig.clip_floor must be a number in (0, 1), got {eps!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"RidgeConfig.bias must be True or False, got {self.bias!r}")

    @property
    def token_dim(self) -> int:
        """Width of one token's embedding: embed_dim, or vocab_size for one-hot."""
        return self.vocab_size if self.embedding == "onehot" else self.embed_dim

    @property
    def n_features(self) -> int:
        """K', the columns of H: hidden, plus one for the bias column."""
        return self.hidden + int(self.bias)

    @property
    def n_outputs(self) -> int:
        """Columns of Y and W: vocab_size for one-hot targets, embed_dim for embedding targets."""
        return self.vocab_size if self.target == "onehot" else self.embed_dim


@dataclass
class FitStats:
    """What a fit cost. Throughput figures are comparable with the machine's float64 matmul peak."""

    windows: int              # N, training windows (patterns)
    seconds: float            # wall time of the whole fit: features, accumulation, solve, calibration
    patterns_per_s: float     # windows / seconds
    gram_flops: int           # 2·N·K'² for accumulating HᵀH
    gram_seconds: float       # time spent in the HᵀH updates alone
    gram_gflops_per_s: float  # gram_flops / gram_seconds / 1e9


def estimate_memory_bytes(config: RidgeConfig, chunk_size: int | None = None) -> int:
    """Approximate peak bytes of a RidgeLM and its fit, not counting the tokens.

    Dominated, for large K, by 2·K'² float64: the Gram matrix HᵀH and its Cholesky factor.
    """
    cs = chunk_size or config.chunk_size
    C, V, K = config.context, config.vocab_size, config.hidden
    Kp, d_out = config.n_features, config.n_outputs
    params = C * V * K + K                                # per-position table, b
    if config.embedding == "random":
        params += V * config.embed_dim + C * config.embed_dim * K  # embeddings, projection P
    solve = 2 * Kp * Kp + 2 * Kp * d_out                  # HᵀH then its factor; HᵀY and W
    chunk = cs * (K + Kp + d_out + 3 * V + 2 * C)         # pre-activations, H, Y, scores, indices
    return 8 * (params + solve + chunk)


def default_memory_limit_bytes(device: str | torch.device = "cpu") -> int | None:
    """90% of the free memory of a CUDA device; on CPU half the machine's RAM (None if unknown).

    Half of the total RAM, not of what happens to be free, so the same config is accepted or
    refused on every run on the same machine.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.9 * free)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows) or the name is unknown
        return None


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Turn on torch.use_deterministic_algorithms for a block, then restore what was set.

    On CUDA, deterministic matmuls also need CUBLAS_WORKSPACE_CONFIG=:4096:8 in the
    environment before Python starts; torch raises a clear error if it is missing.
    """
    was_on = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=warn_only)


class RidgeLM:
    """Random-feature next-token model whose output layer is fitted by ridge regression.

    ``fit(tokens)`` solves for W; then ``logits``, ``evaluate``/``loss`` and ``generate``
    work like any language model's. All randomness comes from ``config.seed``.
    """

    def __init__(self, config: RidgeConfig, device: str | torch.device = "cpu",
                 memory_limit_bytes: int | None = None):
        """Draw the fixed random parameters; refuse (RidgeMemoryError) if the fit won't fit.

        ``memory_limit_bytes`` defaults to ``default_memory_limit_bytes(device)``. The check
        runs here, before any allocation, because the parameters already grow with K.
        """
        self.config = config
        self.device = torch.device(device)
        needed = estimate_memory_bytes(config)
        limit = default_memory_limit_bytes(self.device) if memory_limit_bytes is None else memory_limit_bytes
        if limit is not None and needed > limit:
            raise RidgeMemoryError(
                f"RidgeLM with hidden K={config.hidden} needs about {needed:,} bytes "
                f"({needed / 2**30:.2f} GiB, mostly 2·K'² float64 for HᵀH and its Cholesky factor) "
                f"but the limit is {limit:,} bytes ({limit / 2**30:.2f} GiB). Lower hidden or "
                f"chunk_size, or pass a larger memory_limit_bytes."
            )
        C, V, D, K = config.context, config.vocab_size, config.embed_dim, config.hidden
        # Drawn on the CPU in float64 so every device gets exactly the same parameters.
        g = torch.Generator().manual_seed(config.seed)
        if config.embedding == "random":
            embed = torch.randn(V, D, generator=g, dtype=F64)                         # (V, D)
            # pre-activations get unit variance: x has C·D entries of variance 1
            proj = torch.randn(C * D, K, generator=g, dtype=F64) / math.sqrt(C * D)   # (C·D, K)
            # X @ P = sum over positions c of E[token_c] @ P_c: fold E into P once, per position
            table = (embed @ proj.view(C, D, K)).reshape(C * V, K)                    # (C·V, K)
        else:
            embed = None
            # x is C one-hot blocks, so X @ P just picks C rows of P: P is its own table
            proj = torch.randn(C * V, K, generator=g, dtype=F64) / math.sqrt(C)       # (C·V, K)
            table = proj
        b = torch.randn(K, generator=g, dtype=F64)                                    # (K,)

        self.embed = None if embed is None else embed.to(self.device)  # (V, D) or None
        self.proj = proj.to(self.device)    # P: (C·D, K) or (C·V, K)
        self.table = self.proj if table is proj else table.to(self.device)  # row c·V + v: E[v] @ P_c
        self.b = b.to(self.device)
        self.offsets = torch.arange(C, device=self.device) * V  # (C,) table row of token 0 at each position
        self.W: torch.Tensor | None = None       # (K', n_outputs) after fit
        self.logit_scale: float | None = None    # β in logits = β · scores, after fit
        self.fit_stats: FitStats | None = None

    # ----------------------------------------------------------------- features
    @property
    def n_features(self) -> int:
        """Columns of ``features``: K' (a subclass that adds features says how many here)."""
        return self.config.n_features

    def features(self, windows: torch.Tensor) -> torch.Tensor:
        """H for (N, context) token windows: (N, K') float64, tanh(X @ P + b) then the 1-column."""
        windows = torch.as_tensor(windows, dtype=torch.long, device=self.device)
        if windows.dim() != 2 or windows.size(1) != self.config.context:
            raise ValueError(f"windows must have shape (N, {self.config.context}), got {tuple(windows.shape)}")
        # one bag of C table rows per window; the sum is X @ P without building X
        pre = F.embedding_bag(windows + self.offsets, self.table, mode="sum")  # (N, K)
        h = pre.add_(self.b).tanh_()
        return F.pad(h, (0, 1), value=1.0) if self.config.bias else h        # (N, K')

    def _targets(self, next_tokens: torch.Tensor) -> torch.Tensor:
        """Y for (N,) next tokens: (N, n_outputs) float64."""
        if self.config.target == "onehot":
            return F.one_hot(next_tokens, self.config.vocab_size).to(F64)
        return self.embed[next_tokens]

    def _scores(self, h: torch.Tensor) -> torch.Tensor:
        """(N, K') features -> (N, V) scores; the highest is the predicted token."""
        pred = h @ self.W                                                     # (N, n_outputs)
        if self.config.target == "onehot":
            return pred
        # -½‖pred - E_v‖² up to a per-row constant: the nearest embedding scores highest
        return pred @ self.embed.T - 0.5 * (self.embed * self.embed).sum(1)

    def _windows(self, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """(T,) tokens -> (T - context, context + 1) view: each window plus the token after it."""
        tokens = torch.as_tensor(tokens, dtype=torch.long).to(self.device)
        C, V = self.config.context, self.config.vocab_size
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        if len(tokens) <= C:
            raise ValueError(f"need more than context={C} tokens, got {len(tokens)}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"token ids must be in [0, {V}), got values in [{lo}, {hi}]")
        return tokens.unfold(0, C + 1, 1)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ----------------------------------------------------------------- fitting
    @torch.no_grad()
    def fit(self, tokens: torch.Tensor | Sequence[int], progress: bool = True) -> FitStats:
        """Solve (HᵀH + λI) W = HᵀY over every window of ``tokens``; returns (and keeps) FitStats."""
        cfg = self.config
        C, cs = cfg.context, cfg.chunk_size
        windows = self._windows(tokens)                                       # (N, C+1)
        N, Kp = len(windows), self.n_features
        with deterministic_algorithms():
            self._sync()
            t0 = time.perf_counter()
            A = torch.zeros(Kp, Kp, dtype=F64, device=self.device)            # HᵀH
            B = torch.zeros(Kp, cfg.n_outputs, dtype=F64, device=self.device)  # HᵀY
            gram_seconds = 0.0
            starts = range(0, N, cs)  # fixed order: float64 sums come out the same every time
            for start in tqdm(starts, desc="ridge fit", unit="chunk", disable=not progress):
                w = windows[start:start + cs]
                h = self.features(w[:, :C])                                   # (n, K')
                y = self._targets(w[:, C])                                    # (n, n_outputs)
                self._sync()
                t = time.perf_counter()
                A.addmm_(h.T, h)                                              # 2·n·K'² FLOPs
                self._sync()
                gram_seconds += time.perf_counter() - t
                B.addmm_(h.T, y)
            A.diagonal().add_(cfg.ridge_lambda)
            L, info = torch.linalg.cholesky_ex(A)
            if int(info) != 0:
                raise RuntimeError(f"HᵀH + λI is not positive definite (info={int(info)}): "
                                   "increase ridge_lambda")
            del A
            self.W = torch.cholesky_solve(B, L)                               # (K', n_outputs)
            self.logit_scale = self._calibrate(windows)
            self._sync()
            seconds = time.perf_counter() - t0
        gram_flops = 2 * N * Kp * Kp
        self.fit_stats = FitStats(
            windows=N, seconds=seconds, patterns_per_s=N / seconds, gram_flops=gram_flops,
            gram_seconds=gram_seconds, gram_gflops_per_s=gram_flops / max(gram_seconds, 1e-12) / 1e9,
        )
        return self.fit_stats

    def _calibrate(self, windows: torch.Tensor) -> float:
        """β that minimises the cross-entropy of softmax(β · scores) on training windows.

        Ridge on one-hot targets predicts roughly probabilities (about 0..1), which used
        directly as logits give a nearly uniform softmax; embedding scores have an arbitrary
        scale too. One temperature fixes both. CE(β) is convex, so bisection on its slope
        finds the minimum. Uses up to chunk_size evenly spaced windows (a fixed subset).
        """
        C = self.config.context
        n = min(len(windows), self.config.chunk_size)
        w = windows[torch.arange(n, device=self.device) * (len(windows) // n)]
        s = self._scores(self.features(w[:, :C]))                            # (n, V)
        s_true = s.gather(1, w[:, C:]).squeeze(1)                             # (n,)

        def slope(beta: float) -> float:  # dCE/dβ = E_softmax[s] - s_true, increasing in β
            p = torch.softmax(beta * s, dim=1)
            return float(((p * s).sum(1) - s_true).mean())

        if slope(0.0) >= 0:  # no better than uniform on these windows
            return 0.0
        lo, hi = 0.0, 1.0
        while slope(hi) < 0 and hi < 1e9:
            lo, hi = hi, 2 * hi
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
        return 0.5 * (lo + hi)

    def scores_to_logits(self, s: torch.Tensor, readout: str | None = None,
                 clip_floor: float | None = None) -> torch.Tensor:
        """(N, V) scores -> (N, V) logits, by ``readout`` (default: the config's).

        "softmax": β·s, with the calibrated temperature β. "clipped": the scores read as
        probabilities, p ∝ max(s, ε), and the logits are log p (already normalised, so a
        softmax or cross-entropy of them gives back p). No weight changes, only the link.
        """
        readout = self.config.readout if readout is None else readout
        if readout == "softmax":
            return self.logit_scale * s
        if readout != "clipped":
            raise ValueError(f"readout must be 'softmax' or 'clipped', got {readout!r}")
        if self.config.target != "onehot":
            raise ValueError("the clipped readout needs target='onehot'")
        eps = self.config.clip_floor if clip_floor is None else clip_floor
        if not 0 < eps < 1:
            raise ValueError(f"clip_floor must be in (0, 1), got {eps!r}")
        p = s.clamp(min=eps)
        return p.log() - p.sum(1, keepdim=True).log()

    def _check_fitted(self) -> None:
        if self.W is None:
            raise RuntimeError("RidgeLM is not fitted yet: call fit(tokens) first")

    # ----------------------------------------------------------------- using it
    @torch.no_grad()
    def scores(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, context) windows -> (N, vocab_size) float64 scores s; the highest is the prediction.

        What ``evaluate``'s accuracy counts and what greedy decoding picks. Logits are a readout
        of them (``scores_to_logits``), which can tie every token: β = 0 makes every logit 0.
        """
        self._check_fitted()
        return self._scores(self.features(windows))

    @torch.no_grad()
    def logits(self, windows: torch.Tensor, readout: str | None = None,
               clip_floor: float | None = None) -> torch.Tensor:
        """(N, context) windows -> (N, vocab_size) float64 logits for the next token.

        ``readout`` and ``clip_floor`` override the config's for this call (see ``scores_to_logits``).
        """
        return self.scores_to_logits(self.scores(windows), readout, clip_floor)

    @torch.no_grad()
    def evaluate(self, tokens: torch.Tensor | Sequence[int], progress: bool = False,
                 readout: str | None = None, clip_floor: float | None = None) -> dict[str, float | int]:
        """Mean cross-entropy (nats) and accuracy of the next token over every window of ``tokens``.

        ``readout`` and ``clip_floor`` override the config's, so one fit can be scored both ways.
        """
        self._check_fitted()
        C, cs = self.config.context, self.config.chunk_size
        windows = self._windows(tokens)
        total_ce, correct = 0.0, 0
        for start in tqdm(range(0, len(windows), cs), desc="ridge eval", unit="chunk", disable=not progress):
            w = windows[start:start + cs]
            s, y = self._scores(self.features(w[:, :C])), w[:, C]             # (n, V), (n,)
            total_ce += float(F.cross_entropy(self.scores_to_logits(s, readout, clip_floor), y, reduction="sum"))
            correct += int((s.argmax(1) == y).sum())
        return {"loss": total_ce / len(windows), "accuracy": correct / len(windows), "windows": len(windows)}

    def loss(self, tokens: torch.Tensor | Sequence[int]) -> float:
        """Mean cross-entropy (natural log) of every next token in ``tokens`` given its window."""
        return self.evaluate(tokens)["loss"]

    @torch.no_grad()
    def generate(self, context_tokens: torch.Tensor | Sequence[int], max_new_tokens: int,
                 temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to a 1-D prompt of at least ``context`` tokens.

        ``temperature=0`` is greedy: the highest score, as ``evaluate``'s accuracy counts. (Not
        the argmax of the logits: with β = 0, a fit no better than uniform, they are all 0 and the
        argmax would always be token 0.) Without a ``generator`` one seeded with ``config.seed``
        is used, so sampling is reproducible too. Returns prompt + new tokens, 1-D.
        """
        self._check_fitted()
        C = self.config.context
        idx = torch.as_tensor(context_tokens, dtype=torch.long).to(self.device)
        if idx.dim() != 1 or len(idx) < C:
            raise ValueError(f"context_tokens must be 1-D with at least context={C} tokens, "
                             f"got shape {tuple(idx.shape)}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        for _ in range(max_new_tokens):
            s = self.scores(idx[-C:][None])[0]                                # (V,)
            if temperature == 0:
                nxt = s.argmax().view(1)
            else:
                logits = self.scores_to_logits(s[None])[0]
                nxt = torch.multinomial(torch.softmax(logits / temperature, dim=0), 1, generator=generator)
            idx = torch.cat((idx, nxt))
        return idx

    def weights_sha256(self) -> str:
        """sha256 of W's float64 bytes and the logit scale: equal hashes mean bit-identical models."""
        self._check_fitted()
        digest = hashlib.sha256(self.W.detach().cpu().contiguous().numpy().tobytes())
        digest.update(struct.pack("<d", self.logit_scale))
        return digest.hexdigest()
