"""The composed PaCo-FR model: encoder on visible + replaced patches, MAE decoder, candidate codebook.

With ``use_codebook=False`` it is plain MAE (the MAE and FSFM-style baselines differ only by the masker).
The forward is torch.compile-friendly: the number of kept / replaced patches is fixed by the
configuration (Python ints), every selection is a gather/scatter on device, nothing reads back to the host.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pacofr.models.codebook import CandidateCodebook, MixMode
from pacofr.models.decoder import MAEDecoder
from pacofr.models.patches import normalize_patches, num_masked_patches, patchify
from pacofr.models.sizes import DECODER_DEFAULTS, build_encoder


def visible_indices(mask: torch.Tensor, num_visible: int) -> torch.Tensor:
    """(B, N) bool mask (True = masked) -> (B, num_visible) indices of the visible patches, ascending."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible (0) first, in patch order
    return order[:, :num_visible]


class PaCoFRModel(nn.Module):
    def __init__(
        self,
        encoder_size: str = "base",
        img_size: int = 224,
        patch_size: int = 16,
        decoder_depth: int | None = None,
        decoder_dim: int | None = None,
        decoder_heads: int | None = None,
        mask_ratio: float = 0.75,
        use_codebook: bool = True,
        codebook: dict[str, Any] | None = None,
        replace_ratio: float = 0.15,
        num_candidates: int = 4,
        mix: MixMode = "soft",
        norm_pix_eps: float = 1e-6,
        check_mask: bool = True,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            encoder_size: tiny | small | base | large (see ``pacofr.models.sizes``).
            decoder_depth, decoder_dim, decoder_heads: default per encoder size (base: 8 x 512, 16 heads).
            mask_ratio: the maskers' ratio; the model drops exactly ``num_masked_patches(N, mask_ratio)``
                patches per image, so every mask row must hold that many True values.
            codebook: extra ``CandidateCodebook`` kwargs (num_codes, code_dim, update, ...).
            replace_ratio: share of the visible patches whose input becomes the candidate mixture.
            num_candidates, mix: top-m candidates and how they are mixed (soft | hard | gumbel).
            check_mask: assert on device (no host sync on GPU) that each mask row has the expected count.
            encoder_kwargs: extra timm VisionTransformer kwargs (drop_path_rate, global_pool, init, ...).
        """
        super().__init__()
        if not 0.0 <= replace_ratio < 1.0:
            raise ValueError(f"replace_ratio must be in [0, 1), got {replace_ratio}")
        self.encoder = build_encoder(encoder_size, img_size=img_size, patch_size=patch_size, **(encoder_kwargs or {}))
        dec = DECODER_DEFAULTS[encoder_size]
        grid = tuple(self.encoder.patch_embed.grid_size)
        self.patch_size = patch_size
        self.grid_size = grid
        self.num_patches = grid[0] * grid[1]
        self.patch_dim = patch_size * patch_size * 3
        self.decoder = MAEDecoder(
            grid,
            patch_size,
            self.encoder.embed_dim,
            decoder_dim=decoder_dim or dec.dim,
            depth=dec.depth if decoder_depth is None else decoder_depth,
            num_heads=decoder_heads or (None if decoder_dim else dec.num_heads),
        )
        self.mask_ratio = mask_ratio
        self.num_masked = num_masked_patches(self.num_patches, mask_ratio)
        self.num_visible = self.num_patches - self.num_masked
        self.use_codebook = use_codebook
        self.replace_ratio = replace_ratio if use_codebook else 0.0
        self.num_replaced = int(round(self.num_visible * self.replace_ratio))
        self.norm_pix_eps = norm_pix_eps
        self.check_mask = check_mask
        self.codebook = (
            CandidateCodebook(
                self.patch_dim,
                self.encoder.embed_dim,
                num_candidates=num_candidates,
                mix=mix,
                **(codebook or {}),
            )
            if use_codebook
            else None
        )

    # --- helpers the training module uses --------------------------------------------------------
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.patch_size)

    def normalized_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch normalised pixels (B, N, p*p*3), float32: the reconstruction target and codebook input."""
        return normalize_patches(self.patchify(images), self.norm_pix_eps)

    def incubation_parameters(self) -> list[nn.Parameter]:
        """Parameters that train during incubation (codes, pixel head, Belief Predictor); empty for MAE."""
        return self.codebook.incubation_parameters() if self.codebook is not None else []

    def incubation_parameter_names(self) -> set[str]:
        ids = {id(p) for p in self.incubation_parameters()}
        return {name for name, p in self.named_parameters() if id(p) in ids}

    def no_weight_decay(self) -> set[str]:
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        names |= {f"decoder.{n}" for n in self.decoder.no_weight_decay()}
        if self.codebook is not None:
            names |= {f"codebook.{n}" for n in self.codebook.no_weight_decay()}
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)

    @torch.no_grad()
    def update_codebook_state(self, outputs: dict[str, torch.Tensor]) -> None:
        """Codebook bookkeeping (usage, recent patches, EMA, dead-code re-seeding). Call once per training
        step after the optimiser step (it may rewrite codes in place), outside any compiled region."""
        if self.codebook is not None:
            self.codebook.update_state(outputs["target"], outputs["target_code"])

    # --- forward -------------------------------------------------------------------------------------
    def _choose_replaced(self, keep_idx: torch.Tensor) -> torch.Tensor:
        """Random ``num_replaced`` of the visible patches per sample -> their patch ids (B, R)."""
        noise = torch.rand(keep_idx.shape, device=keep_idx.device)
        pick = noise.argsort(dim=1)[:, : self.num_replaced]
        return keep_idx.gather(1, pick)

    def forward_codebook(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Only the codebook on all patches (what incubation trains); no encoder or decoder work."""
        if self.codebook is None:
            raise RuntimeError("this model has no codebook (use_codebook=False)")
        target = self.normalized_patches(images)
        return {"target": target, **self.codebook(target)}

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W); mask (B, N) bool, True = masked, exactly ``self.num_masked`` per row.

        Returns pred (B, N, P), target (B, N, P) normalised pixels, decoder_tokens (B, N, Dd),
        mask, replaced (B, N) bool, loss_mask = mask | replaced, keep_idx (B, K); with the codebook also
        belief_logits, target_code, assigned_prototype, prototype_target, prototypes_detached,
        code_perplexity, candidate_weights, candidate_codes.
        """
        b = images.shape[0]
        if mask.shape != (b, self.num_patches):
            raise ValueError(f"mask must be (B, N) = ({b}, {self.num_patches}), got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        if self.check_mask:
            torch._assert_async((mask.sum(1) == self.num_masked).all(), "mask rows must hold exactly num_masked")
        target = self.normalized_patches(images)
        tokens = self.encoder.embed_patches(images)
        keep_idx = visible_indices(mask, self.num_visible)
        out: dict[str, torch.Tensor] = {"target": target, "mask": mask, "keep_idx": keep_idx}

        replace_idx = replace_tokens = None
        replaced = torch.zeros_like(mask)
        if self.codebook is not None:
            if self.num_replaced > 0:
                replace_idx = self._choose_replaced(keep_idx)
                replaced = replaced.scatter(1, replace_idx, True)
            cb = self.codebook(target, replace_idx)
            replace_tokens = cb.pop("replace_tokens", None)
            out.update(cb)

        encoded = self.encoder.forward_masked(tokens, keep_idx, replace_idx, replace_tokens)
        pred, decoder_tokens = self.decoder(encoded, keep_idx)
        out.update(pred=pred, decoder_tokens=decoder_tokens, replaced=replaced, loss_mask=mask | replaced)
        return out

    # --- cost ---------------------------------------------------------------------------------------------
    def flops_per_image(self, batch_size: int = 256) -> float:
        """Analytic FLOPs (2 per multiply-add) of one training step (forward + backward = 3x forward) per
        image, counted like ``shared/reference/mae_step.py``'s ``step_flops`` (matmuls only), plus the
        codebook's work. ``batch_size`` amortises the per-batch codebook terms."""
        n, p = self.num_patches, self.patch_dim
        d, depth = self.encoder.embed_dim, len(self.encoder.blocks)
        dd, ddepth = self.decoder.decoder_dim, self.decoder.depth
        te, td = self.num_visible + 1, n + 1
        enc_ratio = self.encoder.blocks[0].mlp.fc1.out_features / d if depth else 4.0
        dec_ratio = self.decoder.mlp_ratio
        enc = depth * (2 * (4 + 2 * enc_ratio) * d * d * te + 4 * te * te * d)
        dec = ddepth * (2 * (4 + 2 * dec_ratio) * dd * dd * td + 4 * td * td * dd)
        emb = 2 * n * p * d
        head = 2 * n * dd * p + 2 * te * d * dd
        total = 3.0 * (enc + dec + emb + head)
        if self.codebook is not None:
            total += self.codebook.flops_per_image(n, self.num_replaced, batch_size)
        return total
