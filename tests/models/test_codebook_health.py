"""Codebook health that can fail: a forced collapse reads as one (usage 1/K, perplexity 1, re-seeds counted)
however often dead codes are re-seeded; and a re-seed hands the new code the Belief Predictor's row of the code
it copies, so the predictor's cross-entropy rises by at most log 2 instead of jumping."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pacofr.models.codebook import CandidateCodebook

P, D, K = 12, 8, 16


def codebook(**kwargs) -> CandidateCodebook:
    torch.manual_seed(0)
    args = dict(num_codes=K, code_dim=4, proto_hidden=16, belief_hidden=16, dead_after=5, reseed_every=2)
    return CandidateCodebook(P, D, **{**args, **kwargs})


def test_a_forced_collapse_reads_as_one_although_dead_codes_are_reseeded():
    cb = codebook()
    same = torch.randn(1, 1, P).expand(2, 10, P)  # every patch the same: one code takes them all
    for _ in range(40):
        out = cb(same)
        cb.update_state(same, out["target_code"])
    assert out["code_perplexity"].item() == 1.0
    # one code per step; a fresh copy of the busy code may win the patches for a step: at most 2 of 16 in the window
    assert cb.usage_fraction().item() <= 2 / K
    assert cb.reseeded_total.item() > 0, "dead codes were re-seeded all along"
    # the old monitor (the re-seeding counter) saw nothing wrong: re-seeding keeps resetting it
    assert (cb.steps_since_used < cb.dead_after).float().mean().item() > 0.5


def test_a_healthy_codebook_reads_as_used():
    cb = codebook(reseed_every=0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        patches = torch.randn(4, 64, P, generator=gen)
        out = cb(patches)
        cb.update_state(patches, out["target_code"])
    assert cb.usage_fraction().item() > 0.5 and out["code_perplexity"].item() > 4


def test_reseeding_aims_the_belief_row_with_the_code():
    cb = codebook(dead_after=1, reseed_every=1)
    gen = torch.Generator().manual_seed(2)
    patches = torch.randn(1, 64, P, generator=gen)
    cb.recent_patches.copy_(torch.randn(cb.recent_patches.shape, generator=gen))
    cb.recent_count.fill_(cb.recent_patches.shape[0])
    cb.steps_since_used.copy_(torch.tensor([0] * (K // 2) + [5] * (K // 2)))  # the second half is dead
    before = cb(patches)
    ce_before = F.cross_entropy(before["belief_logits"][0], before["target_code"][0]).item()
    cb.reseed_dead_codes()
    dead = torch.arange(K) >= K // 2
    after = cb(patches)
    w, b = cb.belief.fc2.weight, cb.belief.fc2.bias
    # each dead code's row equals that of a live code (the one whose code it copied)
    for k in torch.nonzero(dead).flatten().tolist():
        assert any(torch.equal(w[k], w[j]) and torch.equal(b[k], b[j]) for j in range(K // 2)), k
    ce_after = F.cross_entropy(after["belief_logits"][0], after["target_code"][0]).item()
    assert ce_after <= ce_before + math.log(2) + 1e-4


def test_reseeding_without_aiming_leaves_the_belief_rows():
    cb = codebook(dead_after=1, reseed_every=1, reseed_belief=False)
    cb.recent_count.fill_(cb.recent_patches.shape[0])
    cb.steps_since_used.fill_(5)
    cb.steps_since_used[0] = 0
    rows = cb.belief.fc2.weight.detach().clone()
    assert cb.reseed_dead_codes().item() == K - 1
    assert torch.equal(cb.belief.fc2.weight, rows)


def test_old_checkpoints_load_without_the_new_monitors():
    cb = codebook()
    state = {k: v for k, v in cb.state_dict().items() if k not in ("steps_since_hit", "reseeded_total")}
    state["steps_since_used"] = torch.full((K,), 3, dtype=torch.long)
    fresh = codebook()
    fresh.load_state_dict(state)  # strict
    assert torch.equal(fresh.steps_since_hit, state["steps_since_used"]) and fresh.reseeded_total.item() == 0
