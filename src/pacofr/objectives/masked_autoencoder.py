"""``MaskedAutoencoder``: the masked-autoencoder core every method of this package builds on.

A ViT encoder on the visible patches, an MAE decoder over all positions, and the per-patch-normalised pixel target
(MAE's norm-pix). It implements the model side of :class:`~pacofr.objectives.interface.PretrainObjective`
(``encoder``, ``no_weight_decay``, ``flops_per_image``, ``encoder_spec``, the reconstruction charts); a method is a
subclass in its own file (``mae.py``, ``mae_parse.py``, ``fsfm.py``, ``paco_fr.py``, ...) that adds parts and
loss terms in ``losses``. ``docs/architecture.md`` shows how to add one. The step's hot path (``losses``) reads
only the batch's tensors and static configuration, never the step counter, so ``compile_losses`` traces it once as
one graph.
"""

from __future__ import annotations

from typing import Any

import torch

from pacofr.data.batch import num_masked_patches
from pacofr.models.decoder import MAEDecoder
from pacofr.models.patches import normalize_patches, patchify
from pacofr.models.sizes import DECODER_DEFAULTS, SizeName, build_encoder
from pacofr.objectives.interface import Charts, PretrainObjective, StepOutput, chart

__all__ = ["MaskedAutoencoder", "StepOutput", "blocks_flops", "visible_indices"]


def blocks_flops(depth: int, width: int, tokens: int, mlp_ratio: float) -> float:
    """Forward FLOPs (2 per multiply-add, matmuls only) of ``depth`` transformer blocks on ``tokens`` tokens:
    the qkv, projection and MLP matmuls, and the attention scores and mix."""
    return depth * (2 * (4 + 2 * mlp_ratio) * width * width * tokens + 4 * tokens * tokens * width)


