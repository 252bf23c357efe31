"""One float32 numeric policy for every entry that trains or times a step (``pacofr fit``, ``bench/train_step.py``).

The policy is the top-level config key ``float32_matmul_precision`` (``highest`` | ``high`` | ``medium``), applied
by :func:`apply_numerics` before the model is built. It decides what float32 matrix work may round its inputs to:

* ``highest``: IEEE float32 everywhere: cuBLAS and cuDNN (convolutions too) use no TF32. The default.
* ``high``: TF32 for float32 matmuls and cuDNN convolutions (10-bit mantissa inputs, float32 accumulation).
* ``medium``: as ``high`` on CUDA, and lets oneDNN compute float32 matmuls in bf16 on CPUs that have it.

Why ``highest`` is the default. Under ``bf16-mixed`` the heavy work (linear layers, attention, the patch
embedding's convolution) runs in bf16 whatever this says: autocast casts it. What stays float32 is what the code
takes out of autocast on purpose, above all PaCo-FR's code distances (``pacofr.models`` ``squared_distances``:
``|x|^2 - 2 x.g + |g|^2`` over 768-wide pixel patches and K codes, in float32 because the argmin / top-m choice of
codes flips under bf16 rounding). TF32 rounds the inputs of that ``x @ g.t()`` to 10 mantissa bits (relative error
~5e-4, close to bf16's 8 bits), which would silently undo that choice: code assignments would differ from the CPU
and between GPU kinds. The float32 leftovers are a small share of a bf16 step (ViT-B/16 PaCo-FR at 224 px: the
distance matmul is 0.31 of 60.7 GFLOP per image, 0.5 %; at float32's rate without tensor cores that is an
estimated 2-4 % of an H100 step, which ``bench/gpu_check.sh``'s ``numerics`` step measures with the share of code
choices TF32 flips), and with ``highest`` the same numbers come out on a CPU and a GPU (the tests and the CPU
emulation of GPU runs stay meaningful). ``high`` is for ``32-true`` runs on
GPUs, where every matmul is float32 and TF32 is worth its rounding.

cuDNN is set with the matmul precision (``allow_tf32`` on for ``high``/``medium``, off for ``highest``): torch's own
default leaves cuDNN's TF32 *on* while matmuls are ``highest``, so a float32 convolution would be TF32 while the
policy says IEEE. The legacy flags are used (not the ``fp32_precision`` attributes of torch >= 2.9) because they
exist in every supported torch, and torch refuses to report a mix of the two APIs.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

MatmulPrecision = Literal["highest", "high", "medium"]
PRECISIONS: tuple[str, ...] = get_args(MatmulPrecision)
DEFAULT_MATMUL_PRECISION: MatmulPrecision = "highest"
CONFIG_KEY = "float32_matmul_precision"  # the top-level key of the pretrain configs (and `pacofr fit`'s flag)


def apply_numerics(matmul_precision: str | None = None) -> dict[str, object]:
    """Apply the float32 policy to this process (matmuls and cuDNN); returns :func:`numerics_state` after it.

    ``None`` means the default (``highest``). Process-wide, as torch's flags are: call it once, before the model
    is built and before anything is compiled (inductor reads the precision when it compiles)."""
    precision = DEFAULT_MATMUL_PRECISION if matmul_precision is None else str(matmul_precision)
    if precision not in PRECISIONS:
        raise ValueError(f"{CONFIG_KEY} must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = precision != "highest"
    return numerics_state()


def numerics_state() -> dict[str, object]:
    """The float32 flags in force (for logs and benchmark records)."""
    state: dict[str, object] = {CONFIG_KEY: torch.get_float32_matmul_precision()}
    try:
        state["cuda_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        state["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError as exc:  # code elsewhere set the new and the legacy API differently: say so, do not fail
        state["cudnn_allow_tf32"] = f"unreadable: {exc}".split(".")[0]
    return state


def config_precision(config: dict | None) -> str:
    """The policy a pretrain config asks for (its top-level key; the default when absent)."""
    value = (config or {}).get(CONFIG_KEY)
    return DEFAULT_MATMUL_PRECISION if value is None else str(value)
