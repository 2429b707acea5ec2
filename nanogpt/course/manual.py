"""GPT-2 by hand: what llm.c's fp32 CUDA kernels compute, as explicit tensor operations.

Every layer of the GPT is written twice, once forward and once backward, with no autograd:
the backward functions are the chain rule worked out on paper. Each function is named after
(and documented with) the llm.c kernel that computes the same thing, in
``train_gpt2_fp32.cu`` and its scratchpad versions ``dev/cuda/<name>.cu``; ``LLMC_KERNELS``
lists the correspondence. ``gpt_forward`` / ``gpt_backward`` assemble the pieces into the
whole model, keyed by the same parameter names as ``nanogpt.model.GPT``, and the tests check
every gradient against ``loss.backward()`` in float64.

Conventions, as in llm.c: B batch, T time, C channels (n_embd), NH heads, HS = C // NH head
size, OC output channels, V vocabulary. Linear weights have llm.c's (and ``nn.Linear``'s)
layout (OC, C): out = inp @ weight.T + bias. Forward functions return the caches their
backward needs (LayerNorm's mean and rstd, attention's probabilities); backward functions
*return* gradients, where llm.c *accumulates* them (``+=``) into preallocated buffers (which
is why llm.c zeroes its gradients before each backward pass, and why a tied table's
gradient is simply the sum of its uses).

Imports only torch and the standard library, so it can be copied on its own.
"""
from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = [
    "LLMC_KERNELS",
    "encoder_forward", "encoder_backward",
    "layernorm_forward", "layernorm_backward",
    "matmul_forward", "matmul_backward",
    "permute_qkv", "permute_qkv_backward", "unpermute", "unpermute_backward",
    "softmax_autoregressive_forward", "softmax_autoregressive_backward",
    "attention_forward", "attention_backward",
    "gelu_forward", "gelu_backward",
    "residual_forward", "residual_backward",
    "softmax_forward", "crossentropy_forward", "crossentropy_softmax_backward", "fused_classifier",
    "adamw_update",
    "params_from_model", "gpt_forward", "gpt_backward", "gpt_update",
]

# Function name -> the llm.c code that computes the same thing. "fp32" is train_gpt2_fp32.cu
# (the hand-written fp32 CUDA trainer); dev/cuda/*.cu hold the numbered kernel variants;
# train_gpt2.c is the CPU reference (where the plain C loops live).
LLMC_KERNELS: dict[str, str] = {
    "encoder_forward": "encoder_forward_kernel3 (fp32; dev/cuda/encoder_forward.cu)",
    "encoder_backward": "encoder_backward_kernel, atomicAdd into dwte/dwpe (fp32; dev/cuda/encoder_backward.cu)",
    "layernorm_forward": "layernorm_forward_kernel3 (fp32; dev/cuda/layernorm_forward.cu)",
    "layernorm_backward": "layernorm_backward_kernel2 (fp32; dev/cuda/layernorm_backward.cu)",
    "matmul_forward": "matmul_forward_cublaslt: cuBLASLt GEMM with bias epilogue (fp32; dev/cuda/matmul_forward.cu)",
    "matmul_backward": "matmul_backward: two cublasSgemm + matmul_backward_bias_kernel4 (fp32; dev/cuda/matmul_backward.cu)",
    "permute_qkv": "permute_kernel (fp32; dev/cuda/attention_forward.cu)",
    "permute_qkv_backward": "permute_kernel_backward (fp32; dev/cuda/attention_backward.cu)",
    "unpermute": "unpermute_kernel (fp32; dev/cuda/attention_forward.cu)",
    "unpermute_backward": "unpermute_kernel_backward (fp32; dev/cuda/attention_backward.cu)",
    "softmax_autoregressive_forward": "softmax_forward_kernel5, scale fused, causal rows only (fp32; dev/cuda/softmax_forward.cu)",
    "softmax_autoregressive_backward": "softmax_autoregressive_backward_kernel (fp32; dev/cuda/attention_backward.cu)",
    "attention_forward": "attention_forward: permute_kernel, cublasSgemmStridedBatched, softmax_forward_kernel5, "
                         "cublasSgemmStridedBatched, unpermute_kernel (fp32; dev/cuda/attention_forward.cu)",
    "attention_backward": "attention_backward: unpermute_kernel_backward, 2 GEMMs, softmax_autoregressive_backward_kernel, "
                          "2 GEMMs, permute_kernel_backward (fp32; dev/cuda/attention_backward.cu)",
    "gelu_forward": "gelu_forward_kernel (fp32; dev/cuda/gelu_forward.cu)",
    "gelu_backward": "gelu_backward_kernel (fp32; dev/cuda/gelu_backward.cu)",
    "residual_forward": "residual_forward_kernel (fp32; dev/cuda/residual_forward.cu)",
    "residual_backward": "residual_backward (train_gpt2.c); on the GPU no kernel: the += into both inputs' grads",
    "softmax_forward": "softmax_forward_kernel* over the vocabulary (dev/cuda/softmax_forward.cu)",
    "crossentropy_forward": "crossentropy_forward_kernel1 (dev/cuda/crossentropy_forward.cu)",
    "crossentropy_softmax_backward": "crossentropy_softmax_backward_kernel1 (dev/cuda/crossentropy_softmax_backward.cu)",
    "fused_classifier": "fused_classifier_kernel3: softmax + loss + dlogits in one pass (fp32; dev/cuda/classifier_fused.cu)",
    "adamw_update": "adamw_kernel2 (fp32; dev/cuda/adamw.cu)",
    "gpt_forward": "gpt2_forward (fp32)",
    "gpt_backward": "gpt2_backward (fp32)",
    "gpt_update": "gpt2_update: one adamw_kernel2 launch over all parameters (train_gpt2_fp32.cu: uniform decay; train_gpt2.cu: matrices only, as here)",
}

