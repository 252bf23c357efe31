"""MAE-style decoder: embeds the encoder's tokens, fills the dropped positions with a mask token and
predicts every patch's normalised pixels; its tokens also feed the spatial-consistency head."""

from __future__ import annotations

import torch
from timm.layers import LayerNorm
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block
from torch import nn

from pacofr.models.init import mae_init_
from pacofr.models.pos_embed import sincos_pos_embed_2d


class MAEDecoder(nn.Module):
    def __init__(
        self,
        grid_size: tuple[int, int],
        patch_size: int,
        encoder_dim: int,
        decoder_dim: int = 512,
        depth: int = 8,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        predict_pixels: bool = True,
    ) -> None:
        """``predict_pixels=False``: a representation decoder (its tokens only, no pixel head), e.g. FSFM's."""
        super().__init__()
        num_heads = num_heads or max(1, decoder_dim // 32)  # MAE: 16 heads of 32 dims at width 512
        if decoder_dim % num_heads:
            raise ValueError(f"decoder_dim {decoder_dim} is not divisible by num_heads {num_heads}")
        self.grid_size = tuple(grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.decoder_dim = decoder_dim
        self.depth = depth
        self.mlp_ratio = mlp_ratio
        self.patch_dim = patch_size * patch_size * in_chans
        self.grad_checkpointing = False

        self.embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(decoder_dim, self.grid_size, 1), requires_grad=False)
        self.blocks = nn.Sequential(
            *[Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)]
        )
        self.norm = LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, self.patch_dim) if predict_pixels else None
        self.apply(mae_init_)
        nn.init.normal_(self.mask_token, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, encoded: torch.Tensor, keep_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """encoded (B, 1 + K, De) with the class token first; keep_idx (B, K) the patch of each token
        (None: all N in order). Returns predictions (B, N, p*p*C) and decoder tokens (B, N, Dd)."""
        tokens = self.decode_tokens(encoded, keep_idx)[:, 1:]
        return (self.pred(tokens) if self.pred is not None else None), tokens

    def decode_tokens(self, encoded: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's normed tokens (B, 1 + N, Dd), class token first: mask tokens at the patches ``keep_idx``
        leaves out, positions added, the blocks run."""
        x = self.embed(encoded)
        b, _, d = x.shape
        cls, patches = x[:, :1], x[:, 1:]
        if keep_idx is None:
            if patches.shape[1] != self.num_patches:
                raise ValueError(f"got {patches.shape[1]} patch tokens without keep_idx, expected {self.num_patches}")
            full = patches
        else:
            full = self.mask_token.to(x.dtype).expand(b, self.num_patches, d)
            full = full.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, d), patches)
        x = torch.cat([cls, full], dim=1) + self.pos_embed.to(x.dtype)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token"}
