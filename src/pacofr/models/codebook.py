"""The candidate codebook of PaCo-FR: codes C, a code->pixel head g, a Belief Predictor B, and the
code->token projection W used to build the candidate-mixture input of replaced patches.

Patch-pixel alignment: a patch's target code is the code whose pixel prototype g(c_k) is nearest to the
patch's normalised pixels. B learns to predict that code from the pixels; its top-m beliefs are the
patch's candidates. Two codebook update rules:

* ``update="grad"``: C and g learn from the alignment loss ``||sg(x~) - g(c_k*)||^2``.
* ``update="ema"``: pixel-space prototypes are exponential moving averages of their assigned patches
  (VQ-VAE EMA with Laplace-smoothed counts); alignment uses those, and C/g learn to decode each code to
  its EMA prototype (``||sg(proto_k*) - g(c_k*)||^2``), so the codes stay pixel-aligned.

State (usage counters, a ring buffer of recent patches, EMA tables) lives in device buffers and is
updated by :meth:`CandidateCodebook.update_state` with tensor ops only (no host sync). Under DDP/FSDP the
counts and sums are all-reduced, the recent-patch rows all-gathered and re-seeded codes broadcast from rank 0,
so every rank keeps the same codebook state; DDP's own buffer broadcast is then unnecessary
(``broadcast_buffers=False`` saves traffic), and a checkpoint holding any rank's copy resumes exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from pacofr.models.init import mae_init_

MixMode = Literal["soft", "hard", "gumbel"]
UpdateMode = Literal["grad", "ema"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each rank -> (world * n, ...) on every rank, in rank order."""
    if not _distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _broadcast_(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def squared_distances(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``||x_i - g_k||^2`` for (..., P) x (K, P) -> (..., K), as one matmul, in float32 (argmin is
    sensitive to bf16 rounding and this is a small share of the step)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        g = prototypes.float()
        return (x * x).sum(-1, keepdim=True) - 2.0 * (x @ g.t()) + (g * g).sum(-1)


def mixture_weights(candidate_logits: torch.Tensor, mix: MixMode = "soft", gumbel_tau: float = 1.0) -> torch.Tensor:
    """Weights over the top-m candidates (..., m), summing to 1.

    soft: belief softmax renormalised over the candidates (softmax of their logits); hard: one-hot on
    the most believed candidate forward, soft gradient backward (straight-through); gumbel: a
    Gumbel-softmax sample at temperature ``gumbel_tau``.
    """
    soft = candidate_logits.float().softmax(-1)
    if mix == "soft":
        return soft
    if mix == "hard":
        hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        return hard - soft.detach() + soft
    if mix == "gumbel":
        return F.gumbel_softmax(candidate_logits.float(), tau=gumbel_tau, hard=False, dim=-1)
    raise ValueError(f"unknown mix {mix!r}; use 'soft', 'hard' or 'gumbel'")


class CandidateCodebook(nn.Module):
    def __init__(
        self,
        patch_dim: int,
        token_dim: int,
        num_codes: int = 1024,
        code_dim: int = 256,
        proto_hidden: int = 512,
        belief_hidden: int = 512,
        num_candidates: int = 4,
        mix: MixMode = "soft",
        gumbel_tau: float = 1.0,
        update: UpdateMode = "grad",
        ema_decay: float = 0.99,
        ema_eps: float = 1e-5,
        dead_after: int = 100,
        reseed_every: int = 50,
        reseed_noise: float = 0.05,
        reseed_belief: bool = True,
        reseed_fit_steps: int = 20,
        usage_window: int | None = None,
        buffer_size: int = 2048,
        buffer_writes_per_step: int = 256,
    ) -> None:
        """``reseed_belief``: a re-seeded code takes over the Belief Predictor's output row of the live code it
        copies, so the predictor splits that code's belief between the two instead of meeting a code it has
        never scored (which knocked its cross-entropy over: 1.5 -> 15 in one re-seed). ``reseed_fit_steps``: steps of
        fitting a re-seeded code so that its prototype g(c) matches the patch it is re-seeded from (0: the noised
        copy of the source code, which nearly ties its source's prototype). ``usage_window``: the
        window (updates) of ``usage_fraction``, default ``dead_after``."""
        super().__init__()
        if mix not in ("soft", "hard", "gumbel"):
            raise ValueError(f"unknown mix {mix!r}; use 'soft', 'hard' or 'gumbel'")
        if update not in ("grad", "ema"):
            raise ValueError(f"unknown update {update!r}; use 'grad' or 'ema'")
        if not 1 <= num_candidates <= num_codes:
            raise ValueError(f"num_candidates must be in [1, num_codes={num_codes}], got {num_candidates}")
        self.patch_dim = patch_dim
        self.token_dim = token_dim
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.proto_hidden = proto_hidden
        self.belief_hidden = belief_hidden
        self.num_candidates = num_candidates
        self.mix = mix
        self.gumbel_tau = gumbel_tau
        self.update = update
        self.ema_decay = ema_decay
        self.ema_eps = ema_eps
        self.dead_after = dead_after
        self.reseed_every = reseed_every
        self.reseed_noise = reseed_noise
        self.reseed_belief = reseed_belief
        self.reseed_fit_steps = reseed_fit_steps
        # the rows re-seeded by the last re-seeding, (K,) bool on the device, until the trainer takes them to reset
        # their optimiser moments (``take_reseeded``); not state: used within the step that made it
        self._reseeded: torch.Tensor | None = None
        self.usage_window = usage_window or dead_after
        self.buffer_writes_per_step = min(buffer_writes_per_step, buffer_size)
        self._updates = 0  # host-side step counter: decides when to re-seed without reading the device

        self.codes = nn.Parameter(torch.randn(num_codes, code_dim))
        self.proto_head = Mlp(code_dim, proto_hidden, patch_dim)  # g: code -> normalised-pixel prototype
        self.belief = Mlp(patch_dim, belief_hidden, num_codes)  # B: normalised pixels -> logits over codes
        self.token_proj = nn.Linear(code_dim, token_dim)  # W: code -> encoder input token
        for m in (self.proto_head, self.belief, self.token_proj):
            m.apply(mae_init_)

        # steps_since_used decides re-seeding (a re-seeded code starts a fresh grace period); steps_since_hit is the
        # honest monitor: updates since a patch was last assigned to the code, never reset by re-seeding
        self.register_buffer("steps_since_used", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("steps_since_hit", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("reseeded_total", torch.zeros((), dtype=torch.long))  # codes re-seeded so far
        self.register_buffer("recent_patches", torch.zeros(buffer_size, patch_dim))
        self.register_buffer("recent_count", torch.zeros((), dtype=torch.long))  # patches ever written
        if update == "ema":
            with torch.no_grad():
                init = self.proto_head(self.codes)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())

    # --- parameters -----------------------------------------------------------------------------
    def incubation_parameters(self) -> list[nn.Parameter]:
        """What trains during incubation: the codes C, the pixel head g and the Belief Predictor B."""
        return [self.codes, *self.proto_head.parameters(), *self.belief.parameters()]

    def no_weight_decay(self) -> set[str]:
        return {"codes"}

    # --- the pieces -------------------------------------------------------------------------------
    def prototypes(self) -> torch.Tensor:
        """g(C): (K, P) pixel prototypes of the learnable codes (with gradient)."""
        return self.proto_head(self.codes)

    def alignment_prototypes(self, learned: torch.Tensor | None = None) -> torch.Tensor:
        """The prototypes patches are assigned against (no gradient): g(C), or the EMA table."""
        if self.update == "ema":
            # Laplace-smoothed counts keep a long-unused code's prototype finite (VQ-VAE EMA)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.ema_eps) / (total + self.num_codes * self.ema_eps) * total
            return self.ema_sum / smoothed.unsqueeze(-1)
        return (self.prototypes() if learned is None else learned).detach()

    def nearest_codes(
        self, patches: torch.Tensor, m: int = 1, prototypes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The m nearest prototypes of each patch: (squared distances, code ids), both (..., m), nearest first."""
        protos = self.alignment_prototypes() if prototypes is None else prototypes
        neg, idx = torch.topk(-squared_distances(patches, protos), m, dim=-1)
        return -neg, idx

    def belief_logits(self, patches: torch.Tensor) -> torch.Tensor:
        """B(x~): (..., P) -> (..., K)."""
        return self.belief(patches)

    def candidates(self, logits: torch.Tensor, m: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-m most believed codes and their mixture weights: (weights (..., m), code ids (..., m))."""
        top_logits, idx = torch.topk(logits, m or self.num_candidates, dim=-1)
        return mixture_weights(top_logits, self.mix, self.gumbel_tau), idx

    def mixture_tokens(
        self, logits: torch.Tensor, random_candidates: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate-mixture tokens ``sum_k w_k W c_k`` for (..., K) logits -> (tokens (..., D), weights, ids).
        ``random_candidates``: the same weights over codes drawn uniformly at random (a study control)."""
        weights, idx = self.candidates(logits)
        if random_candidates:
            idx = torch.randint(self.num_codes, idx.shape, device=idx.device)
        code_tokens = self.token_proj(self.codes)  # (K, D): once per step, cheaper than per candidate
        picked = code_tokens[idx]  # (..., m, D)
        tokens = (weights.unsqueeze(-1).to(picked.dtype) * picked).sum(-2)
        return tokens, weights, idx

    # --- the training forward ----------------------------------------------------------------------
    def forward(
        self, patches: torch.Tensor, replace_idx: torch.Tensor | None = None, random_candidates: bool = False
    ) -> dict[str, torch.Tensor]:
        """patches: (B, N, P) normalised pixels; replace_idx: (B, R) the patches that get candidate tokens;
        random_candidates: mix random codes with the believed weights (``mixture_tokens``).

        Returns belief_logits (B, N, K), target_code (B, N), assigned_prototype (B, N, P) = g(c_k*),
        prototype_target (B, N, P) (no grad: x~ or the EMA prototype), prototypes_detached (K, P) for the
        belief commitment term, batch perplexity, and when ``replace_idx`` is given: replace_tokens
        (B, R, D), candidate_weights / candidate_codes (B, R, m).
        """
        patches = patches.detach()
        learned = self.prototypes()
        align = self.alignment_prototypes(learned)
        target_code = squared_distances(patches, align).argmin(-1)  # (B, N)
        logits = self.belief_logits(patches)
        out = {
            "belief_logits": logits,
            "target_code": target_code,
            "assigned_prototype": learned[target_code],
            "prototype_target": patches if self.update == "grad" else align[target_code],
            "prototypes_detached": align,
            "code_perplexity": self.perplexity(target_code),
        }
        if replace_idx is not None:
            picked_logits = logits.gather(1, replace_idx.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
            tokens, weights, idx = self.mixture_tokens(picked_logits, random_candidates)
            out.update(replace_tokens=tokens, candidate_weights=weights, candidate_codes=idx)
        return out

    # --- health ----------------------------------------------------------------------------------
    def code_counts(self, target_code: torch.Tensor) -> torch.Tensor:
        """How many patches each code was assigned, (K,) float (static shape, unlike bincount)."""
        flat = target_code.reshape(-1)
        return torch.zeros(self.num_codes, device=flat.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.float)
        )

    def perplexity(self, target_code: torch.Tensor) -> torch.Tensor:
        """exp(entropy) of the code assignments in this batch: 1 = collapse, K = uniform use."""
        p = self.code_counts(target_code)
        p = p / p.sum().clamp_min(1.0)
        return torch.exp(-(p * p.clamp_min(1e-12).log()).sum())

    def usage_fraction(self, window: int | None = None) -> torch.Tensor:
        """Fraction of codes a patch was assigned to in the last ``window`` updates (default ``usage_window``).
        Re-seeding does not count as use: a collapsed codebook reads 1/K however often it re-seeds."""
        return (self.steps_since_hit < (window or self.usage_window)).float().mean()

    # --- state updates (call after the optimiser step, outside the compiled forward) -----------------
    @torch.no_grad()
    def update_state(self, patches: torch.Tensor, target_code: torch.Tensor, apply: torch.Tensor | None = None) -> None:
        """Usage counters, recent-patch buffer, EMA prototypes, and (every ``reseed_every`` calls) dead-code
        re-seeding. ``patches`` (B, N, P) normalised pixels, ``target_code`` (B, N) from :meth:`forward`.

        ``apply``: an optional device scalar (bool or 0/1) that gates the whole update without a host sync;
        where it is false (a skipped non-finite step) every buffer is left exactly as it was. The host-side
        call counter still advances, so re-seeding keeps its cadence in steps (a re-seeding that falls on a
        skipped step is skipped, the next comes ``reseed_every`` calls later)."""
        flat = patches.detach().reshape(-1, self.patch_dim).float()
        codes = target_code.reshape(-1)
        take = None if apply is None else apply.to(device=flat.device, dtype=torch.bool).reshape(())

        def gated(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
            return new if take is None else torch.where(take, new, old)

        counts = _all_reduce_sum_(self.code_counts(codes))
        self.steps_since_used.copy_(gated(torch.where(counts > 0, 0, self.steps_since_used + 1), self.steps_since_used))
        self.steps_since_hit.copy_(gated(torch.where(counts > 0, 0, self.steps_since_hit + 1), self.steps_since_hit))

        # ring buffer of recent patches: a fixed number of random rows per step from every rank, so every rank
        # holds the same buffer (a sharded checkpoint stores one rank's copy of a replicated buffer, any rank's)
        rows = torch.randint(flat.shape[0], (self.buffer_writes_per_step,), device=flat.device)
        picked = _all_gather_rows(flat[rows])[-self.recent_patches.shape[0] :]
        n = picked.shape[0]
        slots = (self.recent_count + torch.arange(n, device=flat.device)) % self.recent_patches.shape[0]
        self.recent_patches.index_copy_(0, slots, gated(picked, self.recent_patches[slots]))
        self.recent_count.copy_(gated(self.recent_count + n, self.recent_count))

        if self.update == "ema":
            sums = _all_reduce_sum_(torch.zeros_like(self.ema_sum).index_add_(0, codes, flat))
            decay = self.ema_decay
            self.ema_count.copy_(gated(self.ema_count.mul(decay).add_(counts, alpha=1 - decay), self.ema_count))
            self.ema_sum.copy_(gated(self.ema_sum.mul(decay).add_(sums, alpha=1 - decay), self.ema_sum))

        self._updates += 1
        if self.reseed_every > 0 and self._updates % self.reseed_every == 0:
            self.reseed_dead_codes(apply=take)

    @torch.no_grad()
    def reseed_dead_codes(self, apply: torch.Tensor | None = None) -> torch.Tensor:
        """Re-seed every code unused for ``dead_after`` updates from a random recent patch (none where the
        optional device flag ``apply`` is false).

        EMA mode puts the patch itself in the prototype table. In both modes the code vector becomes the
        (noised) code of the live code nearest to that patch, i.e. the busy cluster is split in two. Returns
        the number of re-seeded codes as a device tensor (no host sync).
        """
        device = self.codes.device
        k = self.num_codes
        filled = self.recent_count.clamp(max=self.recent_patches.shape[0])
        pick = (torch.rand(k, device=device) * filled).long().clamp(max=self.recent_patches.shape[0] - 1)
        samples = self.recent_patches[pick]  # (K, P)
        dead = (self.steps_since_used >= self.dead_after) & (filled > 0)
        if apply is not None:
            dead = dead & apply.to(device=device, dtype=torch.bool).reshape(())

        dist_to_live = squared_distances(samples, self.alignment_prototypes())
        dist_to_live = dist_to_live.masked_fill(dead.unsqueeze(0), float("inf"))
        source = dist_to_live.argmin(-1)
        scale = self.codes.std() * self.reseed_noise
        new_codes = self.codes[source] + scale * torch.randn_like(self.codes)
        if self.reseed_fit_steps > 0:
            new_codes = self.fit_codes_to(new_codes, samples, scale)

        self.codes.copy_(_broadcast_(torch.where(dead.unsqueeze(-1), new_codes, self.codes)))
        if self.update == "ema":
            mean_count = self.ema_count.mean()
            new_sum = samples * mean_count
            self.ema_sum.copy_(_broadcast_(torch.where(dead.unsqueeze(-1), new_sum, self.ema_sum)))
            self.ema_count.copy_(_broadcast_(torch.where(dead, mean_count, self.ema_count)))
        if self.reseed_belief:
            # the predictor's row of each re-seeded code becomes that of the live code it copies (same logit)
            fc2 = self.belief.fc2
            fc2.weight.copy_(_broadcast_(torch.where(dead.unsqueeze(-1), fc2.weight[source], fc2.weight)))
            fc2.bias.copy_(_broadcast_(torch.where(dead, fc2.bias[source], fc2.bias)))
        self.steps_since_used.masked_fill_(dead, 0)
        self.reseeded_total.add_(dead.sum())
        self._reseeded = dead if self._reseeded is None else self._reseeded | dead
        return dead.sum()

    def fit_codes_to(self, codes: torch.Tensor, patches: torch.Tensor, step_size: torch.Tensor) -> torch.Tensor:
        """``codes`` (K, C) moved by ``reseed_fit_steps`` sign-normalised gradient steps on ``||g(c) - patch||^2``
        (g frozen: only the codes move, no parameter gradient is touched), so a re-seeded code's prototype is the
        patch it was re-seeded from rather than a near-copy of its source's. Step size: ``step_size`` (the
        re-seed noise scale), shrinking linearly to a tenth."""
        c = codes.detach().float()
        target = patches.float()
        n = self.reseed_fit_steps
        with torch.enable_grad(), torch.autocast(device_type=c.device.type, enabled=False):
            for i in range(n):
                c.requires_grad_(True)
                err = (self.proto_head(c) - target).square().sum()
                (grad,) = torch.autograd.grad(err, c)
                c = (c - step_size * (1.0 - 0.9 * i / max(1, n - 1)) * grad.sign()).detach()
        return c.to(codes.dtype)

    def take_reseeded(self) -> dict[str, torch.Tensor]:
        """The rows of each parameter (names relative to this module) re-seeded since the last call, as (rows,)
        device masks, for the trainer to reset their optimiser moments (a re-seeded row must not move by the
        moments its previous code gathered); empty when nothing was re-seeded."""
        rows, self._reseeded = self._reseeded, None
        if rows is None:
            return {}
        out = {"codes": rows}
        if self.reseed_belief:
            out.update({"belief.fc2.weight": rows, "belief.fc2.bias": rows})
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints from before the honest usage monitor: start it from the re-seeding counter, count from 0
        if prefix + "steps_since_used" in state_dict and prefix + "steps_since_hit" not in state_dict:
            state_dict[prefix + "steps_since_hit"] = torch.as_tensor(state_dict[prefix + "steps_since_used"]).clone()
        if prefix + "steps_since_used" in state_dict and prefix + "reseeded_total" not in state_dict:
            state_dict[prefix + "reseeded_total"] = torch.zeros((), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- cost --------------------------------------------------------------------------------------
    def flops_per_image(self, num_patches: int, num_replaced: int, batch_size: int = 256) -> float:
        """Analytic FLOPs (2 per multiply-add) of this module in one training step, per image.

        Trained paths count 3x (forward + backward); the alignment distances have no backward (argmin);
        the per-batch work on the K codes (g(C), W C) is shared by ``batch_size`` images.
        """
        n, k, p, m = num_patches, self.num_codes, self.patch_dim, self.num_candidates
        belief = 2 * n * (p * self.belief_hidden + self.belief_hidden * k) * 3
        distances = 2 * n * k * p
        commitment = 2 * n * k * p * 2  # belief-expected prototype (forward + grad to the logits)
        mixture = 2 * num_replaced * m * self.token_dim * 3
        per_batch = 2 * k * (self.code_dim * self.proto_hidden + self.proto_hidden * p + self.code_dim * self.token_dim)
        return float(belief + distances + commitment + mixture + 3 * per_batch / batch_size)
