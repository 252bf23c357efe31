"""Pretraining objectives: one method per file, each a Lightning-free ``nn.Module`` holding its model parts and
its loss (``docs/architecture.md``: how to add one). ``interface.py`` is what every method declares and the
training layers ask; ``masked_autoencoder.py`` the core the methods here build on. Configs choose one by
``model.objective.class_path``."""

from pacofr.objectives.fsfm import FSFM
from pacofr.objectives.interface import ParamGroup, PretrainObjective, StepOutput
from pacofr.objectives.mae import MAE
from pacofr.objectives.mae_full import MAEFull
from pacofr.objectives.mae_parse import MAEParse
from pacofr.objectives.masked_autoencoder import MaskedAutoencoder
from pacofr.objectives.paco_fr import PaCoFR
from pacofr.objectives.paco_fr_full import PaCoFRFull

__all__ = [
    "FSFM",
    "MAE",
    "MAEFull",
    "MAEParse",
    "MaskedAutoencoder",
    "PaCoFR",
    "PaCoFRFull",
    "ParamGroup",
    "PretrainObjective",
    "StepOutput",
]
