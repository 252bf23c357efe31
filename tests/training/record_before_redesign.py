"""Record, with the code before the objective redesign, each method config's loss terms, gradients and
post-step codebook buffers on a fixed batch (CPU, one thread, fixed seeds)."""
import hashlib, json, sys
from pathlib import Path
import torch, yaml
import lightning as L
from pacofr.modules.pretrain import PaCoFRPretrain

REPO = Path("/work/main")
SMALL = {"encoder_size": "tiny", "img_size": 32, "patch_size": 16, "decoder_depth": 1, "decoder_dim": 32, "compile": False}
CASES = {
    "mae": ("mae_vit_b16", {}, "main"),
    "fsfm": ("fsfm_vit_b16", {}, "main"),
    "pacofr_incubation": ("pacofr_vit_b16", {}, "incubation"),
    "pacofr": ("pacofr_vit_b16", {}, "main"),
    "pacofr_affinity_ema_gumbel": ("pacofr_vit_b16", {"spatial_variant": "affinity", "codebook_update": "ema", "candidate_mix": "gumbel"}, "main"),
    "demo_tiny": ("demo_tiny", {}, "main"),
}

def digest(t): return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]

def batch(n_patches, num_masked, img, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(b, n_patches, generator=g).argsort(1)
    mask = torch.zeros(b, n_patches, dtype=torch.bool).scatter_(1, order[:, :num_masked], True)
    covered = torch.zeros_like(mask).scatter_(1, order[:, :1], True)
    hist = torch.rand(b, n_patches, 9, generator=g).pow(4)
    return {"image": torch.randn(b, 3, img, img, generator=g), "mask": mask, "covered_patches": covered,
            "region_hist": hist / hist.sum(-1, keepdim=True), "covered": torch.zeros(b, dtype=torch.long)}

torch.set_num_threads(1)
out = {}
for name, (cfg, extra, phase) in CASES.items():
    model_args = yaml.safe_load((REPO / f"configs/pretrain/{cfg}.yaml").read_text())["model"]
    model_args.update(SMALL); model_args.update(extra)
    model_args["img_size"] = 64 if name == "demo_tiny" else 32
    L.seed_everything(0, verbose=False)
    module = PaCoFRPretrain(**model_args)
    if phase == "main":
        module.incubation_steps = 0
    b = batch(module.model.num_patches, module.model.num_masked, model_args["img_size"])
    torch.manual_seed(1)
    total, terms, o = module.compute_losses(b)
    total.backward()
    rec = {"args": model_args, "phase": phase, "total": total.item().hex(),
           "terms": {k: v.item().hex() for k, v in terms.items()},
           "grads": {n: digest(p.grad) for n, p in module.named_parameters() if p.grad is not None},
           "no_grad": sorted(n for n, p in module.named_parameters() if p.grad is None)}
    if module.model.codebook is not None:
        module.model.update_codebook_state({"target": o["target"], "target_code": o["target_code"]})
        rec["codebook_buffers"] = {n: digest(v) for n, v in module.model.codebook.named_buffers()}
    rec["state_keys"] = list(module.state_dict().keys())
    out[name] = rec
    print(name, rec["total"], len(rec["grads"]))
Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
