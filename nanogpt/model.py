"""The GPT: token + position embeddings, a stack of pre-LayerNorm Transformer blocks, and a
language-model head tied to the token embedding.

This file is the whole model and needs only torch: copy it into a project of your own.
Parameter names follow GPT-2 (``transformer.h.0.attn.c_attn`` ...) so Hugging Face weights
load with a transpose and nothing else. ``configure_adamw`` builds the optimizer the way
GPT-2 was trained: weight decay on matrices only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    """Every size that defines a GPT. Validated on creation."""

    block_size: int = 256      # longest context, in tokens
    vocab_size: int = 65       # tokens in the vocabulary (padded up for speed on GPUs)
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0       # on embeddings, attention output and MLP output
    bias: bool = True          # biases in Linear layers and LayerNorms, as GPT-2
    attn_dropout: float = 0.0  # on attention probabilities, as nanoGPT
    gelu: str = "tanh"         # "tanh": GPT-2's approximation; "exact": erf, as nanoGPT

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.gelu not in ("tanh", "exact"):
            raise ValueError(f'GPTConfig.gelu must be "tanh" or "exact", got {self.gelu!r}')

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """The config saved by ``to_dict``; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def sample_next_token(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one token per row from (B, vocab) logits: scale by temperature, keep the top k."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a whole number >= 1 (or None for no limit), got {top_k!r}")
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(hs)) for (..., T, hs) inputs: the maps ``GPT.attention_maps`` returns."""
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])  # (..., T, T)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


class KVCache:
    """Keys and values of the positions seen so far, for every layer, preallocated."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device=None, dtype=None) -> None:
        shape = (batch_size, n_head, max_len, head_size)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0  # positions filled (the same in every layer once a forward finishes)
        self.max_len = max_len

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new (B, nh, t, hs) keys/values for ``layer``; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused q/k/v projection.

    ``dropout`` applies to the output projection. ``attn_dropout`` drops attention
    probabilities in training, as nanoGPT does; it is off by default, since a fused attention
    kernel that must drop out may fall back to one that forms every (T, T) matrix.
    ``attend`` is the attention kernel, ``F.scaled_dot_product_attention``; a trainer may swap
    in another with the same signature (it has no weights).
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 attn_dropout: float = 0.0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_embd, self.n_head, self.attn_dropout = n_embd, n_head, attn_dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.attend = F.scaled_dot_product_attention  # (B, nh, T, hs) q, k, v -> (B, nh, T, hs)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of (B, T, C) inputs, each (B, nh, T, hs)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x)  # each (B, nh, T, hs)
        if cache is None:
            p = self.attn_dropout if self.training else 0.0
            y = self.attend(q, k, v, dropout_p=p, is_causal=True)
        else:
            past = cache.length
            k, v = cache.append(layer, k, v)  # (B, nh, past+T, hs)
            if T == 1:  # one new query sees every cached position: no mask needed
                y = self.attend(q, k, v)
            else:       # a prompt: query i sees keys up to past + i
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
                y = self.attend(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): the heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: expand 4x, GELU, project back.

    GELU in GPT-2's tanh form by default, so GPT-2's weights give GPT-2's outputs;
    ``config.gelu = "exact"`` uses erf, as nanoGPT.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    ``attn`` replaces the attention module (any (B, T, C) -> (B, T, C) module), such as
    per-head attention built from single heads. Default: ``CausalSelfAttention``.
    """

    def __init__(self, config: GPTConfig, attn: nn.Module | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        if attn is None:
            attn = CausalSelfAttention(config.n_embd, config.n_head, config.dropout, config.bias, config.attn_dropout)
        self.attn = attn
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        if cache is None:
            x = x + self.attn(self.ln_1(x))  # communicate: tokens exchange information
        else:
            x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))       # compute: each token thinks on its own
        return x


class GPT(nn.Module):
    """A GPT language model. ``forward(idx, targets)`` returns ``(logits, loss)``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one table, used twice
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), so the residual stream's
        # variance does not grow with depth (two additions per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # --- counting ----------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (tied tables counted once); ``non_embedding`` drops both embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel() + self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N for the weights + 12*L*H*Q*T for attention (PaLM appendix B).

        N excludes the position table (a lookup, no matmul) but keeps the token table,
        which is also the output projection.
        """
        cfg = self.config
        T = seq_len or cfg.block_size
        N = self.num_params() - self.transformer.wpe.weight.numel()
        return 6 * N + 12 * cfg.n_layer * cfg.n_head * cfg.head_size * T

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float, seq_len: int | None = None) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s as a fraction of ``peak_flops``."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    # --- forward -----------------------------------------------------------------------

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy.

        With a ``cache``, ``idx`` holds only the new tokens; their positions continue
        after those already cached.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {start + T} is longer than block_size={self.config.block_size}; "
                "crop the context (generate() does this) or use a model with a longer block_size"
            )
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i) if cache is not None else block(x)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def uses_fused_attention(self) -> bool:
        """True when every block has ``CausalSelfAttention`` (what the KV cache and maps need)."""
        return all(isinstance(block.attn, CausalSelfAttention) for block in self.transformer.h)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights of every layer and head for one sequence ``idx`` (1, T), in eval mode.

        The fused attention never forms these (T, T) matrices, so they are recomputed from
        each block's queries and keys: returns (n_layer, n_head, T, T). The model's
        training/eval mode is restored afterwards.
        """
        if not self.uses_fused_attention():
            raise ValueError("attention_maps reads CausalSelfAttention's q/k projection; "
                             "this model has another attention module")
        was_training = self.training
        self.eval()  # no dropout: the maps of the model as it predicts
        try:
            tr = self.transformer
            T = idx.shape[1]
            x = tr.wte(idx) + tr.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
            maps = []
            for block in tr.h:
                q, k, _ = block.attn.qkv(block.ln_1(x))  # each (B, nh, T, hs)
                maps.append(attention_weights(q, k)[0])  # (nh, T, T)
                x = block(x)
        finally:
            self.train(was_training)
        return torch.stack(maps)

    # --- generation --------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T), cropping to block_size.

        With ``use_cache`` the keys and values of earlier positions are kept, so each new
        token costs one position's work. Once the context is longer than block_size every
        position shifts, the cache no longer applies, and each step recomputes the window.
        """
        cfg = self.config
        cache = None
        if use_cache and self.uses_fused_attention():
            param = self.lm_head.weight
            cache = KVCache(cfg.n_layer, idx.shape[0], cfg.n_head, cfg.block_size, cfg.head_size,
                            device=param.device, dtype=param.dtype)
        for _ in range(max_new_tokens):
            if cache is not None and idx.shape[1] <= cfg.block_size:
                # Feed only what the cache has not seen (the whole prompt on the first step).
                logits, _ = self(idx[:, cache.length:], cache=cache)
            else:
                logits, _ = self(idx[:, -cfg.block_size:])
            idx_next = sample_next_token(logits[:, -1, :], temperature, top_k, generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    # --- pretrained weights ------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_type: str = "gpt2", dropout: float = 0.0) -> "GPT":
        """GPT-2 weights from Hugging Face (``model_type``: a hub name or a local folder).

        Needs the optional ``transformers`` package. HF's GPT-2 uses ``Conv1D`` layers whose
        weights are stored transposed relative to ``nn.Linear``; those are transposed here.
        """
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as exc:  # optional dependency
            raise ImportError("GPT.from_pretrained needs `pip install transformers`") from exc
        hf = GPT2LMHeadModel.from_pretrained(model_type)
        c = hf.config
        config = GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                           n_head=c.n_head, n_embd=c.n_embd, dropout=dropout, bias=True)
        model = cls(config)
        model.load_hf_state_dict(hf.state_dict())
        return model

    @torch.no_grad()
    def load_hf_state_dict(self, hf_state: dict[str, torch.Tensor]) -> None:
        """Copy a Hugging Face GPT-2 state dict into this model, transposing Conv1D weights.

        Every parameter of this model must be filled: a missing one is a ``KeyError``.
        """
        ours = self.state_dict()
        filled = {"lm_head.weight"}  # tied to transformer.wte.weight
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        hf_keys = [k for k in hf_state if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        for key in hf_keys:
            if key not in ours:
                if key == "lm_head.weight":
                    continue  # tied to wte, copied through it
                raise KeyError(f"unexpected Hugging Face parameter {key!r}")
            src = hf_state[key]
            if key.endswith(transposed):
                src = src.t()
            if src.shape != ours[key].shape:
                raise ValueError(f"shape mismatch for {key}: {tuple(src.shape)} vs {tuple(ours[key].shape)}")
            ours[key].copy_(src)
            filled.add(key)
        missing = [key for key in ours if key not in filled]
        if missing:
            raise KeyError(f"the Hugging Face state dict has no {', '.join(missing[:5])}"
                           + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))


def configure_adamw(model: nn.Module, weight_decay: float, learning_rate: float,
                    betas: tuple[float, float], device_type: str,
                    implementation: str | None = None) -> torch.optim.AdamW:
    """AdamW that decays matrices (matmul weights, embeddings) but not biases or LayerNorm gains.

    ``implementation``: "for-loop", "foreach" or "fused"; by default fused on CUDA and CPU,
    where one pass over every parameter is much faster than the per-parameter loop.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if implementation is None:
        implementation = "fused" if device_type in ("cuda", "cpu") else "foreach"
    flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    if implementation not in flags:
        raise ValueError(f"implementation must be one of {', '.join(flags)}, got {implementation!r}")
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **flags[implementation])
