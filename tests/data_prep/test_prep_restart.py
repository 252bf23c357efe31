"""Chunks: deterministic split, restart after a kill gives the same bytes, merge refuses an incomplete set,
and a crash inside one image is reported without stopping the chunk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep import chunks
from data_prep.merge import IncompleteRunError, merge
from data_prep.run import PrepConfig, run_chunk

LFW_FACES = ("real/lfw_000.png", "real/lfw_020.png", "real/lfw_040.png")  # small: quick to detect
FACES = ("real/astronaut.png", *LFW_FACES)


def _list_file(tmp_path: Path, raw_folder: Path, names) -> Path:
    path = tmp_path / "inputs.txt"
    path.write_text("# test input list\n" + "".join(f"{raw_folder / n}\n" for n in reversed(names)) + "\n")
    return path


def _cfg(input_path, out, **kw) -> PrepConfig:
    base = dict(backend="offline", max_per_shard=1, batch_size=2, progress=False, val_fraction=0.0, decode_workers=1)
    base.update(kw)
    return PrepConfig(input=str(input_path), out=str(out), **base)


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_chunks_cover_the_sorted_input_exactly_once(raw_folder):
    root, sources = chunks.list_inputs(raw_folder)
    assert sources == sorted(sources) and "real/astronaut.png" in sources
    for n in (1, 3, 7, len(sources) + 2):
        parts = [sources[slice(*chunks.chunk_bounds(len(sources), n, i))] for i in range(n)]
        assert [s for p in parts for s in p] == sources
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="outside"):
        chunks.chunk_bounds(10, 3, 3)


def test_an_output_folder_inside_the_input_is_not_listed(tmp_path):
    (tmp_path / "photos/faces/_chunks").mkdir(parents=True)
    (tmp_path / "photos/a.jpg").write_bytes(b"x")
    (tmp_path / "photos/faces/train-c00000-000000.tar").write_bytes(b"x")
    (tmp_path / "photos/.hidden.jpg").write_bytes(b"x")
    assert chunks.list_inputs(tmp_path / "photos", exclude=tmp_path / "photos/faces")[1] == ["a.jpg"]
    assert "faces/train-c00000-000000.tar" in chunks.list_inputs(tmp_path / "photos")[1]


class SimulatedKill(BaseException):
    """Not an Exception: nothing in the chunk may catch it, like SIGKILL."""


def test_chunk_killed_after_first_shard_reruns_to_identical_shards(raw_folder, tmp_path, monkeypatch):
    inputs = _list_file(tmp_path, raw_folder, LFW_FACES)
    clean = tmp_path / "clean"
    report = run_chunk(_cfg(inputs, clean))
    assert report["faces_written"] == 3 and len(_shard_bytes(clean)) == 3

    killed = tmp_path / "killed"
    from data_prep import run as run_module

    real_sink = run_module.ShardSink

    class DyingSink(real_sink):
        writes = 0

        def write(self, *args, **kwargs):
            if DyingSink.writes == 2:  # the first shard is finished and renamed, the second is open
                raise SimulatedKill
            DyingSink.writes += 1
            super().write(*args, **kwargs)

    monkeypatch.setattr(run_module, "ShardSink", DyingSink)
    with pytest.raises(SimulatedKill):
        run_chunk(_cfg(inputs, killed))
    assert not chunks.done_path(killed, 0).exists()
    assert sorted(_shard_bytes(killed)) == ["train-c00000-000000.tar", "train-c00000-000001.tar"]
    with pytest.raises(IncompleteRunError, match="chunk index: 0"):
        merge(killed)

    monkeypatch.setattr(run_module, "ShardSink", real_sink)
    rerun = run_chunk(_cfg(inputs, killed))
    assert rerun["skipped"] is False
    assert _shard_bytes(killed) == _shard_bytes(clean)
    assert not list(killed.glob(".*.tmp"))


@pytest.mark.slow
def test_chunk_sigkilled_in_a_subprocess_reruns_to_identical_shards(raw_folder, tmp_path):
    """The real thing: SIGKILL the process once its first shard is renamed into place."""
    inputs = _list_file(tmp_path, raw_folder, FACES)
    code = (
        "import sys; from data_prep.run import PrepConfig, run_chunk; "
        "run_chunk(PrepConfig(input=sys.argv[1], out=sys.argv[2], backend='offline', max_per_shard=1, "
        "batch_size=1, progress=False, val_fraction=0.0, decode_workers=1))"
    )
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code, str(inputs), str(killed)], env=env)
    deadline = time.monotonic() + 120
    while not list(killed.glob("train-*.tar")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not chunks.done_path(killed, 0).exists()
    first = _shard_bytes(killed)
    assert 1 <= len(first) < 4

    cfg = dict(max_per_shard=1, batch_size=1)
    run_chunk(_cfg(inputs, killed, **cfg))
    clean = tmp_path / "clean"
    run_chunk(_cfg(inputs, clean, **cfg))
    assert _shard_bytes(killed) == _shard_bytes(clean)
    assert all(_shard_bytes(killed)[name] == data for name, data in first.items())


def test_merge_refuses_an_incomplete_chunk_set_then_accepts_it(raw_folder, tmp_path, prep_cli, capsys):
    names = ("real/lfw_000.png", "bad/empty.jpg", "bad/notes.txt", "bad/tiny.png", "real/lfw_020.png")
    inputs = _list_file(tmp_path, raw_folder, names)
    out = tmp_path / "out"
    for index in (0, 2):
        run_chunk(_cfg(inputs, out, num_chunks=3, chunk_index=index))
    with pytest.raises(IncompleteRunError, match=r"1 of 3 chunks are not done .*chunk index: 1\)"):
        merge(out)
    assert prep_cli(["merge", "--out", str(out)]) == 2
    assert "--chunk-index" in capsys.readouterr().err
    assert not (out / "_info.json").exists()

    argv = ["run", "--input", str(inputs), "--out", str(out), "--backend", "offline", "--num-chunks", "3"]
    argv += ["--chunk-index", "1", "--max-per-shard", "1", "--batch-size", "2", "--val-fraction", "0"]
    argv += ["--no-progress", "--decode-workers", "1"]
    assert prep_cli(argv) == 0
    _, summary = merge(out)
    assert summary["inputs"] == 5
    assert summary["images"] == {"empty_file": 1, "not_an_image": 1, "too_small": 1, "ok": 2}
    from pacofr.data.format import read_manifest

    assert read_manifest(out, count_samples=True).splits["train"].num_samples == summary["faces_written"]


def test_merge_with_no_chunks_says_what_to_do(tmp_path):
    with pytest.raises(IncompleteRunError, match="pacofr-prep run"):
        merge(tmp_path)


def test_a_crash_inside_one_image_is_reported_and_the_chunk_goes_on(raw_folder, tmp_path, monkeypatch):
    from data_prep import run as run_module

    real_build = run_module.build_models

    def build_with_a_flaky_detector(cfg):
        detector, parser = real_build(cfg)
        real_detect = detector.detect

        def detect(images):
            if any(im.shape[:2] == (512, 512) for im in images):  # the astronaut
                raise RuntimeError("detector exploded")
            return real_detect(images)

        detector.detect = detect
        return detector, parser

    monkeypatch.setattr(run_module, "build_models", build_with_a_flaky_detector)
    inputs = _list_file(tmp_path, raw_folder, FACES)
    report = run_chunk(_cfg(inputs, tmp_path / "out", batch_size=4))
    assert report["images"] == {"error": 1, "ok": 3}
    (error,) = report["errors"]
    assert error["source"].endswith("real/astronaut.png") and "detector exploded" in error["detail"]
    assert report["faces_written"] == 3
    saved = json.loads(chunks.report_path(tmp_path / "out", 0).read_text())
    assert saved["errors"] == report["errors"]


def test_a_parser_crash_on_one_face_fails_only_that_image(raw_folder, tmp_path, monkeypatch):
    from data_prep import run as run_module

    real_build = run_module.build_models
    calls = {"n": 0}

    def build_with_a_flaky_parser(cfg):
        detector, parser = real_build(cfg)
        real_parse = parser.parse

        def parse(crops, landmarks):
            calls["n"] += 1
            # Fails on the batch (call 1) and on the second face when retried alone (call 3).
            if len(crops) > 1 or calls["n"] == 3:
                raise ValueError("parser exploded")
            return real_parse(crops, landmarks)

        parser.parse = parse
        return detector, parser

    monkeypatch.setattr(run_module, "build_models", build_with_a_flaky_parser)
    inputs = _list_file(tmp_path, raw_folder, LFW_FACES)
    report = run_chunk(_cfg(inputs, tmp_path / "out", batch_size=3))
    assert sum(report["images"].values()) == 3
    assert report["images"] == {"error": 1, "ok": 2} and report["faces_written"] == 2
    (error,) = report["errors"]
    assert error["source"].endswith("real/lfw_020.png") and "parse: ValueError: parser exploded" in error["detail"]
    assert calls["n"] == 1 + 3  # the batch failed, then each face alone
