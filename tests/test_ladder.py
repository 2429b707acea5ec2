"""The ablation ladder: every stage builds, is causal, and its top rung is the GPT architecture."""
import pytest
import torch

from nanogpt.attention import naive_twin
from nanogpt.course.ladder import STAGES, LadderLM
from nanogpt.model import GPT, GPTConfig

V, T, C, NH, NL = 11, 8, 16, 4, 2


def make(stage: str, **kw) -> LadderLM:
    torch.manual_seed(0)
    return LadderLM(V, T, C, NH, NL, stage, **kw)


@pytest.mark.parametrize("stage", STAGES)
def test_shapes_and_loss(stage):
    model = make(stage)
    idx = torch.randint(V, (3, T))
    logits, loss = model(idx)
    assert logits.shape == (3, T, V) and loss is None
    logits, loss = model(idx[:, :5], idx[:, 1:6])  # shorter than block_size works too
    assert logits.shape == (3, 5, V)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.vocab_size == V


@pytest.mark.parametrize("stage", STAGES)
def test_causal(stage):
    model = make(stage).eval()
    idx = torch.randint(V, (2, T))
    changed = idx.clone()
    changed[:, 5] = (idx[:, 5] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)  # earlier positions cannot see position 5
    assert not torch.allclose(a[:, 5], b[:, 5])           # position 5 sees its own token


@pytest.mark.parametrize("stage", STAGES)
def test_generate(stage):
    model = make(stage).eval()
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 2 * T, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 2 * T + 1)  # longer than block_size: the context is cropped
    assert int(out.min()) >= 0 and int(out.max()) < V


def test_unknown_stage():
    with pytest.raises(ValueError, match="unknown stage"):
        make("transformer")


def test_each_stage_adds_parameters_in_order():
    counts = [make(s).num_params() for s in STAGES]
    assert counts == sorted(counts)  # each rung only adds (dropout adds none)
    assert counts[-1] == counts[-2]


@pytest.mark.parametrize("attention", ["fused", "naive"])
def test_layernorm_stage_is_gpt_plus_untied_head(attention):
    # GPT ties lm_head to the token embedding and gives it no bias; the ladder keeps the
    # video's separate nn.Linear with a bias: that is the whole difference.
    gpt = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=NL, n_head=NH, n_embd=C, bias=True))
    if attention == "naive":
        gpt = naive_twin(gpt)  # per-head attention holds the same number of parameters
    ladder = make("+layernorm")
    assert ladder.num_params() == gpt.num_params() + V * C + V


def test_layernorm_stage_computes_what_gpt_computes():
    gpt = naive_twin(GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=NL, n_head=NH, n_embd=C))).eval()
    ladder = make("+layernorm").eval()
    with torch.no_grad():
        ladder.token_embedding.weight.copy_(gpt.transformer.wte.weight)
        ladder.position_embedding.weight.copy_(gpt.transformer.wpe.weight)
        ladder.blocks.load_state_dict(gpt.transformer.h.state_dict())  # the same Block class
        ladder.ln_f.load_state_dict(gpt.transformer.ln_f.state_dict())
        ladder.lm_head.weight.copy_(gpt.lm_head.weight)
        ladder.lm_head.bias.zero_()
    idx = torch.randint(V, (2, T))
    assert torch.allclose(ladder(idx)[0], gpt(idx)[0], atol=1e-5)


def test_dropout_only_in_last_stage():
    assert make("+layernorm", dropout=0.5).config.dropout == 0.0
    model = make("+dropout", dropout=0.5)
    idx = torch.randint(V, (2, T))
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])  # dropout masks differ per call
    model.eval()
    assert torch.allclose(model(idx)[0], model(idx)[0])
