"""Tests for nanogpt.ridge: closed-form random-feature language model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt.data import load_text, train_val_split
from nanogpt.ridge import (
    FitStats,
    RidgeConfig,
    RidgeLM,
    RidgeMemoryError,
    estimate_memory_bytes,
)
from nanogpt.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def shakespeare() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Tiny Shakespeare, char-level: (train tokens, val tokens, vocab size = 65)."""
    text = load_text()
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text), dtype=torch.long)
    train, val = train_val_split(data)
    return train, val, tok.vocab_size


def tiny_tokens(n: int = 300, vocab: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, (n,), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- determinism
def test_two_fits_are_bit_identical_and_seed_matters(shakespeare):
    train, _, V = shakespeare
    tokens = train[:20_000]
    cfg = RidgeConfig(vocab_size=V, hidden=128)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    a, b = RidgeLM(cfg), RidgeLM(cfg)
    stats = a.fit(tokens, progress=False)
    b.fit(tokens, progress=False)
    assert torch.are_deterministic_algorithms_enabled() == was_deterministic  # restored after fit
    assert a.weights_sha256() == b.weights_sha256()
    assert torch.equal(a.W, b.W)
    assert a.W.dtype == torch.float64 and a.W.shape == (129, V)  # K + bias column

    other = RidgeLM(RidgeConfig(vocab_size=V, hidden=128, seed=1))
    other.fit(tokens, progress=False)
    assert other.weights_sha256() != a.weights_sha256()

    assert isinstance(stats, FitStats) and a.fit_stats is stats
    assert stats.windows == len(tokens) - cfg.context
    assert stats.gram_flops == 2 * stats.windows * 129**2
    assert stats.seconds > 0 and stats.patterns_per_s == pytest.approx(stats.windows / stats.seconds)
    assert stats.gram_gflops_per_s > 0


def test_chunk_size_changes_only_rounding(shakespeare):
    train, _, V = shakespeare
    tokens = train[:8_000]
    fits = {}
    for chunk in (4096, 1000, 1000):  # 1000 does not divide the 7,976 windows
        m = RidgeLM(RidgeConfig(vocab_size=V, hidden=64, chunk_size=chunk))
        m.fit(tokens, progress=False)
        fits.setdefault(chunk, []).append(m.W)
    assert torch.equal(fits[1000][0], fits[1000][1])  # same chunking: bit-identical
    torch.testing.assert_close(fits[1000][0], fits[4096][0], rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------- the solve
@pytest.mark.parametrize("embedding,target",
                         [("random", "onehot"), ("random", "embedding"), ("onehot", "onehot")])
def test_closed_form_matches_direct_solve_and_gradient_vanishes(embedding, target):
    V, C, lam = 7, 3, 0.5
    cfg = RidgeConfig(vocab_size=V, context=C, embed_dim=4, hidden=16, ridge_lambda=lam,
                      embedding=embedding, target=target, chunk_size=50)  # several chunks
    model = RidgeLM(cfg)
    tokens = tiny_tokens(vocab=V)
    model.fit(tokens, progress=False)

    windows = tokens.unfold(0, C + 1, 1)
    H = model.features(windows[:, :C])                                   # (N, K')
    y = windows[:, C]
    Y = F.one_hot(y, V).double() if target == "onehot" else model.embed[y]
    A = H.T @ H + lam * torch.eye(H.shape[1], dtype=torch.float64)
    W_direct = torch.linalg.solve(A, H.T @ Y)
    torch.testing.assert_close(model.W, W_direct, rtol=1e-10, atol=1e-12)

    # gradient of ½‖HW − Y‖² + ½λ‖W‖² at the fitted W is zero
    W = model.W.clone().requires_grad_(True)
    objective = 0.5 * ((H @ W - Y) ** 2).sum() + 0.5 * lam * (W**2).sum()
    objective.backward()
    assert W.grad.abs().max() < 1e-10 * (H.T @ Y).abs().max()
    # ... and it is a minimum: any nudge makes the objective larger
    noise = torch.randn(W.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nudged = W.detach() + 1e-3 * noise
    assert 0.5 * ((H @ nudged - Y) ** 2).sum() + 0.5 * lam * (nudged**2).sum() > objective.item()


@pytest.mark.parametrize("embedding", ["random", "onehot"])
def test_features_are_tanh_of_concatenated_embeddings_times_projection(embedding):
    V, C = 7, 3
    cfg = RidgeConfig(vocab_size=V, context=C, embed_dim=4, hidden=16, embedding=embedding)
    model = RidgeLM(cfg)
    windows = tiny_tokens(vocab=V).unfold(0, C, 1)[:40]                  # (40, C)
    E = model.embed if embedding == "random" else torch.eye(V, dtype=torch.float64)
    X = E[windows].reshape(len(windows), -1)                             # (40, C·D), concatenated
    expected = torch.tanh(X @ model.proj + model.b)
    H = model.features(windows)
    assert H.shape == (40, 17) and H.dtype == torch.float64
    torch.testing.assert_close(H[:, :16], expected, rtol=1e-12, atol=1e-12)
    assert torch.all(H[:, 16] == 1.0)
    # pre-activations are scaled to about unit variance, so tanh is neither linear nor saturated
    assert 0.2 < H[:, :16].std() < 0.95


def test_logit_scale_minimises_training_cross_entropy():
    V, C = 7, 3
    model = RidgeLM(RidgeConfig(vocab_size=V, context=C, embed_dim=4, hidden=16))
    # a learnable pattern: a noisy cycle, so the best scale is finite and positive
    gen = torch.Generator().manual_seed(0)
    tokens = (torch.arange(400) + (torch.rand(400, generator=gen) < 0.3).long()) % V
    model.fit(tokens, progress=False)  # 397 windows <= chunk_size: calibrated on all of them
    beta = model.logit_scale
    assert beta > 0
    best = model.loss(tokens)
    for factor in (0.9, 1.1):
        model.logit_scale = beta * factor
        assert model.loss(tokens) > best
    model.logit_scale = beta


def test_evaluate_matches_unchunked_cross_entropy():
    V, C = 7, 3
    model = RidgeLM(RidgeConfig(vocab_size=V, context=C, embed_dim=4, hidden=16, chunk_size=64))
    tokens = tiny_tokens(vocab=V)
    model.fit(tokens, progress=False)
    windows = tokens.unfold(0, C + 1, 1)
    logits = model.logits(windows[:, :C])
    assert logits.shape == (len(windows), V)
    result = model.evaluate(tokens)
    assert result["windows"] == len(windows)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, windows[:, C]).item(), rel=1e-12)
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == windows[:, C]).double().mean().item())
    assert model.loss(tokens) == result["loss"]


