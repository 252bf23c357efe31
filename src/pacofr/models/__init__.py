"""Model parts the objectives compose: timm ViT encoder with a masked forward, MAE decoder, candidate codebook,
spatial head; named sizes; patch helpers."""

from pacofr.models.codebook import CandidateCodebook
from pacofr.models.decoder import MAEDecoder
from pacofr.models.encoder import PaCoFREncoder
from pacofr.models.patches import normalize_patches, num_masked_patches, patchify, unpatchify
from pacofr.models.sizes import DECODER_DEFAULTS, ENCODER_SIZES, build_encoder, timm_name
from pacofr.models.spatial_head import SpatialHead

__all__ = [
    "DECODER_DEFAULTS",
    "ENCODER_SIZES",
    "CandidateCodebook",
    "MAEDecoder",
    "PaCoFREncoder",
    "SpatialHead",
    "build_encoder",
    "normalize_patches",
    "num_masked_patches",
    "patchify",
    "timm_name",
    "unpatchify",
]
