"""The study YAML: arms, seeds, cells, equal compute, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import DEFAULT_STUDY

from pacofr.study.runner import nested
from pacofr.study.spec import StudyConfigError, load_study

REQUIRED_ARMS = {
    "random_init",
    "mae",
    "crfrp_mae",
    "pacofr",
    "pacofr_no_replace",
    "pacofr_no_spatial",
    "pacofr_random_mask",
}


def test_default_study_holds_the_required_arms_and_three_seeds():
    spec = load_study(DEFAULT_STUDY)
    assert {a.name for a in spec.arms} >= REQUIRED_ARMS
    assert len(spec.seeds) >= 3 and spec.reference_arm == "mae"
    assert not spec.arm("random_init").pretrain
    assert len(spec.cells()) == len(spec.arms) * len(spec.seeds)
    # seed-major: every arm of the first seed comes first, so a partial grid already pairs arms
    assert [c.seed for c in spec.cells()[: len(spec.arms)]] == [spec.seeds[0]] * len(spec.arms)
    assert spec.cells()[0].folder == Path("runs/study/default") / spec.arms[0].name / f"seed{spec.seeds[0]}"


def test_arms_differ_only_in_their_own_switches():
    """Same compute and data for every arm: no arm may touch steps, batch, data or the seeds."""
    spec = load_study(DEFAULT_STUDY)
    for arm in spec.arms:
        for key in arm.overrides:
            assert key.startswith(("model.", "data.masker")), (arm.name, key)
            assert key not in ("model.img_size", "model.encoder_size", "model.patch_size"), (arm.name, key)
    cells = {c.arm.name: c for c in spec.cells() if c.seed == spec.seeds[0]}
    common = {k: v for k, v in spec.fit_overrides(cells["mae"]).items() if not k.startswith(("model.", "data.masker"))}
    for cell in cells.values():
        overrides = spec.fit_overrides(cell)
        assert {k: overrides[k] for k in common} == common


def test_a_seed_drives_init_data_and_masks():
    spec = load_study(DEFAULT_STUDY)
    cell = next(c for c in spec.cells() if c.seed == 2)
    overrides = spec.fit_overrides(cell)
    assert overrides["seed_everything"] == 2 and overrides["data.seed"] == 2


def test_cell_key_changes_with_what_decides_the_result():
    spec = load_study(DEFAULT_STUDY)
    a, b = spec.cells()[1], spec.cells()[2]
    assert spec.cell_key(a) == spec.cell_key(a)
    assert spec.cell_key(a) != spec.cell_key(b)
    other = load_study(DEFAULT_STUDY, data_root="elsewhere")
    assert other.cell_key(other.cells()[1]) != spec.cell_key(a)


def test_quick_grid_is_two_arms_one_seed_few_steps():
    spec = load_study(DEFAULT_STUDY, quick=True, root="somewhere")
    assert [a.name for a in spec.arms] == ["mae", "pacofr"] and spec.seeds == (0,)
    assert spec.common["trainer.max_steps"] <= 10
    assert spec.folder == Path("somewhere/default_quick")


def test_overrides_become_a_nested_config():
    assert nested({"model.lr": 1, "model.sub.x": 2, "seed_everything": 0}) == {
        "model": {"lr": 1, "sub": {"x": 2}},
        "seed_everything": 0,
    }
    with pytest.raises(StudyConfigError):
        nested({"model": 1, "model.lr": 2})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(colour="blue"), "unknown keys"),
        (lambda c: c.pop("arms"), "missing key 'arms'"),
        (lambda c: c.update(seeds=[]), "seeds must be"),
        (lambda c: c.update(reference_arm="nope"), "reference_arm"),
        (lambda c: c["probe"].update(epochs=3), "probe: unknown keys"),
        (lambda c: c["arms"]["mae"].update(tuning=1), "arms.mae: unknown keys"),
        (lambda c: c["quick"].update(arms=["mae", "ghost"]), "unknown arms"),
    ],
)
def test_malformed_study_is_one_clear_error(tmp_path, edit, message):
    config = yaml.safe_load(DEFAULT_STUDY.read_text())
    edit(config)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(StudyConfigError, match=message):
        load_study(path, quick="quick" in message or "unknown arms" in message)


def write_study(tmp_path, edit) -> Path:
    config = yaml.safe_load(DEFAULT_STUDY.read_text())
    edit(config)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_reference_arms_list_and_the_single_reference_arm(tmp_path):
    assert load_study(DEFAULT_STUDY).references == ("mae", "mae_parse")  # MAE, then the parser-supervision control

    def two(config):
        config.pop("reference_arm", None)
        config["reference_arms"] = ["mae", "crfrp_mae"]

    spec = load_study(write_study(tmp_path, two))
    assert spec.references == ("mae", "crfrp_mae") and spec.reference_arm == "mae"
    quick = load_study(write_study(tmp_path, two), quick=True)  # the quick grid keeps those it has
    assert quick.references == ("mae",)

    def single(config):  # the older key alone: one reference
        config.pop("reference_arms", None)
        config["reference_arm"] = "crfrp_mae"

    assert load_study(write_study(tmp_path, single)).references == ("crfrp_mae",)

    def agreeing(config):  # both keys: the single one must be the list's first
        config["reference_arm"] = "mae"
        config["reference_arms"] = ["mae", "fsfm"]

    assert load_study(write_study(tmp_path, agreeing)).references == ("mae", "fsfm")


@pytest.mark.parametrize(
    ("references", "message"),
    [
        (["crfrp_mae", "mae"], "not the first of reference_arms"),
        (["mae", "ghost"], "not among the arms"),
        (["mae", "mae"], "distinct"),
        ([], "non-empty"),
    ],
)
def test_bad_reference_arms(tmp_path, references, message):
    with pytest.raises(StudyConfigError, match=message):
        load_study(write_study(tmp_path, lambda c: c.update(reference_arm="mae", reference_arms=references)))


def test_unreadable_study_file():
    with pytest.raises(StudyConfigError, match="cannot read"):
        load_study("no/such/study.yaml")


COMPUTE3X = DEFAULT_STUDY.parent / "compute3x.yaml"


def test_the_3x_study_takes_the_default_arms_and_scales_only_the_schedule():
    default, longer = load_study(DEFAULT_STUDY), load_study(COMPUTE3X)
    by_name = {a.name: a for a in default.arms}
    assert longer.name == "compute3x" and longer.seeds == (0, 1)
    assert [a.name for a in longer.arms] == [
        "mae",
        "mae_parse",
        "mae_spatial",
        "pacofr",
        "pacofr_full",
        "full_lowpass8",
    ]
    assert all(a == by_name[a.name] for a in longer.arms)  # the very arms of the default study
    assert longer.references == ("mae", "mae_spatial")
    scaled = {"trainer.max_steps", "trainer.val_check_interval", "model.warmup_steps", "checkpoint.every_n_train_steps"}
    scaled.add("model.objective.init_args.incubation_steps")
    assert {k for k in default.common if default.common[k] != longer.common[k]} == scaled
    assert all(longer.common[k] == 3 * default.common[k] for k in scaled)
    assert longer.probe == default.probe and longer.base_config == default.base_config
    assert longer.data_root == default.data_root


def test_extends_errors_are_one_line(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {DEFAULT_STUDY}\nname: c\narms: [mae, ghost]\nreference_arms: [mae]\n")
    with pytest.raises(StudyConfigError, match=r"arms \['ghost'\] are not arms of"):
        load_study(child)
    child.write_text("name: c\nbase_config: x.yaml\ndata_root: d\narms: [mae]\n")
    with pytest.raises(StudyConfigError, match="needs `extends:`"):
        load_study(child)
    child.write_text(f"extends: {child}\nname: c\n")
    with pytest.raises(StudyConfigError, match="loops"):
        load_study(child)
    child.write_text(f"extends: {DEFAULT_STUDY}\nname: c\narms: [mae, pacofr]\n")  # the parent's references: absent
    with pytest.raises(StudyConfigError, match="not among the arms"):
        load_study(child)


def test_base_config_is_one_file_or_a_composition(tmp_path, monkeypatch):
    """``base_config`` names one pretraining config or a list composed in order, as ``pacofr fit --config A --config
    B`` composes them: the cell's config merges them, its command passes each, and its key reads every file."""
    from pacofr.study.runner import cell_config, fit_command

    monkeypatch.chdir(DEFAULT_STUDY.parents[2])  # the study names its base configs from the repository root
    spec = load_study(DEFAULT_STUDY, root=tmp_path)
    parts = ("configs/pretrain/tiny.yaml", "configs/pretrain/method/pacofr.yaml", "configs/pretrain/demo.yaml")
    assert spec.base_config == parts
    cell = next(c for c in spec.cells() if c.arm.name == "mae")
    config = cell_config(spec, cell)
    args = config["model"]["objective"]["init_args"]
    assert config["model"]["objective"]["class_path"] == "pacofr.objectives.MAE"  # the arm's switch, last
    assert (args["encoder_size"], args["num_codes"]) == ("tiny", 256)  # the size's, and demo.yaml's over the method's
    command = fit_command(spec, cell)
    given = [command[i + 1] for i, a in enumerate(command) if a == "--config"]
    assert given[:3] == list(parts) and given[3].endswith("overrides_common.yaml")
    # a change to any of the files makes every result stale
    one = tmp_path / "one.yaml"
    one.write_text(Path(parts[0]).read_text())
    study = tmp_path / "study.yaml"
    text = DEFAULT_STUDY.read_text()
    study.write_text(text)
    key = load_study(study, root=tmp_path).cell_key(cell)
    assert key == spec.cell_key(cell)
    edited = tmp_path / "demo.yaml"
    edited.write_text(Path(parts[2]).read_text() + "# edited\n")
    study.write_text(text.replace("configs/pretrain/demo.yaml", str(edited)))
    assert load_study(study, root=tmp_path).cell_key(cell) != key
    # one file: a plain path, read as a one-item composition
    study.write_text(f"name: one\nbase_config: {one}\ndata_root: d\narms: {{mae: {{}}}}\n")
    single = load_study(study, root=tmp_path)
    assert single.base_config == (str(one),)
    assert cell_config(single, single.cells()[0])["model"]["objective"]["init_args"]["encoder_size"] == "tiny"
    for bad in ("[]", "[configs/pretrain/tiny.yaml, 3]"):
        study.write_text(f"name: bad\nbase_config: {bad}\ndata_root: d\narms: {{mae: {{}}}}\n")
        with pytest.raises(StudyConfigError, match="base_config must be"):
            load_study(study)
