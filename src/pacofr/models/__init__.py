"""PaCo-FR model parts: timm ViT encoder with a masked forward, MAE decoder, candidate codebook."""

from pacofr.models.codebook import CandidateCodebook
from pacofr.models.decoder import MAEDecoder
from pacofr.models.encoder import PaCoFREncoder
from pacofr.models.paco_fr import PaCoFRModel, visible_indices
from pacofr.models.patches import normalize_patches, num_masked_patches, patchify, unpatchify
from pacofr.models.sizes import DECODER_DEFAULTS, ENCODER_SIZES, build_encoder, timm_name

__all__ = [
    "DECODER_DEFAULTS",
    "ENCODER_SIZES",
    "CandidateCodebook",
    "MAEDecoder",
    "PaCoFREncoder",
    "PaCoFRModel",
    "build_encoder",
    "normalize_patches",
    "num_masked_patches",
    "patchify",
    "timm_name",
    "unpatchify",
    "visible_indices",
]
