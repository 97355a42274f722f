"""CORD loss terms: hand-computed values, invariants and finite-difference gradients."""

import math

import torch

from cordlite.objective.logprobs import student_token_terms
from cordlite.objective.losses import (forward_kl_per_token, policy_gradient_loss, reverse_kl_per_token, sft_loss,
                                       weighted_token_loss)
from cordlite.models.sampling import completion_mask
from cordlite.objective.weights import cord_token_weights


def test_reverse_kl_by_hand():
    # p_s = [1/2, 1/2], p_t = [1/4, 3/4]: D = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    s = torch.tensor([0.5, 0.5]).log()
    q = torch.tensor([0.25, 0.75]).log()
    assert math.isclose(reverse_kl_per_token(s, q).item(), 0.5 * math.log(4 / 3), rel_tol=1e-6)
    # forward KL swaps the roles: 1/4 ln(1/2) + 3/4 ln(3/2)
    assert math.isclose(forward_kl_per_token(s, q).item(), 0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel_tol=1e-6)


def test_identical_distributions_give_zero_kl():
    lp = torch.randn(3, 4, 11).log_softmax(-1)
    assert torch.allclose(reverse_kl_per_token(lp, lp), torch.zeros(3, 4), atol=1e-6)
    assert torch.allclose(forward_kl_per_token(lp, lp), torch.zeros(3, 4), atol=1e-6)


def test_weighted_token_loss_sums_over_tokens_and_averages_over_sequences():
    kl = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w = torch.tensor([[2.0, 1.0, 1.0], [3.0, 0.0, 0.0]])
    loss, stats = weighted_token_loss(kl, w, mask, "sum")
    assert math.isclose(loss.item(), ((2 + 2 + 3) + 12) / 2)  # 9.5
    loss_mean, _ = weighted_token_loss(kl, w, mask, "mean")
    assert math.isclose(loss_mean.item(), (7 / 3 + 12) / 2, rel_tol=1e-6)
    assert math.isclose(stats["kl_mean"], (1 + 2 + 3 + 4) / 4)
    assert stats["weight_max"] == 3.0


def test_policy_gradient_loss_and_its_gradient_by_hand():
    lp = torch.tensor([[-1.0, -1.0], [-3.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([0.5, -0.5])
    loss, _ = policy_gradient_loss(lp, mask, adv)
    # seq log-probs [-2, -3]: L = -(0.5 * -2 + -0.5 * -3) / 2 = -0.25
    assert math.isclose(loss.item(), -0.25)
    loss.backward()
    # dL/dlp = -A_i * mask / N; the masked token gets exactly zero gradient
    assert torch.equal(lp.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.0]]))


def test_zero_advantage_gives_zero_policy_gradient():
    lp = torch.randn(4, 5, requires_grad=True)
    loss, _ = policy_gradient_loss(lp, torch.ones(4, 5), torch.zeros(4))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(lp.grad) == 0


def test_sft_loss_is_sequence_nll():
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -7.0]])
    loss, _ = sft_loss(lp, torch.tensor([[1, 1], [1, 0]]))
    assert math.isclose(loss.item(), (3.0 + 0.5) / 2)


def _weighted_rkl(logits, teacher_lp, mask, alpha=2.0, beta=2.0, top_k=2):
    kl = reverse_kl_per_token(logits.log_softmax(-1), teacher_lp)
    w = cord_token_weights(kl.detach(), mask, alpha, beta, top_k)
    return weighted_token_loss(kl, w, mask)[0]


