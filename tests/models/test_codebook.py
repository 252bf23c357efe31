"""Candidate codebook: alignment, candidates, mixtures, EMA, dead-code re-seeding, health stats."""

import pytest
import torch

from pacofr.models.codebook import CandidateCodebook, mixture_weights, squared_distances

P = 48  # a 4x4x3 "patch" keeps the tests fast


def _codebook(**kw):
    torch.manual_seed(0)
    args = dict(patch_dim=P, token_dim=20, num_codes=32, code_dim=8, proto_hidden=16, belief_hidden=16)
    return CandidateCodebook(**{**args, **kw})


def test_squared_distances_match_brute_force():
    x, g = torch.randn(3, 5, P), torch.randn(32, P)
    brute = ((x.unsqueeze(-2) - g) ** 2).sum(-1)
    torch.testing.assert_close(squared_distances(x, g), brute, atol=1e-4, rtol=1e-5)


def test_target_code_is_the_nearest_prototype():
    cb = _codebook()
    patches = torch.randn(2, 10, P)
    out = cb(patches)
    protos = cb.prototypes().detach()
    brute = torch.cdist(patches.reshape(-1, P), protos).argmin(-1).view(2, 10)
    assert torch.equal(out["target_code"], brute)
    torch.testing.assert_close(out["assigned_prototype"], protos[brute])
    torch.testing.assert_close(out["prototype_target"], patches)


def test_nearest_codes_are_the_m_nearest_in_order():
    cb = _codebook()
    patches = torch.randn(6, P)
    dist, idx = cb.nearest_codes(patches, m=4)
    brute = torch.cdist(patches, cb.prototypes().detach()).pow(2)
    order = brute.argsort(-1)[:, :4]
    assert torch.equal(idx, order)
    torch.testing.assert_close(dist, brute.gather(1, order), atol=1e-3, rtol=1e-4)


def test_candidates_are_the_most_believed_and_weights_are_renormalised_beliefs():
    cb = _codebook(num_candidates=3)
    logits = torch.randn(5, 32)
    weights, idx = cb.candidates(logits)
    assert torch.equal(idx, logits.argsort(-1, descending=True)[:, :3])
    full = logits.softmax(-1)
    expected = full.gather(1, idx) / full.gather(1, idx).sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected)


