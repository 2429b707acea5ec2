"""nanogpt.course.manual: every hand-written backward against autograd, the whole GPT against
nanogpt.model.GPT, and AdamW against torch.optim.AdamW, all in float64."""
from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt.course import manual as M
from nanogpt.attention import attention_weights
from nanogpt.model import GPT, GPTConfig

DT = torch.float64
TOL = 1e-10  # relative to the reference's largest magnitude (at least 1)
FEW = settings(max_examples=8, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol * scale:.3e}"


def rand(g: torch.Generator, *shape: int, scale: float = 1.0, grad: bool = False) -> torch.Tensor:
    return (torch.randn(*shape, generator=g, dtype=DT) * scale).requires_grad_(grad)


def vjp(out: torch.Tensor, inputs: list[torch.Tensor], dout: torch.Tensor) -> list[torch.Tensor]:
    """Autograd's gradients of <out, dout> w.r.t. inputs."""
    return list(torch.autograd.grad(out, inputs, dout))


# --- module hygiene ---------------------------------------------------------------------


def test_every_kernel_function_is_mapped_and_documented():
    public = {n for n in M.__all__ if callable(getattr(M, n))}
    assert public - {"params_from_model"} == set(M.LLMC_KERNELS)
    for name in public:
        fn = getattr(M, name)
        assert inspect.getdoc(fn), f"{name} has no docstring"
        hints = inspect.signature(fn)
        assert hints.return_annotation is not inspect.Signature.empty, f"{name} has no return type hint"


def test_imports_only_torch_and_stdlib():
    tree = ast.parse(Path(M.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the module stands alone"
            roots.add(node.module.split(".")[0])
    assert roots <= {"torch"} | set(sys.stdlib_module_names), roots


# --- layer by layer against autograd ------------------------------------------------------


@FEW
@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 6), C=st.integers(1, 6), V=st.integers(1, 4))
def test_encoder(seed, B, T, C, V):
    g = torch.Generator().manual_seed(seed)
    block = T + 2
    wte, wpe = rand(g, V, C, grad=True), rand(g, block, C, grad=True)
    idx = torch.randint(0, V, (B, T), generator=g)  # small V: repeated tokens, the scatter-add case
    ref = F.embedding(idx, wte) + F.embedding(torch.arange(T), wpe)
    out = M.encoder_forward(wte.detach(), wpe.detach(), idx)
    assert_close(out, ref.detach(), what="encoder out")
    dout = rand(g, B, T, C)
    dwte, dwpe = M.encoder_backward(dout, idx, V, block)
    ref_dwte, ref_dwpe = vjp(ref, [wte, wpe], dout)
    assert_close(dwte, ref_dwte, what="dwte")
    assert_close(dwpe, ref_dwpe, what="dwpe")
    assert torch.all(dwpe[T:] == 0)


@FEW
@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 5), C=st.integers(2, 9), bias=st.booleans())
def test_layernorm(seed, B, T, C, bias):
    g = torch.Generator().manual_seed(seed)
    x = rand(g, B, T, C, scale=3.0, grad=True)
    x.data += rand(g, B, T, 1)  # rows with non-zero means
    w = rand(g, C, grad=True)
    b = rand(g, C, grad=True) if bias else None
    ref = F.layer_norm(x, (C,), w, b, eps=1e-5)
    out, mean, rstd = M.layernorm_forward(x.detach(), w.detach(), b.detach() if bias else None)
    assert_close(out, ref.detach(), what="ln out")
    var, mu = torch.var_mean(x.detach(), dim=-1, unbiased=False)
    assert_close(mean, mu, what="mean")
    assert_close(rstd, 1.0 / torch.sqrt(var + 1e-5), what="rstd")
    dout = rand(g, B, T, C)
    dinp, dw, db = M.layernorm_backward(dout, x.detach(), w.detach(), mean, rstd)
    refs = vjp(ref, [x, w] + ([b] if bias else []), dout)
    assert_close(dinp, refs[0], what="dinp")
    assert_close(dw, refs[1], what="dweight")
    if bias:
        assert_close(db, refs[2], what="dbias")


@FEW
@given(seed=seeds, lead=st.lists(st.integers(1, 4), min_size=1, max_size=2), C=st.integers(1, 7),
       OC=st.integers(1, 7), bias=st.booleans())
