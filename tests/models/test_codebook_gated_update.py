"""``CandidateCodebook.update_state(..., apply=flag)``: a false device flag (a skipped non-finite step) leaves
every buffer and the codes exactly as they were, re-seeding included; a true flag is the ungated update."""

import copy

import pytest
import torch

from pacofr.models.codebook import CandidateCodebook

P = 48


def _codebook(update: str) -> CandidateCodebook:
    torch.manual_seed(0)
    return CandidateCodebook(
        patch_dim=P,
        token_dim=20,
        num_codes=32,
        code_dim=8,
        proto_hidden=16,
        belief_hidden=16,
        update=update,
        dead_after=1,
        reseed_every=2,  # the second update re-seeds: the gate must cover it too
        buffer_size=64,
        buffer_writes_per_step=16,
    )


def _state(cb: CandidateCodebook) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in cb.state_dict().items()}


@pytest.mark.parametrize("update", ["grad", "ema"])
def test_false_flag_changes_nothing_true_flag_is_the_plain_update(update):
    gated, plain = _codebook(update), _codebook(update)
    patches = torch.randn(2, 8, P)
    codes = torch.arange(16).view(2, 8) % 4  # codes 4.. stay unused, so they die and get re-seeded
    # first update: taken (flag 1.0, as the guard gives it) on one copy, ungated on the other, same RNG
    torch.manual_seed(1)
    gated.update_state(patches, codes, apply=torch.tensor(1.0))
    torch.manual_seed(1)
    plain.update_state(patches, codes)
    for k, v in _state(plain).items():
        assert torch.equal(gated.state_dict()[k], v), k
    # second update (a re-seeding one) skipped: nothing moves, though it would re-seed 28 codes
    before = _state(gated)
    gated.update_state(torch.randn(2, 8, P), codes, apply=torch.tensor(0.0))
    for k, v in before.items():
        assert torch.equal(gated.state_dict()[k], v), f"{k} changed on a skipped update"
    reference = copy.deepcopy(plain)
    reference.update_state(torch.randn(2, 8, P), codes)
    assert not torch.equal(reference.codes, plain.codes), "the ungated second update does re-seed"
    # bool flags work too
    gated.update_state(patches, codes, apply=torch.tensor(False))
    for k, v in before.items():
        assert torch.equal(gated.state_dict()[k], v)
