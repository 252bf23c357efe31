"""facexlib weight files: where they come from, finding them in ``--weights-dir``, loading them offline.

File names and URLs are facexlib's own (``facexlib/detection/__init__.py`` and
``facexlib/parsing/__init__.py``), so a folder filled by facexlib itself works too. Loading never goes
through facexlib's ``init_*_model`` helpers (they download when the file is absent): we build
facexlib's network classes and ``torch.load(weights_only=True)`` the local file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FETCH_HINT = "pacofr-prep weights fetch --dir {dir}"


@dataclass(frozen=True)
class WeightSpec:
    key: str  # what ``--detector`` / ``--parser`` name
    filename: str  # facexlib's file name
    url: str
    role: str  # "detector" | "parser"


_RELEASES = "https://github.com/xinntao/facexlib/releases/download"
WEIGHTS: dict[str, WeightSpec] = {
    spec.key: spec
    for spec in (
        WeightSpec(
            "retinaface_resnet50",
            "detection_Resnet50_Final.pth",
            f"{_RELEASES}/v0.1.0/detection_Resnet50_Final.pth",
            "detector",
        ),
        WeightSpec(
            "retinaface_mobile0.25",
            "detection_mobilenet0.25_Final.pth",
            f"{_RELEASES}/v0.1.0/detection_mobilenet0.25_Final.pth",
            "detector",
        ),
        WeightSpec("bisenet", "parsing_bisenet.pth", f"{_RELEASES}/v0.2.0/parsing_bisenet.pth", "parser"),
        WeightSpec("parsenet", "parsing_parsenet.pth", f"{_RELEASES}/v0.2.2/parsing_parsenet.pth", "parser"),
    )
}
# What ``weights fetch`` gets when no name is given: the default detector and both parsers.
DEFAULT_FETCH = ("retinaface_resnet50", "retinaface_mobile0.25", "bisenet", "parsenet")


class MissingWeightsError(FileNotFoundError):
    """A weight file is not in the weights folder. The message names the file and the fetch command."""


def weight_path(weights_dir: str | os.PathLike[str] | None, key: str) -> Path:
    """The local file for ``key`` in ``weights_dir``; raises :class:`MissingWeightsError` if absent."""
    if key not in WEIGHTS:
        raise ValueError(f"unknown model {key!r}; known: {', '.join(WEIGHTS)}")
    spec = WEIGHTS[key]
    if weights_dir is None:
        raise MissingWeightsError(
            f"model {key} needs its weight file {spec.filename}: pass --weights-dir DIR holding it "
            f"(get it where there is internet with `{FETCH_HINT.format(dir='DIR')}`)"
        )
    path = Path(weights_dir) / spec.filename
    if not path.is_file():
        raise MissingWeightsError(
            f"missing weight file {path} (model {key}). Fetch it where there is internet with "
            f"`{FETCH_HINT.format(dir=weights_dir)}` and copy the folder here, or download {spec.url}"
        )
    return path


def load_state_dict(path: str | os.PathLike[str]) -> dict:
    """A checkpoint's tensors, loaded safely (``weights_only=True``), with DataParallel's ``module.`` stripped."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file; name the file
        raise ValueError(f"weight file {path} cannot be loaded ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"weight file {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_network(key: str):
    """facexlib's real network for ``key``, randomly initialised, on CPU, in eval mode."""
    if key.startswith("retinaface_"):
        import warnings

        from facexlib.detection.retinaface import RetinaFace

        with warnings.catch_warnings():  # facexlib passes torchvision's deprecated ``pretrained=False``
            warnings.simplefilter("ignore", UserWarning)
            return RetinaFace(network_name=key.removeprefix("retinaface_"), half=False, device="cpu").eval()
    if key == "bisenet":
        from facexlib.parsing.bisenet import BiSeNet

        return BiSeNet(num_class=19).eval()
    if key == "parsenet":
        from facexlib.parsing.parsenet import ParseNet

        return ParseNet(in_size=512, out_size=512, parsing_ch=19).eval()
    raise ValueError(f"unknown model {key!r}; known: {', '.join(WEIGHTS)}")


def load_network(key: str, weights_dir: str | os.PathLike[str] | None, device: str = "cpu"):
    """facexlib's network for ``key`` with the weights from ``weights_dir`` (strict), on ``device``."""
    path = weight_path(weights_dir, key)
    net = build_network(key)
    try:
        net.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as err:
        raise ValueError(f"weight file {path} does not fit facexlib's {key} network: {err}") from err
    if hasattr(net, "device"):  # RetinaFace keeps its own device for its mean tensor and priors
        import torch

        net.device = torch.device(device)
        net.mean_tensor = net.mean_tensor.to(device)
    return net.to(device).eval()


def fetch(weights_dir: str | os.PathLike[str], keys: tuple[str, ...] = DEFAULT_FETCH) -> list[Path]:
    """Download the weight files into ``weights_dir`` (skipping those present). Needs internet."""
    from torch.hub import download_url_to_file

    out = Path(weights_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for key in keys:
        spec = WEIGHTS[key]
        target = out / spec.filename
        if not target.is_file():
            try:
                download_url_to_file(spec.url, str(target), progress=True)
            except OSError as err:  # URLError is an OSError: say what failed, not a trace
                raise OSError(f"could not download {spec.url} -> {target}: {err}") from err
        done.append(target)
    return done


def check(weights_dir: str | os.PathLike[str], keys: tuple[str, ...] = DEFAULT_FETCH) -> dict[str, str]:
    """Per model: ``"ok"`` or why not (missing file, not loadable, wrong architecture)."""
    status = {}
    for key in keys:
        try:
            load_network(key, weights_dir)
            status[key] = "ok"
        except (MissingWeightsError, ValueError) as err:
            status[key] = str(err)
    return status