@pytest.mark.parametrize("mix", ["soft", "hard", "gumbel"])
def test_mixture_weights_sum_to_one_and_give_belief_gradients(mix):
    cb = _codebook(mix=mix, num_candidates=4)
    patches = torch.randn(2, 6, P)
    out = cb(patches, replace_idx=torch.tensor([[0, 3], [1, 5]]))
    w = out["candidate_weights"]
    assert w.shape == (2, 2, 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2))
    if mix == "hard":  # forward is exactly the one most believed candidate
        assert torch.equal(w.detach().argmax(-1), torch.zeros(2, 2, dtype=torch.long))
        assert set(w.detach().unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(out["replace_tokens"], cb.token_proj(cb.codes)[out["candidate_codes"][..., 0]])
    # a loss on the mixture tokens reaches the Belief Predictor, the codes and W
    target = torch.randn_like(out["replace_tokens"])
    (out["replace_tokens"] - target).square().sum().backward()
    assert cb.belief.fc2.weight.grad is not None and cb.belief.fc2.weight.grad.abs().sum() > 0
    assert cb.codes.grad.abs().sum() > 0 and cb.token_proj.weight.grad.abs().sum() > 0


def test_mixture_weights_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown mix"):
        mixture_weights(torch.randn(2, 4), "median")
    with pytest.raises(ValueError, match="unknown mix"):
        _codebook(mix="median")


def test_dead_codes_are_reseeded_and_live_codes_kept():
    # without fitting (reseed_fit_steps 0): a noised copy of the live code nearest its recent patch
    cb = _codebook(dead_after=3, reseed_every=0, buffer_size=64, buffer_writes_per_step=16, reseed_fit_steps=0)
    patches = torch.randn(2, 8, P)
    used = torch.arange(16).view(2, 8) % 4  # only codes 0..3 are ever used
    before = cb.codes.detach().clone()
    for _ in range(3):
        cb.update_state(patches, used)
    assert cb.steps_since_used[:4].eq(0).all() and cb.steps_since_used[4:].eq(3).all()
    assert cb.usage_fraction(window=3).item() == pytest.approx(4 / 32)
    n = cb.reseed_dead_codes()
    assert n.item() == 28
    assert torch.equal(cb.codes[:4], before[:4])
    assert not torch.isclose(cb.codes[4:], before[4:]).all(-1).any()  # every dead code moved
    assert cb.steps_since_used.eq(0).all()
    # a re-seeded code sits next to the live code it split from (the one nearest its recent patch)
    gap_to_live = torch.cdist(cb.codes[4:].detach(), before[:4]).min(-1).values
    assert gap_to_live.max() < 0.5 * torch.cdist(before[4:], before[:4]).min()
    assert set(cb.take_reseeded()) == {"codes", "belief.fc2.weight", "belief.fc2.bias"}
    assert cb.take_reseeded() == {}  # taken once


def test_reseeded_codes_are_fitted_to_their_patch():
    """With fitting (the default), a re-seeded code's prototype moves to a recent patch instead of tying its
    source: its distance to the nearest recent patch is well below the unfitted copy's."""
    gaps = {}
    for steps in (0, 20):
        torch.manual_seed(0)
        cb = _codebook(dead_after=3, reseed_every=0, buffer_size=64, buffer_writes_per_step=16, reseed_fit_steps=steps)
        patches = torch.randn(2, 8, P)
        used = torch.arange(16).view(2, 8) % 4
        for _ in range(3):
            cb.update_state(patches, used)
        live = cb.prototypes()[:4].detach().clone()
        assert cb.reseed_dead_codes().item() == 28
        protos = cb.prototypes()[4:].detach()
        gaps[steps] = torch.cdist(protos, cb.recent_patches).min(-1).values.mean()
        assert torch.equal(cb.prototypes()[:4].detach(), live)  # live codes untouched
        assert all(p.grad is None for p in cb.proto_head.parameters())  # fitting moves codes only
    assert gaps[20] < 0.8 * gaps[0]


def test_reseeding_runs_automatically_every_reseed_every_updates():
    cb = _codebook(dead_after=2, reseed_every=2, buffer_size=64, buffer_writes_per_step=16)
    patches = torch.randn(1, 8, P)
    used = torch.zeros(1, 8, dtype=torch.long)
    before = cb.codes.detach().clone()
    cb.update_state(patches, used)
    assert torch.equal(cb.codes, before)
    cb.update_state(patches, used)
    assert not torch.equal(cb.codes[1:], before[1:])


def test_ema_reseeding_puts_a_recent_patch_in_the_prototype_table():
    cb = _codebook(update="ema", dead_after=1, reseed_every=0, buffer_size=16, buffer_writes_per_step=16)
    patches = torch.randn(1, 16, P)
    cb.update_state(patches, torch.zeros(1, 16, dtype=torch.long))
    cb.reseed_dead_codes()
    protos = cb.alignment_prototypes()
    # every re-seeded prototype is one of the buffered patches (up to the Laplace smoothing of the counts)
    assert torch.cdist(protos[1:], patches[0]).min(-1).values.max() < 1e-2
    assert torch.cdist(protos[1:], patches[0]).min(-1).values.max() < 1e-3 * patches.norm(dim=-1).min() * 10


def test_ema_update_moves_prototypes_toward_assigned_patches():
    cb = _codebook(update="ema", ema_decay=0.9, reseed_every=0)
    x = torch.randn(P)
    patches = x.expand(1, 10, P).clone()
    codes = torch.full((1, 10), 7)
    gap = [(cb.alignment_prototypes()[7] - x).norm().item()]
    other = cb.alignment_prototypes()[3].clone()
    for _ in range(5):
        cb.update_state(patches, codes)
        gap.append((cb.alignment_prototypes()[7] - x).norm().item())
    assert all(b < a for a, b in zip(gap, gap[1:]))
    assert gap[-1] < 0.2 * gap[0]
    torch.testing.assert_close(cb.alignment_prototypes()[3], other, rtol=1e-3, atol=1e-5)  # unassigned: kept
    # and the forward now assigns x to code 7, with the EMA prototype as the regression target for g(c_7)
    out = cb(patches)
    assert out["target_code"].eq(7).all()
    torch.testing.assert_close(out["prototype_target"][0, 0], cb.alignment_prototypes()[7])


def test_perplexity_and_usage_stats():
    cb = _codebook()
    assert cb.perplexity(torch.zeros(4, 5, dtype=torch.long)).item() == pytest.approx(1.0)
    assert cb.perplexity(torch.arange(32).view(4, 8)).item() == pytest.approx(32.0, rel=1e-5)
    assert cb.perplexity(torch.tensor([[0, 0, 1, 1]])).item() == pytest.approx(2.0, rel=1e-5)
    assert cb.usage_fraction().item() == 1.0  # nothing has been unused yet


def test_incubation_parameters_are_codes_pixel_head_and_belief():
    cb = _codebook()
    ids = {id(p) for p in cb.incubation_parameters()}
    assert id(cb.codes) in ids
    assert all(id(p) in ids for p in cb.proto_head.parameters())
    assert all(id(p) in ids for p in cb.belief.parameters())
    assert not any(id(p) in ids for p in cb.token_proj.parameters())
