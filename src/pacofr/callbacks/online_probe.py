"""Online monitor of the representation during pretraining: every N steps, embed a small fixed set of
synthetic faces with the current encoder and log how well cheap probes read pose and identity from it.

- ``probe/pose_mae`` (and ``probe/pose_mae_yaw|pitch|roll``): degrees, cross-validated ridge regression of
  head pose from pooled features (:class:`pacofr.eval.probes.RidgeProbe`);
- ``probe/knn_identity_acc``: leave-one-out k-NN identity accuracy (:class:`pacofr.eval.probes.KNNProbe`).

The set is the ``split`` (default ``val``) of a ``pacofr-faces/1`` folder whose json carries ``pose`` and
``identity`` (the synthetic faces of ``pacofr-prep synth``), read with the benchmark reader, so the
pretraining data module is untouched. Rising accuracy / falling MAE while the loss falls means the
encoder learns facial structure; a flat line means it does not. Costs one forward pass over
``num_samples`` images per probe; every process embeds its share and the metrics gather the features.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import numpy as np
import torch

from pacofr.eval.crop import IMAGENET_MEAN, IMAGENET_STD, crop_resize, to_tensor_image
from pacofr.eval.datasets import SynthFaces
from pacofr.eval.probes import KNNProbe, RidgeProbe
from pacofr.training.fsdp_access import call_unsharded, is_fsdp

POSE_AXES = ("yaw", "pitch", "roll")


class OnlineProbe(L.Callback):
    """Args:
    root: the synthetic faces folder (default: the data module's ``root``).
    split: manifest split to probe on (held-out identities: ``val``).
    num_samples: faces taken evenly spread over the split.
    every_n_steps: probe cadence in optimizer steps (also after the last step).
    batch_size: images per forward pass.
    pool: ``avg`` (mean of the patch tokens; MAE-style encoders train no class token) or ``token``.
    ridge_alpha, num_folds: ridge strength (per sample, standardised features) and CV folds.
    knn_k: neighbours voting for the identity.
    """

    def __init__(
        self,
        root: str | None = None,
        split: str = "val",
        num_samples: int = 128,
        every_n_steps: int = 100,
        batch_size: int = 64,
        pool: Literal["avg", "token"] = "avg",
        ridge_alpha: float = 1.0,
        num_folds: int = 4,
        knn_k: int = 1,
    ):
        if every_n_steps < 1 or num_samples < 2 * num_folds:
            raise ValueError(f"need every_n_steps >= 1 and num_samples >= {2 * num_folds}")
        if pool not in ("avg", "token"):
            raise ValueError(f"pool must be 'avg' or 'token', got {pool!r}")
        self.root, self.split, self.num_samples = root, split, num_samples
        self.every, self.batch_size, self.pool = every_n_steps, batch_size, pool
        self.ridge_alpha, self.num_folds, self.knn_k = ridge_alpha, num_folds, knn_k
        self.images: torch.Tensor | None = None  # this process's share, normalised, on the CPU
        self.num_chosen = 0  # probe images over all ranks
        self.pose: torch.Tensor | None = None
        self.identity: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self.last_step = -1
        self.last_metrics: dict[str, float] = {}

    # --- the probe set --------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.images is not None:
            return
        root = self.root or getattr(trainer.datamodule, "root", None)
        if root is None:
            raise ValueError("OnlineProbe: no root given and the data module has no `root`")
        faces = SynthFaces(root, self.split)
        self._check_labels(faces, root, [0])  # before reading every identity: one clear line, not a KeyError
        all_ids = faces.identities()
        chosen = whole_identities(all_ids, min(self.num_samples, len(faces)))
        mine = chosen[trainer.global_rank :: trainer.world_size]
        self.num_chosen = len(chosen)
        encoder = _encoder(pl_module)
        size = int(encoder.patch_embed.img_size[0])
        augment = getattr(trainer.datamodule, "augment", None)
        mean, std = getattr(augment, "mean", IMAGENET_MEAN), getattr(augment, "std", IMAGENET_STD)
        self._check_labels(faces, root, chosen)  # every chosen sample, not just this process's: all ranks fail alike
        id_codes = {ident: code for code, ident in enumerate(sorted({all_ids[i] for i in chosen}, key=str))}
        images, pose, identity = [], [], []
        for i in mine:
            sample = faces[int(i)]
            images.append(to_tensor_image(crop_resize(sample, size, use_box=False)["image"], mean, std))
            pose.append(torch.as_tensor(sample["pose"], dtype=torch.float32))
            identity.append(id_codes[sample["identity"]])
        self.images = torch.stack(images) if images else torch.empty(0, 3, size, size)
        self.pose = torch.stack(pose) if pose else torch.empty(0, 3)
        self.identity = torch.tensor(identity, dtype=torch.long)
        self.index = torch.as_tensor(mine, dtype=torch.long)

    def _check_labels(self, faces: SynthFaces, root: str, indices) -> None:
        for i in indices:
            missing = [key for key in ("pose", "identity") if key not in faces.meta(int(i))]
            if missing:
                raise ValueError(
                    f"OnlineProbe: sample {i} of {root}/{self.split} has no {' or '.join(missing)} in its json "
                    "(probe on synthetic faces from `pacofr-prep synth`)"
                )

    # --- probing --------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """Pooled features of this process's images with the encoder as it is now (eval mode)."""
        encoder = _encoder(pl_module)
        was_training = encoder.training
        encoder.eval()
        out = []
        mine = self.images.shape[0]
        # FSDP: every rank runs the same number of forwards (each gathers the weights), even with a smaller share
        largest_share = -(-self.num_chosen // trainer.world_size) if is_fsdp(trainer) else mine
        try:
            for start in range(0, largest_share, self.batch_size):
                x = self.images[start : start + self.batch_size]
                if x.shape[0] == 0:
                    x = torch.zeros(1, *self.images.shape[1:])  # a stand-in so this rank joins the gather
                with trainer.precision_plugin.forward_context():
                    tokens = call_unsharded(trainer, encoder.forward_features, x.to(pl_module.device))
                pooled = tokens[:, encoder.num_prefix_tokens :].mean(1) if self.pool == "avg" else tokens[:, 0]
                out.append(pooled.float()[: max(0, min(self.batch_size, mine - start))])
        finally:
            encoder.train(was_training)
        return torch.cat(out) if out else torch.empty(0, encoder.embed_dim, device=pl_module.device)

    def probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        feats = self.features(trainer, pl_module)
        device = feats.device
        ridge = RidgeProbe(self.ridge_alpha, self.num_folds).to(device)
        knn = KNNProbe(self.knn_k).to(device)
        index = self.index.to(device)
        ridge.update(feats, self.pose.to(device), index)
        knn.update(feats, self.identity.to(device), index)
        mae = ridge.compute()  # gathers every process's share when distributed
        metrics = {"probe/pose_mae": float(mae.mean())}
        metrics.update({f"probe/pose_mae_{axis}": float(mae[i]) for i, axis in enumerate(POSE_AXES)})
        metrics["probe/knn_identity_acc"] = float(knn.compute())
        return metrics

    def _maybe_probe(self, trainer: L.Trainer, pl_module: L.LightningModule, force: bool = False) -> None:
        step = trainer.global_step
        if step == self.last_step or (not force and step % self.every != 0) or trainer.sanity_checking:
            return  # gradient accumulation repeats a global step; probe it once
        self.last_step = step
        self.last_metrics = self.probe(trainer, pl_module)
        # straight to the loggers: self.log would only be written on log_every_n_steps boundaries
        for logger in trainer.loggers:
            logger.log_metrics(self.last_metrics, step=step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step > 0:
            self._maybe_probe(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_probe(trainer, pl_module, force=True)


def whole_identities(identities: list, n: int) -> np.ndarray:
    """Up to ``n`` sample indices made of whole identities spread evenly over the sorted identity list.

    Evenly spaced *samples* can miss every repeated identity (the synthetic faces cycle through their
    people), which leaves the k-NN identity probe undefined; whole identities always repeat."""
    groups: dict = {}
    for i, ident in enumerate(identities):
        groups.setdefault(ident, []).append(i)
    order = sorted(groups, key=str)
    per_identity = len(identities) / max(1, len(order))
    wanted = min(len(order), max(1, int(np.ceil(n / per_identity))))
    picked = [order[j] for j in np.unique(np.linspace(0, len(order) - 1, wanted).round().astype(int))]
    chosen = sorted(i for ident in picked for i in groups[ident])
    return np.asarray(chosen[:n] if len(chosen) > n else chosen, dtype=int)


def _encoder(pl_module: L.LightningModule) -> torch.nn.Module:
    encoder = getattr(getattr(pl_module, "objective", None), "encoder", None)
    if encoder is None:
        raise ValueError(f"OnlineProbe: {type(pl_module).__name__} has no `objective.encoder` to probe")
    return encoder
