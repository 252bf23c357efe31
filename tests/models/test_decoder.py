import torch

from pacofr.models.decoder import MAEDecoder


def test_shapes_and_mask_token_fill():
    torch.manual_seed(0)
    dec = MAEDecoder((4, 4), 16, encoder_dim=24, decoder_dim=32, depth=0).eval()  # depth 0: tokens = norm(x)
    encoded = torch.randn(2, 1 + 3, 24)
    keep = torch.tensor([[0, 5, 7], [2, 3, 15]])
    pred, tokens = dec(encoded, keep)
    assert pred.shape == (2, 16, 16 * 16 * 3) and tokens.shape == (2, 16, 32)
    pos = dec.pos_embed[0, 1:]
    embedded = dec.embed(encoded[:, 1:])
    for b in range(2):
        for j in range(16):
            hits = (keep[b] == j).nonzero()
            src = embedded[b, hits[0, 0]] if len(hits) else dec.mask_token[0, 0]
            torch.testing.assert_close(tokens[b, j], dec.norm(src + pos[j]))


def test_all_tokens_without_keep_idx_equals_identity_keep():
    dec = MAEDecoder((4, 4), 16, encoder_dim=24, decoder_dim=32, depth=2, num_heads=4).eval()
    encoded = torch.randn(2, 17, 24)
    a = dec(encoded)[0]
    b = dec(encoded, torch.arange(16).expand(2, -1))[0]
    torch.testing.assert_close(a, b)
