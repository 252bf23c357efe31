import pytest
import torch
import torch.nn.functional as F

from pacofr.losses.codebook import alignment_loss, belief_commitment, belief_cross_entropy, codebook_loss
from pacofr.objectives import PaCoFR

CB = dict(num_codes=32, code_dim=16, codebook_options={"proto_hidden": 32, "belief_hidden": 32}, spatial_weight=0.0)


def paco(**kwargs) -> PaCoFR:
    return PaCoFR(encoder_size="tiny", img_size=32, mask_ratio=0.75, **{**CB, **kwargs})


def _mask(b, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) < k for _ in range(b)])


def test_terms_match_their_definitions():
    logits, codes = torch.randn(2, 3, 8), torch.randint(8, (2, 3))
    torch.testing.assert_close(belief_cross_entropy(logits, codes), F.cross_entropy(logits.view(6, 8), codes.view(6)))
    a, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    torch.testing.assert_close(alignment_loss(a, t), F.mse_loss(a, t))
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    manual = ((a - t) ** 2).mean(-1)
    torch.testing.assert_close(alignment_loss(a, t, w), (manual[0, 0] + manual[1, 2]) / 2)
    protos = torch.randn(8, 5)
    torch.testing.assert_close(belief_commitment(logits, protos, t), F.mse_loss(logits.softmax(-1) @ protos, t))


@pytest.mark.parametrize("update", ["grad", "ema"])
def test_codebook_losses_train_only_belief_codes_and_pixel_head(update):
    torch.manual_seed(0)
    model = paco(codebook_update=update, replace_ratio=0.5)
    images, mask = torch.randn(2, 3, 32, 32), _mask(2, 4, 3)
    out = model.forward_model(images, mask)
    if update == "ema":  # EMA prototypes start at g(C): move them once so the alignment term is not zero
        model.after_step(model.state_for_after_step(out), step=0)
        out = model.forward_model(images, mask)
    terms = codebook_loss(out, beta=0.25)
    assert set(terms) == {"belief_ce", "alignment", "commitment", "loss"}
    terms["loss"].backward()
    allowed = model.parameter_group("codebook").names
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got_grad <= allowed
    assert any(n.startswith("codebook.belief.") for n in got_grad)
    assert "codebook.codes" in got_grad and any(n.startswith("codebook.proto_head.") for n in got_grad)
    assert not any(n.startswith(("encoder.", "decoder.")) for n in got_grad)


def test_codebook_loss_decreases_when_trained():
    torch.manual_seed(0)
    model = paco()
    images = torch.randn(4, 3, 32, 32)
    opt = torch.optim.Adam(model.codebook.incubation_parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model.incubation_losses(images).out
        loss = codebook_loss(out)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
