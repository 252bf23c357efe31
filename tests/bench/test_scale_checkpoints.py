"""``bench/scale_checkpoints.py`` end to end at tiny size on 2 CPU processes: real ``pacofr fit`` runs write and
resume a sharded checkpoint (at 2 ranks and at 1), it is consolidated and pruned, and every figure is there."""

from __future__ import annotations

import math

import pytest
from test_bench_smoke import positive_finite, run_bench


@pytest.mark.extended  # larger-scale repeat of CI-covered paths (make test-extended)
@pytest.mark.slow  # three short fits of a tiny model (2, 2 and 1 processes) and a consolidation: ~50 s on 2 cores
def test_scale_checkpoints_bench_tiny(tmp_path):
    args = ("--sizes", "tiny", "--ranks", "2", "--prune-copies", "4", "--keep-last", "2", "--work", str(tmp_path))
    out, records = run_bench("scale_checkpoints.py", *args, timeout=240)
    assert "| model | params | checkpoint | per rank | save | load at 2 | load at 1 |" in out
    assert "| ViT-tiny/16 | 8 M |" in out and "MISMATCH" not in out and "WRONG" not in out
    (row,) = [r for r in records if r["bench"] == "scale_checkpoints"]
    assert (row["size"], row["patch"], row["image"], row["ranks"], row["resume_ranks"]) == ("tiny", 16, 64, 2, 1)
    for key in ("save_s_max", "load_same_s_max", "load_other_s_max", "consolidate_s", "prune_s", "fit_max_rss_max"):
        assert positive_finite(row[key]), (key, row[key])

    # the real sharded layout: one .distcp per rank, and the whole state (weights + both AdamW moments) in it
    assert row["shard_files"] == 2 and row["rank_bytes_min"] > 0
    assert row["params_checked"] == row["params"] and row["adam_filled"] and row["built_on_meta"]
    assert row["total_bytes"] > 11 * row["params"] and math.isclose(
        row["consolidated_bytes"], row["total_bytes"], rel_tol=0.1
    )
    # loads are checked, not only timed: the same state at the saving world size and at another one
    assert row["load_same_state_equal"] and row["load_same_max_rel_diff"] < 1e-9
    assert row["load_other_state_equal"] and row["consolidated_state_equal"]
    assert row["load_other_steps_after"] == 1 and row["resave_other_shard_files"] == 1  # trained on, saved at 1 rank
    # a small image changes only what is per patch position, never the architecture
    assert row["same_names"] and row["params_224"] > row["params"]
    assert all("pos" in name for name in row["differ_from_224"]), row["differ_from_224"]
    # keep-N on sharded folders of the real layout: the newest two remain
    assert row["prune_ok"] and row["prune_left"] == ["step00000003.ckpt", "step00000004.ckpt"]
    assert row["prune_removed"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["faces"], "scratch runs and checkpoints go"
