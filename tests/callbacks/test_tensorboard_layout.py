"""The TensorBoard pages read at a glance: one scale per chart, problems apart from volumes, a validation
chart, every logged scalar on the page, and HPARAMS rows that say which method a run is."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from tiny_training import tiny_objective

from pacofr.callbacks.tensorboard import ScalarLayout, method_name, run_hparams
from pacofr.masking import RandomMasker, StructuredMasker
from pacofr.objectives import MAEFull, MAEParse, PaCoFR, PaCoFRFull
from pacofr.training.synthetic_batches import synthetic_batches

# every scalar a PaCo-FR run logs (a ViT-Ti run on the synthetic faces), and the GPU-only MFU
LOGGED = [
    "codebook/perplexity",
    "codebook/usage_fraction",
    "data/decode_errors",
    "data/missing_keys",
    "data/samples_read",
    "data/short_shards",
    "data/truncated_shards",
    "data/unreadable_samples",
    "data/unreadable_shards",
    "loss/codebook",
    "loss/codebook_alignment",
    "loss/codebook_belief_ce",
    "loss/codebook_commitment",
    "loss/nonfinite_skipped",
    "loss/rec",
    "loss/rec_covered",
    "loss/spatial",
    "loss/spatial_centroid",
    "loss/spatial_region",
    "loss/total",
    "mask/covered_fraction",
    "mask/ratio",
    "mask/replaced_ratio",
    "optim/grad_norm",
    "optim/incubating",
    "optim/lr_codebook",
    "optim/lr_main",
    "perf/images_per_s",
    "perf/step_time_s",
    "perf/tflops_per_device",
    "perf/mfu",
    "probe/knn_identity_acc",
    "probe/pose_mae",
    "probe/pose_mae_pitch",
    "probe/pose_mae_roll",
    "probe/pose_mae_yaw",
    "recon/psnr_db",
    "val/codebook",
    "val/codebook_alignment",
    "val/codebook_belief_ce",
    "val/codebook_commitment",
    "val/loss",
    "val/psnr_db",
    "val/rec",
    "val/rec_covered",
    "val/spatial",
    "val/spatial_centroid",
    "val/spatial_region",
]

# tags whose values live on different scales: never on one chart
DIFFERENT_SCALES = [
    ("codebook/perplexity", "codebook/usage_fraction"),
    ("recon/psnr_db", "mask/ratio"),
    ("data/samples_read", "data/decode_errors"),
    ("loss/total", "optim/incubating"),
    ("perf/images_per_s", "perf/step_time_s"),
    ("val/loss", "val/rec"),  # the total is several times the reconstruction term
    ("loss/codebook_belief_ce", "loss/codebook_alignment"),
    ("val/codebook_belief_ce", "val/spatial"),
]


def paco_layout() -> dict:
    return ScalarLayout.layout(tiny_objective("pacofr", spatial_weight=0.1, covered_weight=0.007))


def charts(layout: dict | None = None, logged: list[str] = LOGGED) -> dict[str, list[str]]:
    """chart title -> the logged tags it draws (TensorBoard searches each regex in the tag)."""
    out = {}
    for category in (layout or paco_layout()).values():
        for title, (_, patterns) in category.items():
            out[title] = [t for t in logged if any(re.search(p, t) for p in patterns)]
    return out


def test_every_logged_scalar_is_on_exactly_one_chart():
    drawn = [t for tags in charts().values() for t in tags]
    assert sorted(drawn) == sorted(LOGGED)


@pytest.mark.parametrize(("a", "b"), DIFFERENT_SCALES)
def test_no_chart_mixes_scales(a, b):
    assert not any(a in tags and b in tags for tags in charts().values())


def test_problem_counters_are_apart_and_validation_has_a_chart():
    by_title = charts()
    problems = next(tags for title, tags in by_title.items() if title.startswith("problems"))
    assert "data/samples_read" not in problems and len(problems) == 6
    assert any("val/loss" in tags for tags in by_title.values())
    assert list(paco_layout())[0] == "1 losses"  # the losses open first


@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        ("mae", {}),
        ("fsfm", {}),
        ("pacofr", {"spatial_weight": 0.1, "covered_weight": 0.007}),
        (MAEParse, {}),
        (MAEFull, {}),
        (PaCoFRFull, {"spatial_weight": 0.1}),
    ],
)
def test_every_method_draws_each_of_its_terms_once(kind, settings):
    """The layout comes from the objective (``tensorboard_charts``): every loss term and monitor a method logs,
    in training and validation, is on exactly one chart, and the general categories follow the method's."""
    torch.manual_seed(0)
    objective = tiny_objective(kind, **settings)
    batch = synthetic_batches(objective, batch=2, count=1)[0]
    _, terms, out = objective(batch, 0)
    logged = ["loss/total", "val/loss", *(f"{where}/{t}" for t in terms for where in ("loss", "val"))]
    logged += list(objective.monitors(out))
    drawn = [t for tags in charts(ScalarLayout.layout(objective), logged).values() for t in tags]
    assert sorted(drawn) == sorted(logged)
    layout = ScalarLayout.layout(objective)
    assert list(layout)[0] == "1 losses" and list(layout)[-1].endswith(" data")