GELU_SCALING_FACTOR = math.sqrt(2.0 / math.pi)  # llm.c's #define of the same name


class ConfigLike(Protocol):
    """The fields of ``nanogpt.model.GPTConfig`` used here (duck-typed: no import needed)."""

    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float


# ---------------------------------------------------------------------------------------
# encoder: token + position embedding


def encoder_forward(wte: Tensor, wpe: Tensor, inp: Tensor) -> Tensor:
    """out[b, t] = wte[inp[b, t]] + wpe[t]: a gather from each table, then an add.

    wte (V, C), wpe (maxT, C), inp (B, T) integer token ids -> out (B, T, C).
    """
    T = inp.shape[1]
    return wte[inp] + wpe[:T]  # (B, T, C) + (T, C) broadcast over B


def encoder_backward(dout: Tensor, inp: Tensor, vocab_size: int, block_size: int) -> tuple[Tensor, Tensor]:
    """Gradients of the two tables: scatter-add dout into the rows that were read.

    dout (B, T, C), inp (B, T) -> dwte (V, C), dwpe (block_size, C).
    dwpe[t] sums dout[:, t] over the batch (rows t >= T stay zero). dwte[ix] sums dout over
    every (b, t) whose token is ix. That is the scatter-add: when several positions hold the
    same token, several CUDA threads write the same row at once, so llm.c's fp32 kernel uses
    ``atomicAdd`` (non-deterministic order of float additions); its bf16 successor
    (``wte_backward_kernel``) sorts the positions into per-token buckets on the CPU to be
    deterministic. ``index_add_`` is the serial version of the same scatter.
    """
    B, T, C = dout.shape
    dwte = torch.zeros(vocab_size, C, dtype=dout.dtype, device=dout.device)
    dwte.index_add_(0, inp.reshape(-1), dout.reshape(B * T, C))  # (V, C): rows hit 0+ times
    dwpe = torch.zeros(block_size, C, dtype=dout.dtype, device=dout.device)
    dwpe[:T] = dout.sum(dim=0)  # (T, C): each position is used once per sequence
    return dwte, dwpe


# ---------------------------------------------------------------------------------------
# LayerNorm