# ---------------------------------------------------------------- readouts
def test_clipped_readout_is_log_of_clipped_renormalised_scores():
    V, C, eps = 7, 3, 0.01
    tokens = tiny_tokens(vocab=V)
    cfg = RidgeConfig(vocab_size=V, context=C, embed_dim=4, hidden=16, chunk_size=64)
    soft = RidgeLM(cfg)
    soft.fit(tokens, progress=False)
    clip = RidgeLM(RidgeConfig(vocab_size=V, context=C, embed_dim=4, hidden=16, chunk_size=64,
                               readout="clipped", clip_floor=eps))
    clip.fit(tokens, progress=False)
    # the readout changes no weight: same bits, same hash
    assert torch.equal(soft.W, clip.W) and soft.weights_sha256() == clip.weights_sha256()
    windows = tokens.unfold(0, C + 1, 1)
    scores = soft.logits(windows[:, :C]) / soft.logit_scale                # s = hW
    p = scores.clamp(min=eps)
    p = p / p.sum(1, keepdim=True)
    logits = clip.logits(windows[:, :C])
    assert torch.allclose(logits, p.log(), rtol=0, atol=1e-12)
    assert torch.allclose(logits.exp().sum(1), torch.ones(len(windows), dtype=torch.float64))
    # the per-call override gives the same numbers as the config option, and the default is unchanged
    assert torch.equal(soft.logits(windows[:, :C], readout="clipped", clip_floor=eps), logits)
    assert torch.equal(clip.logits(windows[:, :C], readout="softmax"), soft.logits(windows[:, :C]))
    result = clip.evaluate(tokens)
    expected = -p.log().gather(1, windows[:, C:]).mean().item()
    assert result["loss"] == pytest.approx(expected, rel=1e-12)
    assert soft.evaluate(tokens, readout="clipped", clip_floor=eps) == result
    assert RidgeConfig(vocab_size=V).readout == "softmax"


def test_clipped_readout_is_deterministic_and_reproducible():
    V, C = 7, 3
    tokens = tiny_tokens(vocab=V, seed=3)
    cfg = RidgeConfig(vocab_size=V, context=C, embed_dim=4, hidden=16, readout="clipped")
    a, b = RidgeLM(cfg), RidgeLM(cfg)
    a.fit(tokens, progress=False)
    b.fit(tokens, progress=False)
    assert a.weights_sha256() == b.weights_sha256()
    assert torch.equal(a.logits(tokens.unfold(0, C, 1)), b.logits(tokens.unfold(0, C, 1)))
    assert a.evaluate(tokens) == b.evaluate(tokens)
    assert torch.equal(a.generate(tokens[:C], 20), b.generate(tokens[:C], 20))
    with pytest.raises(ValueError, match="readout"):
        a.logits(tokens.unfold(0, C, 1), readout="argmax")


