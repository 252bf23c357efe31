"""Face detectors: facexlib's RetinaFace (weights from a local folder) and an offline cascade."""

from data_prep.detect.base import Detector, Face, select_faces

__all__ = ["Detector", "Face", "select_faces"]
