"""MAE's weight initialisation (xavier-uniform linears, unit LayerNorms), which MAE pretraining relies on."""

from __future__ import annotations

from torch import nn


def mae_init_(module: nn.Module) -> None:
    """Initialise every Linear / LayerNorm below ``module`` as MAE does (apply via ``module.apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def mae_init_patch_embed_(proj: nn.Conv2d) -> None:
    """The patch projection is initialised like a Linear on the flattened patch (MAE)."""
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    if proj.bias is not None:
        nn.init.zeros_(proj.bias)