def test_clipped_readout_beats_softmax_on_tiny_shakespeare(shakespeare):
    train, val, V = shakespeare
    model = RidgeLM(RidgeConfig(vocab_size=V, hidden=256))
    model.fit(train[:100_000], progress=False)
    soft = model.evaluate(val[:20_000])
    clip = model.evaluate(val[:20_000], readout="clipped", clip_floor=1e-3)
    # measured (full validation text, chapter 8): 3.31 softmax vs 3.07 clipped
    assert clip["loss"] < soft["loss"] - 0.1
    assert clip["accuracy"] == pytest.approx(soft["accuracy"], abs=0.01)


# ---------------------------------------------------------------- it learns
def test_learns_tiny_shakespeare(shakespeare):
    train, val, V = shakespeare
    uniform = math.log(V)  # 4.17
    model = RidgeLM(RidgeConfig(vocab_size=V, hidden=256))
    model.fit(train[:100_000], progress=False)
    result = model.evaluate(val[:20_000])
    # measured: loss 3.32, accuracy 0.224 (uniform: 4.17 and 0.015)
    assert result["loss"] < 3.55
    assert result["accuracy"] > 0.18

    emb = RidgeLM(RidgeConfig(vocab_size=V, hidden=256, target="embedding"))
    emb.fit(train[:100_000], progress=False)
    result = emb.evaluate(val[:20_000])
    # measured: loss 3.73, accuracy 0.107 (nearest embedding)
    assert result["loss"] < uniform - 0.3
    assert result["accuracy"] > 0.08


