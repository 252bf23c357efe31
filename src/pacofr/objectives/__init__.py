"""Pretraining objectives: one method per file, each a Lightning-free ``nn.Module`` holding its model parts and
its loss (``docs/architecture.md``: how to add one). Configs choose one by ``model.objective.class_path``."""

from pacofr.objectives.base import PretrainObjective, StepOutput
from pacofr.objectives.fsfm import FSFM
from pacofr.objectives.mae import MAE
from pacofr.objectives.mae_full import MAEFull
from pacofr.objectives.mae_parse import MAEParse
from pacofr.objectives.paco_fr import PaCoFR
from pacofr.objectives.paco_fr_full import PaCoFRFull

__all__ = ["FSFM", "MAE", "MAEFull", "MAEParse", "PaCoFR", "PaCoFRFull", "PretrainObjective", "StepOutput"]