def visible_indices(mask: torch.Tensor, num_visible: int) -> torch.Tensor:
    """(B, N) bool mask (True = masked) -> (B, num_visible) indices of the visible patches, ascending."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible (0) first, in patch order
    return order[:, :num_visible]


class MaskedAutoencoder(PretrainObjective):
    """The masked-autoencoder core: encoder on the visible patches, decoder, norm-pix reconstruction target."""

    def __init__(
        self,
        encoder_size: SizeName = "base",
        img_size: int = 224,
        patch_size: int = 16,
        mask_ratio: float = 0.75,
        decoder_depth: int | None = None,
        decoder_dim: int | None = None,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        norm_pix_eps: float = 1e-6,
        check_mask: bool = True,
    ) -> None:
        """
        Args:
            encoder_size: ViT size (see ``pacofr.models.sizes``), patch ``patch_size`` at ``img_size``.
            img_size, patch_size, mask_ratio: the data's crop side, patch side and masking ratio. ``pacofr fit``
                links them to ``data.image_size`` and the masker's ``patch_size``/``mask_ratio``: set them there.
            decoder_depth, decoder_dim: MAE decoder (default per size; base: 8 x 512).
            drop_path_rate: stochastic depth of the encoder.
            grad_checkpointing: recompute blocks in backward (less memory).
            norm_pix_eps: the per-patch normalisation's epsilon (MAE's norm-pix target).
            check_mask: assert on the device (no host sync) that each mask row has exactly the masked count.
        """
        super().__init__()
        self.encoder = build_encoder(
            encoder_size, img_size=img_size, patch_size=patch_size, drop_path_rate=drop_path_rate
        )
        dec = DECODER_DEFAULTS[encoder_size]
        grid = tuple(self.encoder.patch_embed.grid_size)
        self.encoder_size, self.img_size = encoder_size, img_size
        self.patch_size, self.grid_size = patch_size, grid
        self.num_patches = grid[0] * grid[1]
        self.patch_dim = patch_size * patch_size * 3
        self.decoder = MAEDecoder(
            grid,
            patch_size,
            self.encoder.embed_dim,
            decoder_dim=decoder_dim or dec.dim,
            depth=dec.depth if decoder_depth is None else decoder_depth,
            num_heads=None if decoder_dim else dec.num_heads,
        )
        self.mask_ratio = mask_ratio
        self.num_masked = num_masked_patches(self.num_patches, mask_ratio)
        self.num_visible = self.num_patches - self.num_masked
        self.norm_pix_eps = norm_pix_eps
        self.check_mask = check_mask
        self.grad_checkpointing = grad_checkpointing

    def finish_init(self) -> None:
        if self.grad_checkpointing:
            self.encoder.set_grad_checkpointing(True)
            self.decoder.set_grad_checkpointing(True)
        super().finish_init()

    def compile_forward_only(self, backend: str = "inductor") -> None:
        """Compile ``forward_model`` alone (the losses stay eager around it): for benchmarks that compare it with
        ``compile_losses``."""
        object.__setattr__(self, "forward_model", torch.compile(self.forward_model, backend=backend))

    # --- the model forward ------------------------------------------------------------------------------------
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.patch_size)

    def normalized_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch normalised pixels (B, N, p*p*3), float32: the reconstruction target."""
        return normalize_patches(self.patchify(images), self.norm_pix_eps)

    def check_batch_mask(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        if mask.shape != (b, self.num_patches):
            raise ValueError(f"mask must be (B, N) = ({b}, {self.num_patches}), got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        if self.check_mask:
            torch._assert_async((mask.sum(1) == self.num_masked).all(), "mask rows must hold exactly num_masked")
        return mask

    def forward_model(self, images: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W); mask (B, N) bool, True = masked, exactly ``num_masked`` per row. Returns target
        (B, N, P) normalised pixels, mask, keep_idx (B, K), encoded (B, 1 + K, D), pred (B, N, P),
        decoder_tokens (B, N, Dd) and loss_mask (B, N): the patches the loss counts (the masked ones, and
        any that ``replacements`` chose)."""
        mask = self.check_batch_mask(images, mask)
        target = self.normalized_patches(images)
        tokens = self.encoder.embed_patches(images)
        keep_idx = visible_indices(mask, self.num_visible)
        out = {"target": target, "mask": mask, "keep_idx": keep_idx}
        replace_idx, replace_tokens = self.replacements(out)
        encoded = self.encoder.forward_masked(tokens, keep_idx, replace_idx, replace_tokens)
        pred, decoder_tokens = self.decoder(encoded, keep_idx)
        loss_mask = mask | out["replaced"] if "replaced" in out else mask
        out.update(encoded=encoded, pred=pred, decoder_tokens=decoder_tokens, loss_mask=loss_mask)
        return out

    def replacements(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Visible patches whose encoder input is replaced: (ids (B, R), tokens (B, R, D)), or (None, None).
        A method that replaces patches adds ``replaced`` (B, N) bool to ``out``; they join the loss."""
        return None, None

    # --- optimisation -----------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that AdamW must not decay."""
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        return names | {f"decoder.{n}" for n in self.decoder.no_weight_decay()}

    def tensorboard_charts(self) -> Charts:
        return {
            "losses": {
                "reconstruction (train)": chart(r"^loss/rec$", r"^loss/rec_covered$"),
                "validation reconstruction": chart(r"^val/rec$", r"^val/rec_covered$"),
            },
            "reconstruction & masking": {
                "PSNR, dB (train and validation)": chart(r"^recon/psnr_db$", r"^val/psnr_db$"),
                "mask ratios (masked, replaced, covered share)": chart(r"^mask/.*$"),
            },
        }

    # --- cost -------------------------------------------------------------------------------------------------
    def flops_per_image(self) -> float:
        """Analytic FLOPs (2 per multiply-add) of one training step (forward + backward = 3x forward) per image,
        matmuls only: encoder on the visible tokens, decoder on all, patch embedding and the heads."""
        n, p = self.num_patches, self.patch_dim
        d, depth = self.encoder.embed_dim, len(self.encoder.blocks)
        dd, ddepth = self.decoder.decoder_dim, self.decoder.depth
        te, td = self.encoder_tokens() + 1, n + 1
        enc = blocks_flops(depth, d, te, self.encoder_mlp_ratio())
        dec = blocks_flops(ddepth, dd, td, self.decoder.mlp_ratio)
        emb = 2 * n * p * d
        head = 2 * n * dd * p + 2 * te * d * dd
        return 3.0 * (enc + dec + emb + head)

    def encoder_mlp_ratio(self) -> float:
        d = self.encoder.embed_dim
        return self.encoder.blocks[0].mlp.fc1.out_features / d if len(self.encoder.blocks) else 4.0

    def encoder_tokens(self) -> int:
        """Patch tokens the encoder processes per image (the visible ones here)."""
        return self.num_visible

    def encoder_spec(self) -> dict[str, Any]:
        """What rebuilds the encoder (checkpoints record it for ``pacofr eval`` and ``pacofr export``)."""
        return {"encoder_size": self.encoder_size, "img_size": self.img_size, "patch_size": self.patch_size}