def test_matmul(seed, lead, C, OC, bias):
    g = torch.Generator().manual_seed(seed)
    x = rand(g, *lead, C, grad=True)
    w = rand(g, OC, C, grad=True)  # llm.c / nn.Linear layout
    b = rand(g, OC, grad=True) if bias else None
    ref = F.linear(x, w, b)
    out = M.matmul_forward(x.detach(), w.detach(), b.detach() if bias else None)
    assert_close(out, ref.detach(), what="matmul out")
    dout = rand(g, *lead, OC)
    dinp, dw, db = M.matmul_backward(dout, x.detach(), w.detach())
    refs = vjp(ref, [x, w] + ([b] if bias else []), dout)
    assert_close(dinp, refs[0], what="dinp")
    assert_close(dw, refs[1], what="dweight")
    if bias:
        assert_close(db, refs[2], what="dbias")


def sdpa_from_qkv(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """The model's CausalSelfAttention.forward between c_attn and c_proj."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = qkv.split(C, dim=2)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)


@FEW
@given(seed=seeds, B=st.integers(1, 2), T=st.integers(1, 6), NH=st.integers(1, 3), HS=st.integers(1, 4))
def test_attention(seed, B, T, NH, HS):
    g = torch.Generator().manual_seed(seed)
    C = NH * HS
    qkv = rand(g, B, T, 3 * C, scale=2.0, grad=True)
    ref = sdpa_from_qkv(qkv, NH)
    out, att = M.attention_forward(qkv.detach(), NH)
    assert_close(out, ref.detach(), what="attention out")
    q, k, _ = M.permute_qkv(qkv.detach(), NH)
    assert_close(att, attention_weights(q, k), what="att")  # the course's own probability maps
    assert torch.all(att.triu(diagonal=1) == 0), "attention looked ahead"
    dout = rand(g, B, T, C)
    dqkv = M.attention_backward(dout, qkv.detach(), att, NH)
    assert_close(dqkv, vjp(ref, [qkv], dout)[0], what="dqkv")


@FEW
@given(seed=seeds, B=st.integers(1, 2), T=st.integers(1, 5), NH=st.integers(1, 3), HS=st.integers(1, 3))
def test_permutes_are_inverses_and_split_q_k_v_in_order(seed, B, T, NH, HS):
    g = torch.Generator().manual_seed(seed)
    C = NH * HS
    qkv = rand(g, B, T, 3 * C)
    q, k, v = M.permute_qkv(qkv, NH)
    assert q.shape == (B, NH, T, HS)
    assert torch.equal(M.unpermute(q), qkv[..., :C])  # q first, then k, then v along the last dim
    assert torch.equal(M.unpermute(k), qkv[..., C:2 * C])
    assert torch.equal(M.unpermute(v), qkv[..., 2 * C:])
    assert torch.equal(M.permute_qkv_backward(q, k, v), qkv)
    assert torch.equal(M.unpermute_backward(M.unpermute(q), NH), q)


@FEW
@given(seed=seeds, n=st.integers(1, 40))
def test_gelu(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = rand(g, n, scale=3.0)
    x = torch.cat([x, torch.tensor([0.0, -30.0, 30.0, 1e3, -1e3], dtype=DT)]).requires_grad_(True)
    ref = F.gelu(x, approximate="tanh")
    assert_close(M.gelu_forward(x.detach()), ref.detach(), what="gelu out")
    dout = rand(g, x.numel())
    dinp = M.gelu_backward(dout, x.detach())
    assert torch.isfinite(dinp).all()
    assert_close(dinp, vjp(ref, [x], dout)[0], what="gelu dinp")


def test_residual():
    g = torch.Generator().manual_seed(0)
    a, b = rand(g, 2, 3, 4, grad=True), rand(g, 2, 3, 4, grad=True)
    ref = a + b
    assert_close(M.residual_forward(a.detach(), b.detach()), ref.detach())
    dout = rand(g, 2, 3, 4)
    da, db = M.residual_backward(dout)
    ra, rb = vjp(ref, [a, b], dout)
    assert_close(da, ra)
    assert_close(db, rb)


@FEW
@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 5), V=st.integers(2, 11), ignore=st.booleans())
def test_fused_classifier(seed, B, T, V, ignore):
    g = torch.Generator().manual_seed(seed)
    logits = rand(g, B, T, V, scale=4.0, grad=True)
    targets = torch.randint(0, V, (B, T), generator=g)
    if ignore and B * T > 1:
        targets[0, 0] = -1  # GPT.forward's ignore_index
    ref_losses = F.cross_entropy(logits.detach().view(-1, V), targets.view(-1), ignore_index=-1, reduction="none")
    ref_loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)
    losses, dlogits = M.fused_classifier(logits.detach(), targets)
    assert_close(losses, ref_losses.view(B, T), what="losses")
    assert_close(losses.sum() / (targets != -1).sum(), ref_loss.detach(), what="mean loss")
    ref_dlogits = vjp(ref_loss, [logits], torch.tensor(1.0, dtype=DT))[0]
    assert_close(dlogits, ref_dlogits, what="dlogits")
    if not ignore:  # llm.c's formula, literally
        probs = torch.softmax(logits.detach(), dim=-1)
        assert_close(dlogits, (probs - F.one_hot(targets, V).to(DT)) / (B * T), what="(p - y)/BT")


@FEW
@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 4), V=st.integers(2, 9))
def test_crossentropy_softmax_backward_with_any_dlosses(seed, B, T, V):
    g = torch.Generator().manual_seed(seed)
    logits = rand(g, B, T, V, scale=3.0, grad=True)
    targets = torch.randint(0, V, (B, T), generator=g)
    ref_losses = F.cross_entropy(logits.view(-1, V), targets.view(-1), reduction="none").view(B, T)
    probs = M.softmax_forward(logits.detach())
    assert_close(probs, torch.softmax(logits.detach(), dim=-1), what="probs")
    assert_close(M.crossentropy_forward(probs, targets), ref_losses.detach(), what="losses")
    dlosses = rand(g, B, T)
    dlogits = M.crossentropy_softmax_backward(dlosses, probs, targets)
    assert_close(dlogits, vjp(ref_losses, [logits], dlosses)[0], what="dlogits")


def test_classifier_is_stable_for_large_logits():
    logits = torch.tensor([[[1000.0, 0.0, -1000.0]]], dtype=DT)
    losses, dlogits = M.fused_classifier(logits, torch.tensor([[1]]))
    assert torch.isfinite(losses).all() and torch.isfinite(dlogits).all()
    assert losses.item() == pytest.approx(1000.0)


# --- the whole GPT ----------------------------------------------------------------------------


def tiny_model(bias: bool = True, seed: int = 0) -> tuple[GPT, GPTConfig]:
    cfg = GPTConfig(vocab_size=37, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=bias)
    torch.manual_seed(seed)
    model = GPT(cfg).double()
    with torch.no_grad():  # move every parameter off its init (LN gains 1, biases 0) so each one matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, cfg


@pytest.mark.parametrize("bias, T, ignore", [(True, 8, False), (False, 5, True)])
def test_gpt_forward_backward_matches_autograd(bias, T, ignore):
    model, cfg = tiny_model(bias)
    g = torch.Generator().manual_seed(1)
    B = 3
    idx = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    if ignore:
        targets[1, 2] = -1
    params = M.params_from_model(model)
    assert list(params) == [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in params  # tied: one table

    logits, loss = model(idx, targets)
    loss.backward()
    m_loss, cache = M.gpt_forward(params, idx, targets, cfg)
    assert_close(m_loss, loss.detach(), what="loss")
    assert_close(cache["logits"], logits.detach(), what="logits")

    grads = M.gpt_backward(params, cache)
    assert list(grads) == list(params)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 1e-8, f"{name}: trivial autograd gradient"
        assert grads[name].abs().max() > 1e-8, f"{name}: trivial manual gradient"
        assert_close(grads[name], p.grad, what=name)
    # the tied table really gets both contributions: the head's alone would be wrong
    dwte_head = cache["dlogits"].reshape(-1, cfg.vocab_size).T @ cache["lnf"].reshape(-1, cfg.n_embd)
    assert (grads["transformer.wte.weight"] - dwte_head).abs().max() > 1e-6


def test_gpt_forward_without_targets_and_errors():
    model, cfg = tiny_model()
    params = M.params_from_model(model)
    idx = torch.randint(0, cfg.vocab_size, (2, 4))
    loss, cache = M.gpt_forward(params, idx, None, cfg)
    assert loss is None
    assert_close(cache["logits"], model(idx)[0].detach())
    with pytest.raises(ValueError, match="targets"):
        M.gpt_backward(params, cache)
    with pytest.raises(ValueError, match="block_size"):
        M.gpt_forward(params, torch.zeros(1, cfg.block_size + 1, dtype=torch.long), None, cfg)
    with pytest.raises(ValueError, match="dropout"):
        M.gpt_forward(params, idx, None, GPTConfig(**{**cfg.to_dict(), "dropout": 0.1}))


# --- AdamW --------------------------------------------------------------------------------------


def test_adamw_update_matches_torch():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (7,), (2, 3, 4)]
    hp = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours = [rand(g, *s) for s in shapes]
    start = [x.clone() for x in ours]
    theirs = [x.clone().requires_grad_(True) for x in ours]
    opt = torch.optim.AdamW(theirs, **hp)
    ms = [torch.zeros_like(x) for x in ours]
    vs = [torch.zeros_like(x) for x in ours]
    for t in range(1, 6):
        grads = [rand(g, *s) for s in shapes]
        for p, gr in zip(theirs, grads):
            p.grad = gr.clone()
        opt.step()
        for x, gr, m, v in zip(ours, grads, ms, vs):
            M.adamw_update(x, gr, m, v, t, hp["lr"], *hp["betas"], hp["eps"], hp["weight_decay"])
    for x, x0, p, m, v in zip(ours, start, theirs, ms, vs):
        assert (x - x0).abs().max() > 1e-3  # the comparison is not vacuous
        assert_close(x, p.detach(), what="param")
        assert_close(m, opt.state[p]["exp_avg"], what="m")
        assert_close(v, opt.state[p]["exp_avg_sq"], what="v")
    with pytest.raises(ValueError):
        M.adamw_update(ours[0], grads[0], ms[0], vs[0], 0)


def test_gpt_update_matches_torch_training():
    """Three full training steps, manual vs nn.Module + torch AdamW with the same decay groups."""
    model, cfg = tiny_model(seed=3)
    params = M.params_from_model(model)
    start = {n: x.clone() for n, x in params.items()}
    hp = dict(weight_decay=0.1, learning_rate=1e-2, betas=(0.9, 0.95))
    # the course's decay groups (llm.c's too): matrices and embeddings decay, biases and gains do not
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": hp["weight_decay"]},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=hp["learning_rate"], betas=hp["betas"], eps=1e-8)
    state: dict = {}
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        idx = torch.randint(0, cfg.vocab_size, (2, 8), generator=g)
        targets = torch.randint(0, cfg.vocab_size, (2, 8), generator=g)
        opt.zero_grad(set_to_none=True)
        _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        _, cache = M.gpt_forward(params, idx, targets, cfg)
        M.gpt_update(params, M.gpt_backward(params, cache), state, lr=hp["learning_rate"],
                     beta1=hp["betas"][0], beta2=hp["betas"][1], weight_decay=hp["weight_decay"])
    assert state["t"] == 3
    for name, p in model.named_parameters():
        assert (params[name] - start[name]).abs().max() > 1e-4, f"{name} did not move"
        assert_close(params[name], p.detach(), tol=1e-9, what=name)


def test_manual_training_lowers_the_loss():
    model, cfg = tiny_model(seed=4)
    params = M.params_from_model(model)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, cfg.vocab_size, (2, 8), generator=g)
    targets = torch.roll(idx, -1, dims=1)
    state: dict = {}
    losses = []
    for _ in range(8):
        loss, cache = M.gpt_forward(params, idx, targets, cfg)
        losses.append(loss.item())
        M.gpt_update(params, M.gpt_backward(params, cache), state, lr=1e-2, weight_decay=0.0)
    final, _ = M.gpt_forward(params, idx, targets, cfg)
    assert losses[1] < losses[0]  # the very first step already helps
    assert final.item() < 0.7 * losses[0], (losses, final.item())
