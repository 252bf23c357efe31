# pacofr — set-up, tests and the main jobs. Every target works on a fresh clone.
# Override TORCH_SPEC on a cluster to pick its CUDA build, e.g.
#   make setup TORCH_SPEC="torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= prep,dev
BIN := $(VENV)/bin
DATA_DEMO ?= data/synth-demo
RUNS ?= runs

.PHONY: setup test test-fast test-extended lint data-demo prep-demo pretrain eval-demo study study-quick bench tensorboard clean

# The stamp makes `setup` a no-op once done; it is redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip<26.2"
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

# CI's command: every test but the `extended` ones (larger-scale repeats of what a CI test covers), ~20 min on
# 2 cores. `make test-extended` runs those (~20 min more); run both before a release.
test: setup
	$(BIN)/python -m pytest -q -m "not extended" --durations=30 tests

test-extended: setup
	$(BIN)/python -m pytest -q -m extended tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not slurm and not extended" tests

lint: setup
	$(BIN)/ruff check src data_prep tests bench
	$(BIN)/ruff format --check src data_prep tests bench

$(DATA_DEMO)/_info.json: | setup
	$(BIN)/pacofr-prep synth --out $(DATA_DEMO) --n 2000 --size 256 --seed 0 --val-fraction 0.1

data-demo: $(DATA_DEMO)/_info.json
	@echo "synthetic demo dataset: $(DATA_DEMO)"

# The preprocessing stage over the bundled real faces + synthetic raw photos, offline backend (no weights).
PREP_DEMO ?= data/prep-demo
prep-demo: setup
	$(BIN)/pacofr-prep demo-images --out $(PREP_DEMO)/raw --num-synthetic 24 --seed 0
	$(BIN)/pacofr-prep run --input $(PREP_DEMO)/raw --out $(PREP_DEMO)/faces --backend offline --num-chunks 2 --chunk-index 0
	$(BIN)/pacofr-prep run --input $(PREP_DEMO)/raw --out $(PREP_DEMO)/faces --backend offline --num-chunks 2 --chunk-index 1
	$(BIN)/pacofr-prep merge --out $(PREP_DEMO)/faces
	$(BIN)/pacofr-prep inspect $(PREP_DEMO)/faces

# The main job: tiny PaCo-FR on the synthetic faces, on CPU (override PRETRAIN_ARGS to change anything,
# e.g. PRETRAIN_ARGS="--trainer.max_steps 1000").
# The demo's config files, composed in order (`pacofr fit --config A --config B ...`): the size, the method, and
# PaCo-FR's codebook at that size.
PRETRAIN_CONFIG ?= configs/pretrain/tiny.yaml configs/pretrain/method/pacofr.yaml configs/pretrain/demo.yaml
PRETRAIN_ARGS ?=
# Run twice, it continues the same run (--resume auto: from its newest checkpoint; a finished run stays finished).
# Start afresh with `rm -r $(RUNS)/demo_tiny` or another RUNS.
pretrain: data-demo
	@if [ -d $(RUNS)/demo_tiny/checkpoints ]; then echo "make pretrain: continuing $(RUNS)/demo_tiny from its newest checkpoint (--resume auto); rm -r $(RUNS)/demo_tiny to start afresh"; fi
	$(BIN)/pacofr fit $(addprefix --config ,$(PRETRAIN_CONFIG)) --data.root $(DATA_DEMO) --run_dir $(RUNS)/demo_tiny --resume auto $(PRETRAIN_ARGS)
	@echo
	@echo "checkpoints: $(RUNS)/demo_tiny/checkpoints (last.ckpt = newest)"
	@echo "TensorBoard: make tensorboard   (or: $(BIN)/tensorboard --logdir $(RUNS))"

# The synthetic benchmark suite on the demo checkpoint (trained first with `make pretrain` if missing):
# parsing, landmarks, head pose and verification probes, each also scored with occluders; prints one
# table and writes results/*.json beside the checkpoint. EVAL_ARGS adds `pacofr eval` flags.
EVAL_CKPT ?= $(RUNS)/demo_tiny/checkpoints/last.ckpt
EVAL_ARGS ?=
eval-demo: data-demo
	test -f $(EVAL_CKPT) || $(MAKE) pretrain
	$(BIN)/pacofr eval --suite synth --model.encoder_ckpt $(EVAL_CKPT) --data.root $(DATA_DEMO) $(EVAL_ARGS)

# The method study (docs/study.md): arms x seeds -> pretraining -> frozen-feature probes -> one table, plots and
# a TensorBoard HPARAMS page under runs/study/<name>/. Finished cells are skipped, interrupted ones resume, so
# the same command continues a study. `make study-quick` runs the same pipeline on 2 arms x 1 seed x 6 steps.
STUDY_CONFIG ?= configs/study/default.yaml
STUDY_DATA ?= data/study-faces
STUDY_ARGS ?=
$(STUDY_DATA)/_info.json: | setup
	$(BIN)/pacofr-prep synth --out $(STUDY_DATA) --n 8000 --size 128 --seed 1 --val-fraction 0.15 --quiet

study: $(STUDY_DATA)/_info.json
	$(BIN)/pacofr study run --config $(STUDY_CONFIG) --data-root $(STUDY_DATA) $(STUDY_ARGS)

study-quick: $(STUDY_DATA)/_info.json
	$(BIN)/pacofr study run --config $(STUDY_CONFIG) --quick --data-root $(STUDY_DATA) $(STUDY_ARGS)

# CPU benchmarks on the demo data: training step (tiny: MAE vs PaCo-FR, eager/compiled, Lightning overhead)
# and the input pipeline on one core (vs bare webdataset+PIL, decoders, cores per GPU). GPU: bench/RESULTS.md
# (bench/gpu_check.sh). tests/bench/test_bench_smoke.py runs this target with tiny sizes in these variables.
BENCH_TRAIN_ARGS ?= --threads 1
BENCH_DATA_ARGS ?=
BENCH_SYNTH_ARGS ?=
bench: data-demo
	OMP_NUM_THREADS=1 $(BIN)/python bench/train_step.py $(BENCH_TRAIN_ARGS)
	$(BIN)/python bench/data.py --root $(DATA_DEMO) $(BENCH_DATA_ARGS)
	$(BIN)/python bench/synth.py $(BENCH_SYNTH_ARGS)

tensorboard: setup
	$(BIN)/tensorboard --logdir $(RUNS) --bind_all

clean:
	rm -rf $(VENV) data runs