def layernorm_forward(inp: Tensor, weight: Tensor, bias: Tensor | None, eps: float = 1e-5
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Normalise each row of C to zero mean, unit variance, then scale and shift.

    inp (..., C), weight (C), bias (C) or None -> out (..., C), mean (...), rstd (...).
    The biased variance (divide by C), as nn.LayerNorm. mean and rstd = 1/sqrt(var + eps)
    are returned because the backward pass needs them: llm.c keeps them (B, T) per layer
    instead of the normalised activations (B, T, C), a C-fold saving.
    """
    mean = inp.mean(dim=-1)                                  # (...)
    xshift = inp - mean.unsqueeze(-1)                        # (..., C)
    var = (xshift * xshift).mean(dim=-1)                     # (...)
    rstd = (var + eps).rsqrt()                               # (...)
    norm = xshift * rstd.unsqueeze(-1)                       # (..., C)
    out = norm * weight if bias is None else norm * weight + bias
    return out, mean, rstd


def layernorm_backward(dout: Tensor, inp: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of LayerNorm: (dinp, dweight, dbias), recomputing norm from mean and rstd.

    dout, inp (..., C), weight (C), mean, rstd (...) -> dinp (..., C), dweight (C), dbias (C).
    With dnorm = dout * weight, per row:
        dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
    the two means being the gradient through the mean and through the variance.
    dbias is returned even where the layer has none (the caller drops it).
    """
    C = inp.shape[-1]
    norm = (inp - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)   # (..., C)
    dnorm = dout * weight                                    # (..., C)
    dnorm_mean = dnorm.mean(dim=-1, keepdim=True)            # (..., 1)
    dnorm_norm_mean = (dnorm * norm).mean(dim=-1, keepdim=True)  # (..., 1)
    dinp = (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rstd.unsqueeze(-1)
    dweight = (dout * norm).reshape(-1, C).sum(dim=0)        # (C)
    dbias = dout.reshape(-1, C).sum(dim=0)                   # (C)
    return dinp, dweight, dbias


# ---------------------------------------------------------------------------------------
# matmul (a Linear layer)


def matmul_forward(inp: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """out = inp @ weight.T + bias, with weight in llm.c's (OC, C) layout.

    inp (..., C), weight (OC, C), bias (OC) or None -> out (..., OC).
    """
    out = inp @ weight.transpose(0, 1)                       # (..., C) @ (C, OC)
    return out if bias is None else out + bias


def matmul_backward(dout: Tensor, inp: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of out = inp @ W.T + b: dinp = dout @ W, dW = dout.T @ inp, db = sum(dout).

    dout (..., OC), inp (..., C), weight (OC, C) -> dinp (..., C), dweight (OC, C), dbias (OC).
    The leading dimensions are flattened into one of B*T rows: dweight sums over every
    position (one GEMM), dbias is the column sum llm.c gives its own kernel.
    """
    OC, C = weight.shape
    dout2 = dout.reshape(-1, OC)                             # (BT, OC)
    inp2 = inp.reshape(-1, C)                                # (BT, C)
    dinp = dout @ weight                                     # (..., OC) @ (OC, C)
    dweight = dout2.transpose(0, 1) @ inp2                   # (OC, BT) @ (BT, C)
    dbias = dout2.sum(dim=0)                                 # (OC)
    return dinp, dweight, dbias


# ---------------------------------------------------------------------------------------
# attention, in the pieces llm.c launches


def permute_qkv(qkv: Tensor, n_head: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split the fused (B, T, 3C) projection into q, k, v, each (B, NH, T, HS).

    The last dimension is laid out (3, NH, HS): q for all heads, then k, then v, in the order
    of c_attn's output rows. Heads move next to the batch so each is an independent matmul.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    x = qkv.view(B, T, 3, n_head, C // n_head)               # (B, T, 3, NH, HS)
    x = x.permute(2, 0, 3, 1, 4)                              # (3, B, NH, T, HS)
    return x[0], x[1], x[2]


def permute_qkv_backward(dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
    """Inverse of ``permute_qkv``: three (B, NH, T, HS) gradients -> dqkv (B, T, 3C)."""
    B, NH, T, HS = dq.shape
    d = torch.stack((dq, dk, dv))                             # (3, B, NH, T, HS)
    return d.permute(1, 3, 0, 2, 4).reshape(B, T, 3 * NH * HS)


def unpermute(y: Tensor) -> Tensor:
    """Heads back side by side: (B, NH, T, HS) -> (B, T, C)."""
    B, NH, T, HS = y.shape
    return y.transpose(1, 2).reshape(B, T, NH * HS)


def unpermute_backward(dout: Tensor, n_head: int) -> Tensor:
    """Inverse of ``unpermute``: (B, T, C) -> (B, NH, T, HS)."""
    B, T, C = dout.shape
    return dout.view(B, T, n_head, C // n_head).transpose(1, 2)


def softmax_autoregressive_forward(preatt: Tensor, scale: float) -> Tensor:
    """Causal softmax of scale * preatt over the last dimension.

    preatt (..., T, T) -> att (..., T, T), zero above the diagonal (row t sees keys 0..t).
    Subtracting the row max before exp keeps it finite, as the kernel's online softmax does.
    """
    T = preatt.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool, device=preatt.device).triu(diagonal=1)
    x = (preatt * scale).masked_fill(future, float("-inf"))  # (..., T, T)
    e = (x - x.amax(dim=-1, keepdim=True)).exp()             # masked entries: exp(-inf) = 0
    return e / e.sum(dim=-1, keepdim=True)


def softmax_autoregressive_backward(datt: Tensor, att: Tensor, scale: float) -> Tensor:
    """Gradient of the causal, scaled softmax: dpreatt = scale * att * (datt - sum(att * datt)).

    datt, att (..., T, T) -> dpreatt (..., T, T). The softmax Jacobian is diag(p) - p p^T;
    masked positions have att = 0, so their gradient is zero without a mask.
    """
    inner = (att * datt).sum(dim=-1, keepdim=True)           # (..., T, 1)
    return scale * att * (datt - inner)


def attention_forward(qkv: Tensor, n_head: int) -> tuple[Tensor, Tensor]:
    """Multi-head causal self-attention from the fused q,k,v buffer.

    qkv (B, T, 3C) -> out (B, T, C), att (B, NH, T, T) (the probabilities, kept for backward).
    softmax(q k^T / sqrt(HS)) v for every head, as F.scaled_dot_product_attention(is_causal=True).
    """
    q, k, v = permute_qkv(qkv, n_head)                        # 3 x (B, NH, T, HS)
    scale = 1.0 / math.sqrt(q.shape[-1])
    preatt = q @ k.transpose(-2, -1)                          # (B, NH, T, T)
    att = softmax_autoregressive_forward(preatt, scale)       # (B, NH, T, T)
    y = att @ v                                               # (B, NH, T, HS)
    return unpermute(y), att                                  # (B, T, C)


def attention_backward(dout: Tensor, qkv: Tensor, att: Tensor, n_head: int) -> Tensor:
    """Gradient of ``attention_forward`` w.r.t. its qkv input.

    dout (B, T, C), qkv (B, T, 3C), att (B, NH, T, T) -> dqkv (B, T, 3C).
    Each of the two batched matmuls gives two GEMMs back (y = att @ v: datt, dv;
    preatt = q @ k^T: dq, dk), with the softmax backward between them.
    """
    q, k, v = permute_qkv(qkv, n_head)                        # 3 x (B, NH, T, HS)
    scale = 1.0 / math.sqrt(q.shape[-1])
    dy = unpermute_backward(dout, n_head)                     # (B, NH, T, HS)
    datt = dy @ v.transpose(-2, -1)                           # (B, NH, T, T)
    dv = att.transpose(-2, -1) @ dy                           # (B, NH, T, HS)
    dpreatt = softmax_autoregressive_backward(datt, att, scale)  # (B, NH, T, T)
    dq = dpreatt @ k                                          # (B, NH, T, HS)
    dk = dpreatt.transpose(-2, -1) @ q                        # (B, NH, T, HS)
    return permute_qkv_backward(dq, dk, dv)                   # (B, T, 3C)


# ---------------------------------------------------------------------------------------
# GELU and residual


def gelu_forward(inp: Tensor) -> Tensor:
    """GELU, tanh approximation (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Elementwise, any shape; equals nn.GELU(approximate="tanh").
    """
    cube = 0.044715 * inp * inp * inp
    return 0.5 * inp * (1.0 + torch.tanh(GELU_SCALING_FACTOR * (inp + cube)))


def gelu_backward(dout: Tensor, inp: Tensor) -> Tensor:
    """dinp = dout * GELU'(inp), the derivative of the tanh form written out.

    llm.c computes sech^2 as 1/cosh^2; here 1 - tanh^2, the same number (for large |x|
    both go to 0: cosh overflows to inf and 1/inf is 0).
    """
    cube = 0.044715 * inp * inp * inp
    tanh_out = torch.tanh(GELU_SCALING_FACTOR * (inp + cube))
    sech2 = 1.0 - tanh_out * tanh_out
    local_grad = 0.5 * (1.0 + tanh_out) + inp * 0.5 * sech2 * GELU_SCALING_FACTOR * (1.0 + 3.0 * 0.044715 * inp * inp)
    return local_grad * dout


def residual_forward(inp1: Tensor, inp2: Tensor) -> Tensor:
    """out = inp1 + inp2: the residual stream plus a block's output (B, T, C)."""
    return inp1 + inp2


def residual_backward(dout: Tensor) -> tuple[Tensor, Tensor]:
    """An addition passes its gradient unchanged to both inputs: (dinp1, dinp2) = (dout, dout).

    This is why the residual stream is a gradient highway: every layer's input receives the
    loss gradient directly, plus whatever its block adds.
    """
    return dout, dout


# ---------------------------------------------------------------------------------------
# the classifier: softmax + cross-entropy


def softmax_forward(logits: Tensor) -> Tensor:
    """Softmax over the last (vocabulary) dimension, max-subtracted: (B, T, V) -> probs (B, T, V)."""
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)


def crossentropy_forward(probs: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    """Per-position loss -log probs[target]: probs (B, T, V), targets (B, T) -> losses (B, T).

    Positions whose target is ``ignore_index`` get loss 0 (GPT.forward's ignore_index=-1).
    """
    valid = targets != ignore_index
    p = probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return torch.where(valid, -p.log(), torch.zeros_like(p))


def crossentropy_softmax_backward(dlosses: Tensor, probs: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    """Gradient through cross-entropy and softmax together: dlogits = (probs - onehot) * dloss.

    dlosses (B, T), probs (B, T, V), targets (B, T) -> dlogits (B, T, V). Going through both
    at once avoids the softmax Jacobian: d(-log p_y)/dlogits = p - onehot(y).
    """
    onehot = torch.zeros_like(probs).scatter_(-1, targets.clamp(min=0).unsqueeze(-1), 1.0)
    dlosses = torch.where(targets != ignore_index, dlosses, torch.zeros_like(dlosses))
    return (probs - onehot) * dlosses.unsqueeze(-1)


def fused_classifier(logits: Tensor, targets: Tensor, dlosses: Tensor | None = None, ignore_index: int = -1
                     ) -> tuple[Tensor, Tensor]:
    """Softmax, loss and the loss's gradient in one pass, as llm.c does during the forward.

    logits (B, T, V), targets (B, T) -> losses (B, T), dlogits (B, T, V).
    Without ``dlosses`` every position gets dloss = 1/N with N the number of counted targets
    (B*T when none is ``ignore_index``), so the gradient is that of the mean loss
    ``losses.sum() / N``: dlogits = (probs - onehot) / (B*T). The kernel never writes the
    (B, T, V) probabilities to memory; in llm.c dlogits overwrite the logits buffer.
    """
    offset = logits.amax(dim=-1, keepdim=True)               # (B, T, 1): the kernel's sp.Offset
    e = (logits - offset).exp()
    sumval = e.sum(dim=-1, keepdim=True)                     # (B, T, 1): 1 / sp.Scale
    probs = e / sumval                                       # (B, T, V)
    # -log(prob[target]) = offset + log(sum) - logit[target]: the same number as the kernel's
    # -logf(prob), without rounding prob to 0 first (which gives inf for very unlikely targets)
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1))  # (B, T, 1)
    losses = (offset + sumval.log() - picked).squeeze(-1)    # (B, T)
    losses = torch.where(targets != ignore_index, losses, torch.zeros_like(losses))
    if dlosses is None:
        n = (targets != ignore_index).sum()
        dlosses = torch.ones_like(losses) / n
    return losses, crossentropy_softmax_backward(dlosses, probs, targets, ignore_index)


# ---------------------------------------------------------------------------------------
# AdamW


def adamw_update(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, t: int, lr: float = 1e-3,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01) -> None:
    """One AdamW step, in place on ``param``, ``m`` and ``v`` (t counts steps from 1).

        m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
        param -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * param)
    with m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t) correcting the zero start.
    The decay is decoupled (Loshchilov & Hutter): it shrinks the weights directly instead of
    entering the gradient. Equals torch.optim.AdamW's step for the same hyperparameters.
    """
    if t < 1:
        raise ValueError(f"adamw_update: step t counts from 1, got {t}")
    with torch.no_grad():
        m.lerp_(grad, 1.0 - beta1)                           # llm.c: lerp(grad, m, beta1)
        v.lerp_(grad * grad, 1.0 - beta2)
        m_hat = m / (1.0 - beta1 ** t)
        v_hat = v / (1.0 - beta2 ** t)
        param.sub_(lr * (m_hat / (v_hat.sqrt() + eps) + weight_decay * param))


# ---------------------------------------------------------------------------------------
# the whole GPT


def params_from_model(model: torch.nn.Module, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Detached copies of ``model.named_parameters()`` (float64 by default), same names.

    The tied token table appears once, as ``transformer.wte.weight``.
    """
    return {name: p.detach().to(dtype).clone() for name, p in model.named_parameters()}


def _check_config(config: Any) -> None:
    if getattr(config, "dropout", 0.0) != 0.0:
        raise ValueError(f"the manual GPT has no dropout; use a config with dropout=0.0 (got {config.dropout})")


def gpt_forward(params: dict[str, Tensor], idx: Tensor, targets: Tensor | None, config: ConfigLike
                ) -> tuple[Tensor | None, dict[str, Any]]:
    """The GPT's forward pass from the pieces above: (mean loss or None, cache for backward).

    params: named as GPT.named_parameters() (see ``params_from_model``); idx, targets (B, T)
    (targets may hold -1 to skip a position, or be None). The cache holds every activation
    the backward pass reads, under llm.c's ActivationTensors names, plus ``logits``; with
    targets, also ``dlogits`` (the fused classifier computes them here, as in llm.c).
    """
    _check_config(config)
    B, T = idx.shape
    if T > config.block_size:
        raise ValueError(f"sequence of length {T} is longer than block_size={config.block_size}")
    NH = config.n_head
    p = params
    wte = p["transformer.wte.weight"]                         # (V, C), also the lm_head
    encoded = encoder_forward(wte, p["transformer.wpe.weight"], idx)  # (B, T, C)
    residual = encoded
    layers = []
    for l in range(config.n_layer):
        h = f"transformer.h.{l}."
        ln1, ln1_mean, ln1_rstd = layernorm_forward(residual, p[h + "ln_1.weight"], p.get(h + "ln_1.bias"))
        qkv = matmul_forward(ln1, p[h + "attn.c_attn.weight"], p.get(h + "attn.c_attn.bias"))  # (B, T, 3C)
        atty, att = attention_forward(qkv, NH)                # (B, T, C), (B, NH, T, T)
        attproj = matmul_forward(atty, p[h + "attn.c_proj.weight"], p.get(h + "attn.c_proj.bias"))
        residual2 = residual_forward(residual, attproj)       # (B, T, C)
        ln2, ln2_mean, ln2_rstd = layernorm_forward(residual2, p[h + "ln_2.weight"], p.get(h + "ln_2.bias"))
        fch = matmul_forward(ln2, p[h + "mlp.c_fc.weight"], p.get(h + "mlp.c_fc.bias"))  # (B, T, 4C)
        fch_gelu = gelu_forward(fch)                          # (B, T, 4C)
        fcproj = matmul_forward(fch_gelu, p[h + "mlp.c_proj.weight"], p.get(h + "mlp.c_proj.bias"))
        residual3 = residual_forward(residual2, fcproj)       # (B, T, C)
        layers.append(dict(residual=residual, ln1=ln1, ln1_mean=ln1_mean, ln1_rstd=ln1_rstd, qkv=qkv,
                           atty=atty, att=att, residual2=residual2, ln2=ln2, ln2_mean=ln2_mean,
                           ln2_rstd=ln2_rstd, fch=fch, fch_gelu=fch_gelu))
        residual = residual3
    lnf, lnf_mean, lnf_rstd = layernorm_forward(residual, p["transformer.ln_f.weight"], p.get("transformer.ln_f.bias"))
    logits = matmul_forward(lnf, wte, None)                   # (B, T, V): the tied lm_head, no bias
    cache: dict[str, Any] = dict(config=config, idx=idx, targets=targets, encoded=encoded, layers=layers,
                                 residual_final=residual, lnf=lnf, lnf_mean=lnf_mean, lnf_rstd=lnf_rstd,
                                 logits=logits)
    if targets is None:
        return None, cache
    losses, dlogits = fused_classifier(logits, targets)      # (B, T), (B, T, V)
    loss = losses.sum() / (targets != -1).sum()              # the mean over counted positions
    cache.update(losses=losses, dlogits=dlogits)
    return loss, cache


def gpt_backward(params: dict[str, Tensor], cache: dict[str, Any]) -> dict[str, Tensor]:
    """Gradients of the mean loss for every parameter, keyed like ``params``.

    Walks ``gpt_forward`` in reverse. The residual stream's gradient ``dresidual`` is the
    one quantity that accumulates: each block adds its LayerNorm-input gradients to it.
    The token table gets two contributions, from the lm_head matmul and from the encoder.
    """
    if "dlogits" not in cache:
        raise ValueError("gpt_backward needs a cache from gpt_forward called with targets")
    config = cache["config"]
    NH = config.n_head
    p = params
    grads: dict[str, Tensor] = {}

    def put(name: str, g: Tensor) -> None:
        if name in p:  # biases absent with bias=False: their gradient is dropped
            grads[name] = g

    wte = p["transformer.wte.weight"]
    dlnf, dwte_head, _ = matmul_backward(cache["dlogits"], cache["lnf"], wte)  # lm_head has no bias
    dresidual, dw, db = layernorm_backward(dlnf, cache["residual_final"], p["transformer.ln_f.weight"],
                                           cache["lnf_mean"], cache["lnf_rstd"])
    put("transformer.ln_f.weight", dw)
    put("transformer.ln_f.bias", db)
    for l in reversed(range(config.n_layer)):
        h = f"transformer.h.{l}."
        a = cache["layers"][l]
        # residual3 = residual2 + fcproj
        dresidual2, dfcproj = residual_backward(dresidual)
        dfch_gelu, dw, db = matmul_backward(dfcproj, a["fch_gelu"], p[h + "mlp.c_proj.weight"])
        put(h + "mlp.c_proj.weight", dw)
        put(h + "mlp.c_proj.bias", db)
        dfch = gelu_backward(dfch_gelu, a["fch"])
        dln2, dw, db = matmul_backward(dfch, a["ln2"], p[h + "mlp.c_fc.weight"])
        put(h + "mlp.c_fc.weight", dw)
        put(h + "mlp.c_fc.bias", db)
        dres2_ln, dw, db = layernorm_backward(dln2, a["residual2"], p[h + "ln_2.weight"], a["ln2_mean"], a["ln2_rstd"])
        put(h + "ln_2.weight", dw)
        put(h + "ln_2.bias", db)
        dresidual2 = dresidual2 + dres2_ln                   # llm.c: layernorm_backward does +=
        # residual2 = residual + attproj
        dresidual, dattproj = residual_backward(dresidual2)
        datty, dw, db = matmul_backward(dattproj, a["atty"], p[h + "attn.c_proj.weight"])
        put(h + "attn.c_proj.weight", dw)
        put(h + "attn.c_proj.bias", db)
        dqkv = attention_backward(datty, a["qkv"], a["att"], NH)
        dln1, dw, db = matmul_backward(dqkv, a["ln1"], p[h + "attn.c_attn.weight"])
        put(h + "attn.c_attn.weight", dw)
        put(h + "attn.c_attn.bias", db)
        dres_ln, dw, db = layernorm_backward(dln1, a["residual"], p[h + "ln_1.weight"], a["ln1_mean"], a["ln1_rstd"])
        put(h + "ln_1.weight", dw)
        put(h + "ln_1.bias", db)
        dresidual = dresidual + dres_ln
    dwte_enc, dwpe = encoder_backward(dresidual, cache["idx"], config.vocab_size, config.block_size)
    grads["transformer.wte.weight"] = dwte_head + dwte_enc   # tied: both uses add up
    grads["transformer.wpe.weight"] = dwpe
    return {name: grads[name] for name in p}                 # the order of params


def gpt_update(params: dict[str, Tensor], grads: dict[str, Tensor], state: dict[str, Any],
               lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0) -> int:
    """AdamW on every parameter in place; returns the new step count.

    ``state`` starts as ``{}`` and keeps the moments ("m", "v") and the step ("t"). Weight
    decay applies to tensors with 2+ dimensions (matmul weights, embeddings), not to biases
    and LayerNorm gains, as llm.c's mixed-precision train_gpt2.cu and the course's trainer
    (``nanogpt.train``); its fp32 reference, train_gpt2_fp32.cu, decays every tensor alike.
    """
    if not state:
        state.update(t=0, m={n: torch.zeros_like(x) for n, x in params.items()},
                     v={n: torch.zeros_like(x) for n, x in params.items()})
    state["t"] += 1
    for name, x in params.items():
        wd = weight_decay if x.dim() >= 2 else 0.0
        adamw_update(x, grads[name], state["m"][name], state["v"][name], state["t"], lr, beta1, beta2, eps, wd)
    return state["t"]
