"""Each loss term's share of the encoder's gradient, on real batches: does the spatial (or any) term matter?

    .venv/bin/python bench/loss_shares.py --data data/study-faces   # the demo's configs (bench.common.PRETRAIN_RUNS)
    .venv/bin/python bench/loss_shares.py --config configs/pretrain/tiny.yaml configs/pretrain/method/pacofr.yaml \
        configs/pretrain/demo.yaml --data data/study-faces                # the same, named
    .venv/bin/python bench/loss_shares.py --config ... --ckpt runs/study/default/pacofr/seed0/run/checkpoints/last.ckpt

For each term the objective logs (after incubation: reconstruction, codebook, spatial region and geometry), the
norm of the gradient its weighted contribution sends into the encoder's parameters, and that norm as a share of
the encoder gradient of the whole loss, averaged over ``--batches`` validation batches. Without ``--ckpt`` the
objective is freshly initialised (the start of training); with one, its weights are the checkpoint's (later).
Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.common

import torch  # noqa: E402

from bench.common import PRETRAIN_RUNS, load_pretrain_config  # noqa: E402
from pacofr.checkpointing.legacy_keys import upgrade_checkpoint  # noqa: E402
from pacofr.data.datamodule import PretrainDataModule  # noqa: E402
from pacofr.losses.spatial import spatial_consistency_loss  # noqa: E402
from pacofr.masking import StructuredMasker  # noqa: E402
from pacofr.objectives import PaCoFR  # noqa: E402

# the spatial loss before its revision (docs/method.md §6.3)
BEFORE = {"spatial_on": "all", "spatial_pairs": "mean", "spatial_sides": False}


def build(config: dict, ckpt: str | None, spatial_as_before: bool = False) -> PaCoFR:
    spec = config["model"]["objective"]
    masker = config["data"]["masker"]["init_args"]
    args = {**spec["init_args"], "img_size": config["data"]["image_size"], "patch_size": masker["patch_size"]}
    args.update(mask_ratio=masker["mask_ratio"], incubation_steps=0, incubation_epochs=None)
    if spatial_as_before:
        args.update(BEFORE)
    torch.manual_seed(0)
    objective = PaCoFR(**args)
    if ckpt:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        upgrade_checkpoint(checkpoint)
        state = {k.removeprefix("objective."): v for k, v in checkpoint["state_dict"].items()}
        missing, unexpected = objective.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if not m.startswith("position_prior")]:
            raise SystemExit(f"checkpoint does not fit the config: missing {missing}, unexpected {unexpected}")
    return objective


def term_losses(objective: PaCoFR, batch: dict) -> dict[str, torch.Tensor]:
    """The weighted terms of the objective's loss after incubation, each a scalar with its graph."""
    total, terms, out = objective.losses({k: batch[k] for k in ("image", "mask", "covered_patches", "region_hist")})
    weighted = {"reconstruction": terms["rec"] + objective.covered_weight * terms.get("rec_covered", 0.0)}
    weighted["codebook"] = objective.codebook_weight * terms["codebook"]
    if objective.spatial_head is not None:
        sp = spatial_consistency_loss(
            objective.spatial_head(out["decoder_tokens"]), batch["region_hist"], **objective.spatial_settings(out)
        )
        weighted["spatial region"] = objective.spatial_weight * sp["region"]
        weighted["spatial geometry"] = objective.spatial_weight * objective.spatial_centroid_weight * sp["centroid"]
    weighted["total"] = total
    return weighted


def encoder_grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return (
        float(torch.nn.utils.get_total_norm([g for g in grads if g is not None]))
        if any(g is not None for g in grads)
        else 0.0
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", nargs="+", default=list(PRETRAIN_RUNS["demo_tiny"]), help="config files, composed in order"
    )
    p.add_argument("--data", default="data/study-faces")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--spatial-as-before", action="store_true", help="all patches, mean over pairs, sides merged")
    args = p.parse_args()
    config = load_pretrain_config(args.config)
    objective = build(config, args.ckpt, args.spatial_as_before).train()
    masker = StructuredMasker(**config["data"]["masker"]["init_args"])
    data = PretrainDataModule(
        args.data, batch_size=args.batch_size, num_workers=0, image_size=config["data"]["image_size"], masker=masker
    )
    data.setup("fit")
    params = [p for p in objective.encoder.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    loader = iter(data.val_dataloader())
    for _ in range(args.batches):
        batch = data.to_model_input(next(loader))
        for name, loss in term_losses(objective, batch).items():
            sums[name] = sums.get(name, 0.0) + encoder_grad_norm(loss, params) / args.batches
    total = sums.pop("total")
    print(f"encoder gradient norm of each weighted term ({'checkpoint ' + args.ckpt if args.ckpt else 'at init'})\n")
    print("| term | encoder grad norm | share of the total's |\n|---|---|---|")
    for name, value in sums.items():
        print(f"| {name} | {value:.4g} | {value / total:.1%} |")
    print(f"| total | {total:.4g} | 100% |")
    record = {"bench": "loss_shares", "ckpt": args.ckpt, "spatial_as_before": args.spatial_as_before, "total": total}
    print(json.dumps({**record, **sums}))


if __name__ == "__main__":
    main()