def test_generate_is_reproducible_and_valid():
    V, C = 7, 3
    model = RidgeLM(RidgeConfig(vocab_size=V, context=C, embed_dim=4, hidden=16))
    tokens = tiny_tokens(vocab=V)
    model.fit(tokens, progress=False)
    prompt = tokens[:5]
    out = model.generate(prompt, 30)
    assert out.shape == (35,) and torch.equal(out[:5], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < V
    assert torch.equal(out, model.generate(prompt, 30))  # default generator is seeded
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(model.generate(prompt, 30, generator=g1), model.generate(prompt, 30, generator=g2))
    greedy = model.generate(prompt, 1, temperature=0)
    assert greedy[-1] == model.logits(prompt[-C:][None]).argmax()
    with pytest.raises(ValueError, match="context"):
        model.generate(prompt[:2], 5)


@pytest.mark.parametrize("target", ["onehot", "embedding"])
def test_greedy_follows_the_scores_when_the_logit_scale_is_zero(target):
    """β = 0 is what the calibration returns when the scores do no better than uniform; then every
    softmax logit β·s is 0, so greedy decoding must read the scores themselves (the prediction
    ``evaluate``'s accuracy counts), not the argmax of a row of zeros, which is always token 0."""
    V, C = 7, 3
    model = RidgeLM(RidgeConfig(vocab_size=V, context=C, embed_dim=4, hidden=16, target=target))
    tokens = tiny_tokens(vocab=V)
    model.fit(tokens, progress=False)
    model.logit_scale = 0.0
    out = model.generate(tokens[:C], 20, temperature=0)
    windows = out.unfold(0, C, 1)[:-1]                                   # the window before each new token
    scores = model.scores(windows)
    assert scores.shape == (20, V)
    assert torch.equal(out[C:], scores.argmax(1))
    assert out[C:].unique().numel() > 1                                  # not token 0 every time
    # with β > 0 the scores and the logits agree on the greedy token
    model.fit(tokens, progress=False)
    assert model.logit_scale > 0
    torch.testing.assert_close(model.logits(windows), model.logit_scale * model.scores(windows))


def test_unfitted_model_and_bad_tokens_raise():
    model = RidgeLM(RidgeConfig(vocab_size=7, context=3, embed_dim=4, hidden=16))
    with pytest.raises(RuntimeError, match="fit"):
        model.loss(tiny_tokens(vocab=7))
    with pytest.raises(RuntimeError, match="fit"):
        model.weights_sha256()
    with pytest.raises(ValueError, match="token ids"):
        model.fit(torch.tensor([0, 1, 2, 7, 3, 4]), progress=False)
    with pytest.raises(ValueError, match="more than context"):
        model.fit(torch.tensor([0, 1, 2]), progress=False)


# ---------------------------------------------------------------- memory guard
def test_memory_guard_raises_before_allocating():
    cfg = RidgeConfig(vocab_size=65, hidden=1_000_000)
    needed = estimate_memory_bytes(cfg)
    assert needed >= 2 * 8 * 1_000_000**2  # HᵀH and its Cholesky factor, float64
    with pytest.raises(RidgeMemoryError, match=r"K=1000000") as info:
        RidgeLM(cfg, memory_limit_bytes=2**30)  # 16 TB would fail or hang if it were allocated
    assert isinstance(info.value, MemoryError)
    assert f"{needed:,}" in str(info.value) and f"{2**30:,}" in str(info.value)
    with pytest.raises(RidgeMemoryError, match="K=1000000"):
        RidgeLM(cfg)  # the default limit (half the RAM) refuses it too


def test_memory_estimate_grows_as_k_squared_and_small_configs_pass():
    # arithmetic only: nothing is allocated. At large K the 2·K'² float64 term dominates.
    small, big = RidgeConfig(vocab_size=65, hidden=32_768), RidgeConfig(vocab_size=65, hidden=65_536)
    assert 3.5 < estimate_memory_bytes(big) / estimate_memory_bytes(small) < 4.0
    assert estimate_memory_bytes(small, chunk_size=8192) > estimate_memory_bytes(small, chunk_size=1024)
    RidgeLM(RidgeConfig(vocab_size=7, context=3, embed_dim=4, hidden=16), memory_limit_bytes=10**7)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("field,value", [
    ("vocab_size", 0), ("context", -1), ("embed_dim", 2.5), ("hidden", 0), ("hidden", True),
    ("chunk_size", 0), ("seed", -1), ("ridge_lambda", 0.0), ("ridge_lambda", float("nan")),
    ("ridge_lambda", "0.5"), ("embedding", "learned"), ("target", "logits"), ("bias", 1),
    ("readout", "argmax"), ("clip_floor", 0.0), ("clip_floor", 1.0), ("clip_floor", "1e-3"),
])
def test_config_rejects_bad_values(field, value):
    kwargs = {"vocab_size": 65, field: value}
    with pytest.raises(ValueError, match=f"RidgeConfig.{field}"):
        RidgeConfig(**kwargs)


def test_config_rejects_embedding_target_with_onehot_embeddings():
    with pytest.raises(ValueError, match="RidgeConfig.target"):
        RidgeConfig(vocab_size=65, embedding="onehot", target="embedding")


def test_config_rejects_clipped_readout_with_embedding_targets():
    with pytest.raises(ValueError, match="RidgeConfig.readout"):
        RidgeConfig(vocab_size=65, target="embedding", readout="clipped")


def test_config_derived_sizes():
    cfg = RidgeConfig(vocab_size=65)
    assert (cfg.token_dim, cfg.n_features, cfg.n_outputs) == (64, 1025, 65)
    cfg = RidgeConfig(vocab_size=65, embedding="onehot", bias=False, hidden=100)
    assert (cfg.token_dim, cfg.n_features, cfg.n_outputs) == (65, 100, 65)
    cfg = RidgeConfig(vocab_size=65, target="embedding", embed_dim=32)
    assert cfg.n_outputs == 32


def test_a_subclass_can_add_features_and_fit_evaluates_them():
    """fit sizes HᵀH from ``n_features``, so extra columns need only ``features`` and ``n_features``."""
    class WithLastToken(RidgeLM):
        @property
        def n_features(self) -> int:
            return self.config.n_features + self.config.vocab_size

        def features(self, windows):
            windows = torch.as_tensor(windows, dtype=torch.long, device=self.device)
            last = torch.nn.functional.one_hot(windows[:, -1], self.config.vocab_size).to(torch.float64)
            return torch.cat([super().features(windows), last], 1)

    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 5, (600,), generator=g)
    jump = torch.rand(600, generator=g) < 0.2
    tokens = [0]
    for i in range(1, 600):  # mostly "last token plus one": a bigram rule the last token's one-hot states
        tokens.append(int(noise[i]) if jump[i] else (tokens[-1] + 1) % 5)
    tokens = torch.tensor(tokens)
    cfg = RidgeConfig(vocab_size=5, context=3, embed_dim=4, hidden=8, chunk_size=64)
    plain, extended = RidgeLM(cfg), WithLastToken(cfg)
    plain.fit(tokens, progress=False)
    extended.fit(tokens, progress=False)
    assert extended.W.shape == (cfg.n_features + 5, 5)
    ours, theirs = extended.evaluate(tokens), plain.evaluate(tokens)
    assert ours["loss"] < theirs["loss"] and ours["accuracy"] > theirs["accuracy"]
