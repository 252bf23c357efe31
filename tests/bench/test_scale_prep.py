"""Prep at scale, scaled down to the same shape (bench/scale_prep.py): a 40-chunk array of simulated chunk reports and
empty shards merges into a manifest that lists every shard in chunk order; with chunks or shards gone, the merge
names exactly the chunks to redo and how."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from data_prep import chunks
from data_prep.merge import IncompleteRunError, index_ranges, merge
from pacofr.data.format import read_manifest, shard_name

REPO = Path(__file__).resolve().parents[2]
CHUNKS = 40


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_scale_prep", REPO / "bench" / "scale_prep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scale_prep = _load_bench()


@pytest.fixture
def array(tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "faces"
    expected = scale_prep.write_array(out, CHUNKS, shards_per_chunk=2, samples_per_shard=50, failures_per_chunk=3)
    return out, expected


def _dict_keys(function: ast.FunctionDef, target: str) -> set[str]:
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [target]:
            assert isinstance(node.value, ast.Dict)
            return {k.value for k in node.value.keys}
    raise AssertionError(f"no `{target} = {{...}}` in {function.name}")


def test_simulated_chunk_files_have_the_keys_run_chunk_writes(array):
    tree = ast.parse((REPO / "data_prep" / "run.py").read_text())
    run_chunk = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run_chunk")
    out, _ = array
    report = json.loads(chunks.report_path(out, 7).read_text())
    assert set(report) == _dict_keys(run_chunk, "report")
    assert set(json.loads(chunks.started_path(out, 7).read_text())) == _dict_keys(run_chunk, "started")
    assert set(json.loads(chunks.done_path(out, 7).read_text())) == {"fingerprint", "settings"}
    assert report["chunk_index"] == 7 and report["num_chunks"] == CHUNKS and report["errors"]


def test_the_full_array_merges_every_shard_in_chunk_order(array):
    out, expected = array
    _, summary = merge(out)
    manifest = read_manifest(out)
    train, val = manifest.split("train"), manifest.split("val")
    assert train.filenames == [shard_name("train", k, chunks.chunk_prefix(i)) for i in range(CHUNKS) for k in (0, 1)]
    assert val.filenames == [shard_name("val", 0, chunks.chunk_prefix(i)) for i in range(CHUNKS)]
    reports = [json.loads(chunks.report_path(out, i).read_text()) for i in range(CHUNKS)]
    for split, info in (("train", train), ("val", val)):
        assert list(zip(info.filenames, info.shard_lengths)) == expected[split]
        assert info.num_samples == sum(n for r in reports for _, n in r["shards"][split])
    assert train.num_samples == CHUNKS * 100 - sum(i % 50 for i in range(CHUNKS))  # last shard of chunk i: 50 - i
    assert manifest.prep["num_chunks"] == CHUNKS
    assert summary["chunks"] == CHUNKS and summary["faces_written"] == train.num_samples + val.num_samples
    assert len(summary["errors"]) == CHUNKS * 3 + 2  # chunk 0 also has two detector crashes
    assert summary["images"]["error"] == 2


def test_three_missing_chunks_are_named_exactly(array):
    out, _ = array
    gone = scale_prep.spread_indices(CHUNKS, 3)
    assert gone == [17, 28, 39]
    for k, i in enumerate(gone):
        chunks.report_path(out, i).unlink()
        chunks.done_path(out, i).unlink()
        if k:  # the first never started; the others were killed after their started file
            chunks.started_path(out, i).unlink()
    with pytest.raises(IncompleteRunError) as err:
        merge(out)
    message = str(err.value)
    assert f"3 of {CHUNKS} chunks are not done in {out} (chunk index: 17, 28, 39). " in message
    assert f"`pacofr-prep run ... --num-chunks {CHUNKS} --chunk-index I`" in message
    assert scale_prep._indices_named(message) == gone


def test_a_block_of_missing_chunks_is_listed_whole():
    """No '...': every index is named, runs of three or more as a range."""
    assert index_ranges([0, 1, 2, 3, 17, 18, 40, *range(500, 1000)]) == "0-3, 17, 18, 40, 500-999"
    assert index_ranges([5]) == "5" and index_ranges([]) == ""


def test_missing_shards_name_their_chunks_and_the_force_rerun(array):
    out, _ = array
    (out / shard_name("val", 0, chunks.chunk_prefix(5))).unlink()
    (out / shard_name("train", 1, chunks.chunk_prefix(30))).unlink()
    (out / shard_name("train", 0, chunks.chunk_prefix(30))).unlink()
    with pytest.raises(IncompleteRunError) as err:
        merge(out)
    message = str(err.value)
    assert "3 shard(s) of 2 chunk(s) (chunk index: 5, 30; e.g. chunk 5 reports shard val-c00005-000000.tar" in message
    assert f"--num-chunks {CHUNKS} --chunk-index I --force`" in message


def test_bench_main_runs_small(tmp_path, capsys):
    scale_prep.main(["--chunks", "20", "--base-chunks", "10", "--repeats", "1", "--tmp", str(tmp_path)])
    stdout = capsys.readouterr().out
    assert "| chunks | shards | samples |" in stdout and "(chunk index: 17-19)" in stdout
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    sizes = [r for r in rows if r["bench"] == "scale_prep"]
    assert [r["chunks"] for r in sizes] == [10, 20]
    for r in sizes:
        assert r["missing_named"] == r["missing_chunks"] and len(r["missing_chunks"]) == 3
        assert r["merge_s"] > 0 and r["manifest_bytes"] > 0 and r["summary_bytes"] > 0
        assert r["shards"] == 3 * r["chunks"] and "--force" in r["lost_shard_error"]
    ratio = next(r for r in rows if r["bench"] == "scale_prep_ratio")
    assert ratio["chunks"] == [10, 20] and ratio["merge_ratio_per_chunk"] > 0
    assert not any(tmp_path.iterdir())  # the simulated arrays are removed
