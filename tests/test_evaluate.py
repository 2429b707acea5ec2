"""Loss estimates over a whole split and by position."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from nanogpt import GPT
from nanogpt.bigram import BigramLanguageModel
from nanogpt.evaluate import evaluate_full, loss_by_position
from train_helpers import TINY, TOKENS


def test_evaluate_full_counts_every_position_once():
    torch.manual_seed(0)
    model = BigramLanguageModel(37)  # context-free, so windows cannot change any prediction
    tokens = TOKENS[:1_003]
    expected = F.cross_entropy(model(tokens[None, :-1])[0][0], tokens[1:]).item()
    assert evaluate_full(model, tokens, block_size=7, batch_size=5) == pytest.approx(expected, rel=1e-6)


def test_loss_by_position_splits_the_full_split_loss_by_context():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    tokens = TOKENS[: 16 * 20 + 1]  # 20 whole windows, no tail
    curve = loss_by_position(model, tokens, block_size=16, batch_size=6)
    assert curve.shape == (16,)
    assert curve.mean().item() == pytest.approx(evaluate_full(model, tokens, block_size=16), rel=1e-5)
    # By hand: the loss at position 3 of every window.
    x = tokens[:-1].view(20, 16)
    y = tokens[1:].view(20, 16)
    logits, _ = model(x)
    assert curve[3].item() == pytest.approx(F.cross_entropy(logits[:, 3], y[:, 3]).item(), rel=1e-5)


@pytest.mark.parametrize("n_tokens", [0, 1])
def test_a_split_too_short_to_score_is_an_error_not_a_division_by_zero(n_tokens):
    model = GPT(TINY)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate_full(model, TOKENS[:n_tokens], block_size=16)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        loss_by_position(model, TOKENS[:n_tokens], block_size=16)
    with pytest.raises(ValueError, match="more than block_size=16"):
        loss_by_position(model, TOKENS[:16], block_size=16)  # no full window with its targets


class FailingGPT(GPT):
    def forward(self, idx, targets=None, cache=None):
        raise RuntimeError("out of memory")


@pytest.mark.parametrize("score", [evaluate_full, loss_by_position])
def test_a_failed_evaluation_gives_the_model_back_in_training_mode(score):
    model = FailingGPT(TINY).train()
    with pytest.raises(RuntimeError, match="out of memory"):
        score(model, TOKENS[:100], block_size=16)
    assert model.training
