"""The ViT encoder: timm's VisionTransformer with frozen sin-cos positions and a masked forward.

Its ``state_dict()`` loads strictly into ``timm.create_model(<same size>, num_classes=0)``, so a pretrained
checkpoint is usable by anything that speaks timm (evaluation, export) with no key mapping.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pacofr.models.init import mae_init_, mae_init_patch_embed_
from pacofr.models.pos_embed import sincos_pos_embed_2d


class PaCoFREncoder(VisionTransformer):
    """ViT with a class token, fixed 2D sin-cos ``pos_embed`` (class slot zero) and no classifier head.

    ``init="mae"`` (default) applies MAE's initialisation; any timm ``weight_init`` mode ('', 'jax', 'moco')
    is accepted too. Register tokens and ``no_embed_class`` are refused: the masked forward assumes the one
    class token of the original ViT layout.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        global_pool: str = "token",
        init: str = "mae",
        **kwargs: Any,
    ) -> None:
        for key, allowed in (("num_classes", 0), ("reg_tokens", 0), ("no_embed_class", False), ("class_token", True)):
            if key in kwargs and kwargs[key] != allowed:
                raise ValueError(f"PaCoFREncoder needs {key}={allowed!r}, got {kwargs[key]!r}")
            kwargs.pop(key, None)
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if kwargs.get("dynamic_img_size"):
            raise ValueError("dynamic_img_size is not supported: the sin-cos grid is fixed by img_size")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            num_classes=0,
            global_pool=global_pool,
            weight_init="skip",  # initialised below, once the frozen pos_embed is in place
            **kwargs,
        )
        self.pos_embed.requires_grad_(False)
        self.init_weights(init)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @torch.no_grad()
    def reset_pos_embed(self) -> None:
        """(Re)write the fixed sin-cos table for the current patch grid."""
        table = sincos_pos_embed_2d(self.embed_dim, tuple(self.patch_embed.grid_size), self.num_prefix_tokens)
        self.pos_embed.copy_(table.to(self.pos_embed))

    def init_weights(self, mode: str = "mae", needs_reset: bool = True) -> None:
        if mode == "mae":
            self.apply(mae_init_)
            mae_init_patch_embed_(self.patch_embed.proj)
            nn.init.normal_(self.cls_token, std=0.02)
        else:
            super().init_weights(mode, needs_reset=needs_reset)
        self.reset_pos_embed()

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch embeddings (B, N, D), without position embedding."""
        return self.patch_embed(images)

    def forward_masked(
        self,
        patch_tokens: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        replace_idx: torch.Tensor | None = None,
        replace_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode a subset of patches.

        Args:
            patch_tokens: (B, N, D) from :meth:`embed_patches`.
            keep_idx: (B, K) long, the patches the encoder sees (visible + replaced); None = all N.
            replace_idx: (B, R) long, patches whose embedding is substituted before the gather.
            replace_tokens: (B, R, D), the substitutes (e.g. candidate-code mixtures).

        Returns:
            (B, 1 + K, D): class token then the kept patches in ``keep_idx`` order, after the final norm.
        """
        b, _, d = patch_tokens.shape
        x = patch_tokens
        if replace_idx is not None:
            if replace_tokens is None or replace_tokens.shape[:2] != replace_idx.shape:
                raise ValueError("replace_idx (B, R) needs replace_tokens (B, R, D)")
            x = x.scatter(1, replace_idx.unsqueeze(-1).expand(-1, -1, d), replace_tokens.to(x.dtype))
        x = x + self.pos_embed[:, self.num_prefix_tokens :]
        if keep_idx is not None:
            x = x.gather(1, keep_idx.unsqueeze(-1).expand(-1, -1, d))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls.to(x.dtype), x], dim=1)
        x = self.norm_pre(self.pos_drop(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}
