"""facexlib's face parsers on aligned crops, batched: BiSeNet (default) and ParseNet, both at 512 input.

BiSeNet emits the contract's CelebAMask-HQ ids directly. ParseNet (from PSFRGAN/GPEN) uses another
order of the same 19 classes (see ``PARSENET_LABELS``), mapped here to the contract's ids.
Preprocessing follows facexlib: RGB in [0, 1], resized to 512 bilinear, normalised with ImageNet
statistics for BiSeNet (facexlib's inference_parsing.py) and with 0.5/0.5 for ParseNet
(facexlib's FaceRestoreHelper). The 512 map is resized back to the crop with nearest neighbour.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from data_prep.weights import WEIGHTS, load_network
from pacofr.data.format import LABEL_IDS, LABEL_NAMES

# ParseNet's output channel order (GPEN's face_parse comment / PSFRGAN's CelebAMask-HQ ordering).
PARSENET_LABELS: tuple[str, ...] = (
    "background",
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
)
# lut[parsenet id] -> contract id
PARSENET_TO_CONTRACT = np.array([LABEL_IDS[name] for name in PARSENET_LABELS], np.uint8)

_NORMALISATION = {
    "bisenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "parsenet": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class FacexlibParser:
    """``input_size`` is 512 (what the released weights were trained at); tests pass less for speed."""

    def __init__(
        self,
        weights_dir: str | os.PathLike[str] | None,
        model: str = "bisenet",
        device: str = "cpu",
        input_size: int = 512,
    ):
        if model not in _NORMALISATION:
            raise ValueError(f"unknown facexlib parser {model!r}; choose bisenet or parsenet")
        self.net = load_network(model, weights_dir, device)
        self.model, self.name, self.device, self.input_size = model, model, torch.device(device), input_size
        mean, std = _NORMALISATION[model]
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def describe(self) -> dict:
        return {
            "name": self.model,
            "weights": WEIGHTS[self.model].filename,
            "input_size": self.input_size,
            "label_map": "identity" if self.model == "bisenet" else "parsenet->celebamask19",
            "labels": list(LABEL_NAMES),
        }

    @torch.inference_mode()
    def parse(self, crops: list[np.ndarray], landmarks: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """RGB uint8 S x S crops -> uint8 label maps (S x S) in the contract's ids."""
        if not crops:
            return []
        size = crops[0].shape[0]
        x = torch.from_numpy(np.stack(crops)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        logits = self.net((x - self._mean) / self._std)[0]
        labels = logits.argmax(dim=1, keepdim=True).float()
        labels = F.interpolate(labels, size=(size, size), mode="nearest").squeeze(1).to(torch.uint8).cpu().numpy()
        if self.model == "parsenet":
            labels = PARSENET_TO_CONTRACT[labels]
        return list(labels)