def test_method_names():
    assert method_name(PaCoFR, "StructuredMasker") == "PaCo-FR"  # the class, as the callback passes it
    assert method_name("MAEParse", "RandomMasker") == "MAE + class-share head"
    assert method_name("NotAnObjective", "RandomMasker") == "NotAnObjective"
    assert method_name("PaCoFR", "StructuredMasker") == "PaCo-FR"
    assert method_name("PaCoFR", "RandomMasker") == "PaCo-FR (RandomMasker)"
    assert method_name("FSFM", "StructuredMasker") == "FSFM"
    assert method_name("FSFM", "StructuredMasker", {"id_weight": 0.0}) == "CRFR-P MAE"
    assert method_name("PaCoFRFull", "StructuredMasker") == "PaCo-FR full"
    assert method_name("MAE", "RandomMasker") == "MAE"
    assert method_name("MAE", "StructuredMasker") == "MAE (StructuredMasker)"


def test_hparams_say_method_masker_batch_steps_world():
    data = SimpleNamespace(masker=StructuredMasker(16, 0.75), batch_size=32)
    trainer = SimpleNamespace(datamodule=data, world_size=4, max_steps=1000, accumulate_grad_batches=2)
    objective = {"class_path": "pacofr.objectives.FSFM", "init_args": {"covered_weight": 0.007, "id_weight": 0.0}}
    row = run_hparams(trainer, {"objective": objective, "_instantiator": "x", "base_lr": 1e-3})
    assert row["method"] == "CRFR-P MAE" and row["masker"] == "StructuredMasker" and row["objective"] == "FSFM"
    assert (row["global_batch"], row["max_steps"], row["world_size"]) == (256, 1000, 4)
    assert "_instantiator" not in row and row["base_lr"] == 1e-3 and row["covered_weight"] == 0.007
    mae_trainer = SimpleNamespace(**{**vars(trainer), "datamodule": SimpleNamespace(masker=RandomMasker())})
    mae = run_hparams(mae_trainer, {"objective": {"class_path": "pacofr.objectives.MAE"}})
    assert mae["method"] == "MAE" and mae["global_batch"] == -1


def test_image_grid_gets_titles_and_a_region_legend(tmp_path):
    import torch

    from pacofr.callbacks.tensorboard import titled_grid

    grid = torch.rand(3, 40, 120)
    out = titled_grid(grid, ["input", "masked", "regions"], legend=True)
    assert out.shape[0] == 3 and out.shape[2] == 120 and out.shape[1] > 40 + 14
    assert torch.allclose(out[:, 14 : 14 + 40], grid, atol=1 / 255)  # the grid itself is unchanged
    header = out[:, :14]
    assert (header < 0.5).any() and (header > 0.9).any()  # dark title text on white
    plain = titled_grid(grid, ["a"], legend=False)
    assert plain.shape[1] == 40 + 14
    from PIL import Image

    Image.fromarray((out.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "grid.png")


def test_eval_scores_become_metrics_of_the_pretraining_runs_hparams_row(tmp_path):
    """The session lives in ``tb/hparams`` with no experiment summary anywhere, so TensorBoard takes its metrics
    from that sub-run's scalars: the validation loss, and the scores an evaluation of a checkpoint adds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    from pacofr.hparams_session import add_session_metrics, pretraining_log_dir, write_session_start

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_session_start(
        run / "tb", {"objective": "PaCoFR", "codebook_options": {"dead_after": 5}, "betas": [0.9, 0.95]}
    )
    add_session_metrics(run / "tb", {"hp/val_loss": 1.5}, step=100)
    assert pretraining_log_dir(run / "checkpoints" / "last.ckpt") == run / "tb"
    assert pretraining_log_dir(tmp_path / "encoder.safetensors") is None
    add_session_metrics(run / "tb", {"eval/lfw/test/accuracy": 0.9}, step=300)
    events = EventAccumulator(str(run / "tb" / "hparams"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"hp/val_loss", "eval/lfw/test/accuracy"}
    plugin_tags = events.PluginTagToContent(metadata.PLUGIN_NAME)
    assert metadata.SESSION_START_INFO_TAG in plugin_tags and metadata.EXPERIMENT_TAG not in plugin_tags
    start = metadata.parse_session_start_info_plugin_data(plugin_tags[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["codebook_options/dead_after"].number_value == 5
    assert start.hparams["betas"].string_value == "[0.9, 0.95]"
