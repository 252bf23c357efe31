"""``PretrainObjective``: one pretraining method as a plain ``nn.Module`` (its model parts and its loss).

An objective knows nothing of Lightning: ``pacofr.training.PretrainModule`` owns the step (optimiser, clipping,
the non-finite gate, logging) and calls the objective's small interface:

- ``forward(batch, step) -> StepOutput``: the total loss, the logged terms and the model outputs;
- ``after_step(out, step, apply)``: state that changes after the optimiser step (codebook counters, EMA teachers);
- ``named_param_groups(weight_decay)``: the AdamW groups, with parameter names (checkpoints map Adam's state by
  name) and a ``schedule`` tag (``main`` or ``codebook``) that chooses the group's learning-rate schedule;
- ``encoder`` (what is exported and evaluated) and ``flops_per_image()`` (for MFU).

This base class is the masked-autoencoder core every method shares: a ViT encoder on the visible patches, an
MAE decoder over all positions, and the per-patch-normalised pixel target. A method is a subclass in its own
file (``mae.py``, ``fsfm.py``, ``paco_fr.py``) that adds parts and loss terms; ``docs/architecture.md`` shows
how to add one. The step's hot path (``losses``) reads only the batch's tensors and static configuration, never
the step counter, so ``compile_losses`` traces it once as one graph.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
from torch import nn

from pacofr.data.batch import PretrainBatch, num_masked_patches, require
from pacofr.models.decoder import MAEDecoder
from pacofr.models.patches import normalize_patches, patchify
from pacofr.models.sizes import DECODER_DEFAULTS, SizeName, build_encoder
from pacofr.models.unwrap import original_param_name
from pacofr.optim import param_groups


class StepOutput(NamedTuple):
    """What an objective returns for one batch."""

    total: torch.Tensor  # the scalar loss to minimise
    terms: dict[str, torch.Tensor]  # logged as loss/<name>
    out: dict[str, torch.Tensor]  # model outputs (pred, target, loss_mask, ...), for monitors and after_step


def blocks_flops(depth: int, width: int, tokens: int, mlp_ratio: float) -> float:
    """Forward FLOPs (2 per multiply-add, matmuls only) of ``depth`` transformer blocks on ``tokens`` tokens:
    the qkv, projection and MLP matmuls, and the attention scores and mix."""
    return depth * (2 * (4 + 2 * mlp_ratio) * width * width * tokens + 4 * tokens * tokens * width)


def visible_indices(mask: torch.Tensor, num_visible: int) -> torch.Tensor:
    """(B, N) bool mask (True = masked) -> (B, num_visible) indices of the visible patches, ascending."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible (0) first, in patch order
    return order[:, :num_visible]


