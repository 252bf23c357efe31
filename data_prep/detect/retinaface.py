"""facexlib's RetinaFace (ResNet-50 or MobileNet-0.25), batched over images of mixed sizes.

facexlib's own ``batched_detect_faces`` needs equal-size frames; here each image is scaled so its long
side is at most ``max_side``, padded (bottom/right) to a common size that is a multiple of 32, and
the batch goes through the network at once. Boxes and landmarks are decoded with facexlib's helpers
and mapped back to original pixels. RetinaFace's landmark order (left eye in the image first, ...)
is the contract's LANDMARK5 order.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from data_prep.detect.base import Face
from data_prep.weights import WEIGHTS, load_network


class RetinaFaceDetector:
    def __init__(
        self,
        weights_dir: str | os.PathLike[str] | None,
        model: str = "retinaface_resnet50",
        device: str = "cpu",
        max_side: int = 960,
        candidate_threshold: float = 0.5,
        nms_threshold: float = 0.4,
    ):
        if not model.startswith("retinaface_"):
            raise ValueError(f"not a RetinaFace model: {model!r}")
        self.net = load_network(model, weights_dir, device)
        self.model, self.device, self.max_side = model, torch.device(device), max_side
        self.candidate_threshold, self.nms_threshold = candidate_threshold, nms_threshold
        self.name = model
        self._priors: dict[tuple[int, int], torch.Tensor] = {}  # facexlib's PriorBox loops in Python: cache

    def priors(self, height: int, width: int) -> torch.Tensor:
        from facexlib.detection.retinaface_utils import PriorBox

        if (height, width) not in self._priors:
            boxes = PriorBox(self.net.cfg, image_size=(height, width)).forward()
            self._priors[(height, width)] = boxes.to(self.device).unsqueeze(0)
        return self._priors[(height, width)]

    def describe(self) -> dict:
        return {
            "name": self.model,
            "weights": WEIGHTS[self.model].filename,
            "max_side": self.max_side,
            "nms_threshold": self.nms_threshold,
        }

    @torch.inference_mode()
    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        from facexlib.detection.retinaface_utils import batched_decode, batched_decode_landm, py_cpu_nms

        if not images:
            return []
        scales, resized = [], []
        for rgb in images:
            h, w = rgb.shape[:2]
            s = min(1.0, self.max_side / max(h, w))
            im = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else rgb
            scales.append(s)
            resized.append(im)
        H = max(-(-im.shape[0] // 32) * 32 for im in resized)
        W = max(-(-im.shape[1] // 32) * 32 for im in resized)
        # Built as uint8 and normalised on the device: 4x less host memory and transfer than float.
        mean_bgr = (104, 117, 123)
        batch = np.empty((len(resized), H, W, 3), np.uint8)
        batch[:] = mean_bgr  # padding is the mean colour, i.e. zero after normalisation
        for i, im in enumerate(resized):
            batch[i, : im.shape[0], : im.shape[1]] = im[:, :, ::-1]  # RGB -> BGR as RetinaFace was trained
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        x = x - torch.tensor(mean_bgr, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        loc, conf, landms = self.net(x)
        priors = self.priors(H, W)
        variance = self.net.cfg["variance"]
        boxes = batched_decode(loc, priors, variance) * torch.tensor([W, H, W, H], device=self.device)
        points = batched_decode_landm(landms, priors, variance) * torch.tensor([W, H] * 5, device=self.device)
        scores = conf[:, :, 1]
        out = []
        for i, s in enumerate(scales):
            keep = scores[i] > self.candidate_threshold
            b = boxes[i][keep].float().cpu().numpy()
            p = points[i][keep].float().cpu().numpy()
            sc = scores[i][keep].float().cpu().numpy()
            order = np.argsort(-sc, kind="stable")
            b, p, sc = b[order], p[order], sc[order]
            dets = np.hstack([b, sc[:, None]]).astype(np.float32)
            kept = py_cpu_nms(dets, self.nms_threshold) if len(dets) else []
            out.append([Face(box=b[k] / s, score=float(sc[k]), landmarks5=p[k].reshape(5, 2) / s) for k in kept])
        return out