def test_reverse_kl_gradient_matches_finite_differences():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, 6, dtype=torch.float64).log_softmax(-1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    _weighted_rkl(logits, teacher, mask).backward()
    eps = 1e-6
    numeric = torch.zeros_like(logits)
    flat = logits.detach().clone().view(-1)
    for i in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += eps
        minus[i] -= eps
        # weights are constants of the step: hold them at the unperturbed values
        numeric.view(-1)[i] = (_fd(plus, logits, teacher, mask) - _fd(minus, logits, teacher, mask)) / (2 * eps)
    assert torch.allclose(logits.grad, numeric, atol=1e-7)
    # masked positions receive no gradient at all
    assert torch.count_nonzero(logits.grad[1, 2:]) == 0


def _fd(flat, logits, teacher, mask):
    z = flat.view_as(logits)
    kl0 = reverse_kl_per_token(logits.detach().log_softmax(-1), teacher)
    w = cord_token_weights(kl0, mask, 2.0, 2.0, 2)
    kl = reverse_kl_per_token(z.log_softmax(-1), teacher)
    return ((w * kl * mask).sum(1)).mean().item()


def test_reverse_kl_gradient_matches_closed_form():
    # dD/dz_j = p_j (log p_j - log q_j - D) for one position
    z = torch.tensor([0.3, -1.2, 0.8, 0.1], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).log()
    d = reverse_kl_per_token(z.log_softmax(-1), q)
    d.backward()
    p = z.detach().softmax(-1)
    expected = p * (p.log() - q - d.detach())
    assert torch.allclose(z.grad, expected, atol=1e-12)


class _Head(torch.nn.Module):
    def __init__(self, h, v):
        super().__init__()
        self.lm_head = torch.nn.Linear(h, v, bias=False)


def test_chunked_terms_equal_unchunked_values_and_gradients():
    torch.manual_seed(0)
    model = _Head(8, 13).double()
    hidden = torch.randn(3, 7, 8, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 13, (3, 7))
    teacher = torch.randn(3, 7, 13, dtype=torch.float64).log_softmax(-1)
    grads, values = [], []
    for chunk in (1, 3, 64):
        hidden.grad = None
        tok, kl = student_token_terms(model, hidden, tokens, teacher, chunk_size=chunk)
        (tok.sum() + kl.sum()).backward()
        grads.append(hidden.grad.clone())
        values.append((tok.detach(), kl.detach()))
    full = (hidden @ model.lm_head.weight.T).log_softmax(-1)
    assert torch.allclose(values[0][0], full.gather(-1, tokens[..., None]).squeeze(-1))
    for g, (tok, kl) in zip(grads[1:], values[1:]):
        assert torch.allclose(g, grads[0]) and torch.allclose(tok, values[0][0]) and torch.allclose(kl, values[0][1])


def test_soft_capped_logits_are_the_models_in_every_log_prob():
    """A model whose config soft-caps its logits (Gemma: tanh(z / c) * c) gets capped log-probs from
    student_token_terms and full_logprobs: z = 3 with c = 2 is 2 * tanh(1.5) = 1.8103."""
    from types import SimpleNamespace

    from cordlite.objective.logprobs import full_logprobs, head_logits

    assert torch.allclose(head_logits(torch.tensor([[1.0]]), torch.tensor([[3.0]]), None, 2.0),
                          torch.tensor([[1.8103]]), atol=1e-4)
    torch.manual_seed(0)
    model = _Head(8, 13).double()
    model.config = SimpleNamespace(final_logit_softcapping=2.0)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64) * 3
    tokens = torch.randint(0, 13, (2, 5))
    capped = (torch.tanh(hidden @ model.lm_head.weight.T / 2.0) * 2.0).log_softmax(-1)
    tok, _ = student_token_terms(model, hidden, tokens, chunk_size=2)
    assert torch.allclose(tok, capped.gather(-1, tokens[..., None]).squeeze(-1))
    assert torch.allclose(full_logprobs(model, hidden, chunk_size=3), capped)
    uncapped = (hidden @ model.lm_head.weight.T).log_softmax(-1)
    assert not torch.allclose(capped, uncapped, atol=1e-3)


def test_completion_mask_includes_first_end_token_only():
    ids = torch.tensor([[5, 7, 2, 9, 2], [5, 5, 5, 5, 5], [2, 4, 4, 4, 4]])
    mask, finished = completion_mask(ids, [2, 3])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]


def test_sampling_ignores_the_checkpoints_decoding_defaults(tiny_model_dir, tiny_manifest, monkeypatch):
    """Rollouts must sample the model's own distribution: a checkpoint's top_k / top_p /
    repetition_penalty (Qwen ships them in generation_config.json) must not leak into them. The only
    processors are the suppressed tokens and cordlite's row sampler (which applies the temperature)."""
    from transformers import AutoProcessor, GenerationMixin, Qwen2AudioForConditionalGeneration

    from cordlite.data import AudioCache, encode_views, read_manifest
    from cordlite.models.sampling import sample

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    model.generation_config.update(top_k=5, top_p=0.3, repetition_penalty=1.3, no_repeat_ngram_size=2,
                                   typical_p=0.5, min_p=0.2, do_sample=True, temperature=0.7)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.tokenizer.padding_side = "left"
    views = encode_views(processor, read_manifest(tiny_manifest)[:1], AudioCache())
    seen = []
    original = GenerationMixin._get_logits_processor

    def spy(self, *args, **kwargs):
        processors = original(self, *args, **kwargs)
        seen.append([type(p).__name__ for p in processors])
        return processors

    monkeypatch.setattr(GenerationMixin, "_get_logits_processor", spy)
    sample(model, views.audio, 2, temperature=1.5, max_new_tokens=3, end_ids=[1020], pad_id=1018, blocked_ids=[1021])
    assert seen and seen[0] == ["SuppressTokensLogitsProcessor", "RowSampler"], seen
    assert model.generation_config.top_k == 5  # the checkpoint's own config is left as it was