class PretrainObjective(nn.Module):
    """The masked-autoencoder core: encoder on the visible patches, decoder, norm-pix reconstruction target."""

    # batch entries ``losses`` reads (required, then optional); anything else in the batch is not passed to it
    batch_keys: tuple[str, ...] = ("image", "mask")
    optional_batch_keys: tuple[str, ...] = ()
    # steps at the start in which only the ``codebook`` schedule group trains (see ``incubating``)
    incubation_steps: int = 0

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
        # the compiled ``losses`` (``compile_losses``), kept outside the module registry: registered, a compiled
        # module would put every weight in the state dict twice
        object.__setattr__(self, "_compiled_losses", None)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every objective's construction ends with :meth:`finish_init`, once, after the most derived
        ``__init__`` has built all its parts: no subclass has to remember the call."""
        super().__init_subclass__(**kwargs)
        init = cls.__init__  # the class's own, or the (already wrapped) one it inherits

        @functools.wraps(init)
        def init_then_finish(self: PretrainObjective, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self) is cls:  # the outermost __init__ has returned: every part exists
                self.finish_init()

        cls.__init__ = init_then_finish  # type: ignore[method-assign]

    def finish_init(self) -> None:
        """Run once when construction is done (see ``__init_subclass__``): settings that apply to every part.
        A subclass with parts of its own to configure extends it (``super().finish_init()`` first)."""
        if self.grad_checkpointing:
            self.encoder.set_grad_checkpointing(True)
            self.decoder.set_grad_checkpointing(True)
        # parameter dimensions as built: wrappers (FSDP) flatten parameters, and weight decay depends on them
        self._param_ndim = {n: p.ndim for n, p in self.named_parameters()}

    # --- the step ---------------------------------------------------------------------------------------------
    def forward(self, batch: PretrainBatch, step: int = 0) -> StepOutput:
        """Total loss, logged terms and outputs for one batch at optimiser step ``step``."""
        require(batch, *self.batch_keys, who=type(self).__name__)
        tensors = {k: batch[k] for k in self.batch_keys + self.optional_batch_keys if k in batch}
        return (self._compiled_losses or self.losses)(tensors)

    def losses(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """The hot path: model forward and every loss term (what ``compile_losses`` compiles). Subclasses add
        terms; it may read only the tensors in ``batch`` and static configuration."""
        raise NotImplementedError

    def compile_losses(self, backend: str = "inductor") -> None:
        """``torch.compile`` ``losses`` as one graph (tensors in, static configuration only: one compile, no
        recompiles while training; train and eval mode, grad and no-grad are one graph each)."""
        if self._compiled_losses is not None:
            raise RuntimeError("compile_losses has already run on this objective")
        object.__setattr__(self, "_compiled_losses", torch.compile(self.losses, backend=backend))

    @property
    def losses_compiled(self) -> bool:
        return self._compiled_losses is not None

    def compile_forward_only(self, backend: str = "inductor") -> None:
        """Compile ``forward_model`` alone (the losses stay eager around it): for benchmarks that compare it with
        ``compile_losses``."""
        object.__setattr__(self, "forward_model", torch.compile(self.forward_model, backend=backend))

    @torch.no_grad()
    def after_step(self, out: dict[str, torch.Tensor], step: int, apply: torch.Tensor | None = None) -> None:
        """State updates once per optimiser step, after it: here the EMA of every momentum pair (nothing for plain
        MAE). ``apply``: None when the step was taken (decided on the host), else the device flag (1 = taken) that
        must gate every update. A method with state of its own extends it (``super().after_step(...)``)."""
        self.update_momentum_pairs(step, apply)

    def momentum(self, step: int) -> float | None:
        """The EMA momentum of the momentum pairs at optimiser step ``step``; None: no update at this step."""
        return None

    @torch.no_grad()
    def update_momentum_pairs(self, step: int, apply: torch.Tensor | None = None) -> None:
        """One gated EMA update of every :meth:`momentum_pairs` target towards its online module:
        ``target += (1 - m) * apply * (online - target)`` with ``m = momentum(step)``."""
        pairs = self.momentum_pairs()
        m = self.momentum(step) if pairs else None
        if m is None:
            return
        weight = 1.0 - m if apply is None else (1.0 - m) * apply
        for online_name, target_name in pairs:
            online, target = self.get_submodule(online_name), self.get_submodule(target_name)
            for t, s in zip(target.parameters(), online.parameters()):
                t.lerp_(s.detach(), weight)

    # --- what the training layers ask (precision, sharding, EMA pairs) ---------------------------------------
    def fp32_modules(self) -> tuple[str, ...]:
        """Submodules (names relative to this module) that must compute and keep their parameters, gradient
        reduction and buffers in float32 whatever the run's precision: bf16 autocast is off inside them, and FSDP
        gives them an fp32 mixed-precision policy of their own (``pacofr.strategies``). For parts whose buffers
        are written in place between steps or whose argmins are rounding-sensitive (PaCo-FR's codebook)."""
        return ()

    def replicated_modules(self) -> tuple[str, ...]:
        """Submodules that FSDP keeps whole on every rank (``NO_SHARD`` units): small parts whose between-step
        bookkeeping rewrites parameters outside any forward, where a sharded parameter is only this rank's slice."""
        return ()

    def momentum_pairs(self) -> tuple[tuple[str, str], ...]:
        """``(online, target)`` submodule pairs whose target is an EMA of the online one (updated in
        ``after_step``). Under FSDP the training module runs ``after_step`` with these parameters whole."""
        return ()

    def take_reseeded_rows(self) -> dict[str, torch.Tensor]:
        """Parameter rows given new values by ``after_step`` since the last call (names relative to this module ->
        (rows,) bool device masks): the trainer resets their optimiser moments. Empty for most methods."""
        return {}

    def configure_run(self, total_steps: int, samples_per_epoch: int | None, global_batch: int) -> None:
        """What the objective learns of the run before its schedules are built (called by the training module):
        the optimiser steps, the training split's size (None when unknown) and the global batch. E.g. an
        incubation given in epochs becomes steps, an EMA momentum schedule learns its length."""

    def incubating(self, step: int) -> bool:
        """Whether step ``step`` belongs to a phase in which only some parts train (PaCo-FR's incubation)."""
        return step < self.incubation_steps

    def state_for_after_step(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The outputs ``after_step`` needs (kept by the training module until the optimiser step), or None."""
        return None

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

    def monitors(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Method-specific scalars to log each step (device tensors; no host reads)."""
        return {}

    # --- optimisation -----------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that AdamW must not decay."""
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        return names | {f"decoder.{n}" for n in self.decoder.no_weight_decay()}

    def codebook_parameter_names(self) -> set[str]:
        """Names of the parameters in the ``codebook`` schedule group (empty without a codebook)."""
        return set()

    def probe_parameter_names(self) -> set[str]:
        """Names of parameters that only measure (e.g. a position-only prior): the ``probe`` schedule group, which
        trains from step 0 and is clipped apart, so it neither waits for nor shrinks the backbone's step."""
        return set()

    def named_param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: ``params``, ``names`` (as the unwrapped module gives them: under FSDP,
        ``named_parameters()`` adds wrapper prefixes), ``weight_decay`` and ``group`` = ``<schedule>/<decay>``,
        ``schedule`` in (``codebook``, ``main``, ``probe``). Codebook parameters come first, each part decayed then
        not."""
        codebook, probe = self.codebook_parameter_names(), self.probe_parameter_names()
        named = [(original_param_name(n), p) for n, p in self.named_parameters() if p.requires_grad]
        name_of = {id(p): n for n, p in named}
        groups = []
        for schedule, subset in (
            ("codebook", [(n, p) for n, p in named if n in codebook]),
            ("main", [(n, p) for n, p in named if n not in codebook and n not in probe]),
            ("probe", [(n, p) for n, p in named if n in probe]),
        ):
            for g in param_groups(subset, weight_decay, no_decay_names=self.no_weight_decay(), ndim=self._param_ndim):
                if g["params"]:
                    g["group"] = f"{schedule}/{g['group']}"
                    g["schedule"] = schedule
                    g["names"] = [name_of[id(p)] for p in g["params"]]
                    groups.append(g)
        return groups

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

    def host_state(self) -> dict[str, Any]:
        """Host-side state (not in the state dict) that a checkpoint must carry, as top-level checkpoint entries."""
        return {}

    def load_host_state(self, checkpoint: dict[str, Any]) -> None:
        """Restore what ``host_state`` wrote (missing entries: leave the state as built)."""

    def encoder_spec(self) -> dict[str, Any]:
        """What rebuilds the encoder (checkpoints record it for ``pacofr eval`` and ``pacofr export``)."""
        return {"encoder_size": self.encoder_size, "img_size": self.img_size, "patch_size": self.patch_size}
