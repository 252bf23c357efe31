"""The restricted unpickler reads real-shaped verification .bin files and refuses anything else."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from pacofr.eval.unpickle import UnsafePickleError, load_verification_bin, restricted_loads

JPEGS = [b"\xff\xd8jpeg-a\xff\xd9", b"\xff\xd8jpeg-b\xff\xd9", b"\xff\xd8c\xff\xd9", b"\xff\xd8d\xff\xd9"]


@pytest.mark.parametrize("protocol", [2, 4])
def test_reads_python3_pickles(tmp_path, protocol):
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((JPEGS, [True, False]), protocol=protocol))
    images, issame = load_verification_bin(path)
    assert images == JPEGS and issame == [True, False]


def test_reads_python2_pickle_of_str_payloads(tmp_path):
    # What Python 2's pickle.dump((["ab", "cd"], [True]), f, protocol=2) writes: SHORT_BINSTRING payloads.
    py2 = b"\x80\x02]q\x00(U\x02abq\x01U\x02cdq\x02e]q\x03\x88a\x86q\x04."
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(py2)
    assert load_verification_bin(path) == ([b"ab", b"cd"], [True])


def test_reads_numpy_bool_labels_and_uint8_payloads(tmp_path):
    payloads = [np.frombuffer(j, dtype=np.uint8) for j in JPEGS]
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(pickle.dumps((payloads, np.array([False, True])), protocol=2))
    images, issame = load_verification_bin(path)
    assert images == JPEGS and issame == [False, True]


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(([_RunsShell(marker)], [True]), protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        restricted_loads(blob)
    assert not marker.exists()
    path = tmp_path / "evil.bin"
    path.write_bytes(blob)
    with pytest.raises(UnsafePickleError):
        load_verification_bin(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj",
    [
        np.array([1.5, 2.5]),  # float dtype: not in a verification file
        np.array([{"a": 1}], dtype=object),  # object arrays would unpickle arbitrary members
        {1, 2},  # builtins.set via a global in protocol 2
    ],
)
def test_refuses_other_globals_and_dtypes(obj):
    with pytest.raises(UnsafePickleError):
        restricted_loads(pickle.dumps(obj, protocol=2))


def test_refuses_builtins_eval_handwritten():
    blob = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_loads(blob)


def test_rejects_wrong_structure(tmp_path):
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps((JPEGS[:3], [True, False]), protocol=2))
    with pytest.raises(ValueError, match="3 images for 2 pairs"):
        load_verification_bin(path)
