"""A restricted unpickler for the insightface verification ``.bin`` files.

Those files are pickles of ``(list of JPEG bytes, list of bools)``, written by Python 2 (so the JPEGs
are py2 ``str``: read with ``encoding="bytes"``) or by Python 3 (protocol 2 stores ``bytes`` through
the global ``_codecs.encode``). Some re-packed copies hold numpy bool / uint8 arrays. A pickle can
call any importable function while loading, so a downloaded ``.bin`` is untrusted input: this loader
resolves only the few globals those files need, each behind a guard that accepts only the
harmless arguments, and refuses every other global with :class:`UnsafePickleError` before anything
runs.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

# Only plain data: bools and raw bytes (numpy arrays of other dtypes never occur in these files).
_ALLOWED_DTYPES = {np.dtype(np.bool_), np.dtype(np.uint8)}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something a verification ``.bin`` never contains."""


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    # Python 3, protocol <= 2: bytes b are pickled as _codecs.encode(b.decode("latin1"), "latin1").
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickleError(f"_codecs.encode called with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


def _safe_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype not in _ALLOWED_DTYPES:
        raise UnsafePickleError(f"numpy dtype {spec!r} is not allowed (only bool and uint8)")
    return dtype


def _safe_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"numpy array subtype {subtype!r} is not allowed")
    # The dtype and data arrive later through ndarray.__setstate__, with a dtype from _safe_dtype.
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype not in _ALLOWED_DTYPES or not isinstance(data, bytes):
        raise UnsafePickleError(f"numpy scalar of {dtype!r} is not allowed")
    return np.frombuffer(data, dtype=dtype)[0]


_RECONSTRUCT_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    **{(m, "_reconstruct"): _safe_reconstruct for m in _RECONSTRUCT_MODULES},
    **{(m, "scalar"): _safe_scalar for m in _RECONSTRUCT_MODULES},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the guarded globals above; everything else raises."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load global {module}.{name} from an untrusted pickle") from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only bytes, str, numbers, bools, lists, tuples, dicts and bool/uint8 arrays.

    Python 2 strings come back as ``bytes`` (``encoding="bytes"``), which is what the JPEG payloads are.
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def load_verification_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], list[bool]]:
    """Read an insightface ``.bin``: ``(encoded images, issame per pair)``, validated.

    Raises :class:`UnsafePickleError` for a pickle that needs any other global and ``ValueError``
    when the content is not ``2 * n`` images for ``n`` pair labels.
    """
    with open(path, "rb") as fh:
        obj = restricted_loads(fh.read())
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise ValueError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    images = [_as_bytes(b, path, i) for i, b in enumerate(bins)]
    labels = [bool(x) for x in np.asarray(issame, dtype=bool).reshape(-1)]
    if len(images) != 2 * len(labels):
        raise ValueError(f"{path}: {len(images)} images for {len(labels)} pairs (expected twice as many images)")
    return images, labels


def _as_bytes(item: Any, path: Any, index: int) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise ValueError(f"{path}: image {index} is a {type(item).__name__}, expected encoded bytes")
