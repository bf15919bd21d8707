# Two commands set up and run everything on a fresh machine:
#   make demo   trains SyncNet -> HyperLipsBase -> HyperLipsHR on the generated demo data, then infers
#   make test   runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := --dataset=demo

.PHONY: install demo app test test-fast bench gpu-check clean

install: $(STAMP)

# The venv is (re)built when requirements.txt changes. A CUDA torch already importable by
# $(PYTHON) is kept (the venv sees system packages only if created with VENV_FLAGS=--system-site-packages);
# otherwise the CPU wheel 2.13.0 is installed before the rest, so pip never pulls a multi-GB CUDA build.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

# A quick pass through every stage on the generated demo set (minutes on 2 CPU cores): it shows the
# pipeline runs end to end, not visual quality. Drop the step overrides to train for real.
DEMO_QUICK := --num_workers=0 --eval_max_frames=50
demo: $(STAMP)
	$(PY) run_talkingface.py --model=SyncNet $(DEMO) $(DEMO_QUICK) --max_steps=60 --batch_size=16 \
		--eval_interval=60 --checkpoint_interval=60
	$(PY) run_talkingface.py --model=HyperLipsBase $(DEMO) $(DEMO_QUICK) --max_steps=30 --batch_size=2 \
		--eval_batch_size=2 --eval_interval=30 --checkpoint_interval=30 --max_val_batches=4
	$(PY) run_talkingface.py --model=HyperLipsHR $(DEMO) $(DEMO_QUICK) --max_steps=40 --batch_size=8 \
		--eval_batch_size=8 --eval_interval=40 --checkpoint_interval=40 --max_val_batches=4
	$(PY) run_talkingface.py --model=HyperLipsHR $(DEMO) --mode=infer \
		--video=dataset/demo/data/M000/front/neutral/level_1/001.mp4 \
		--audio=dataset/demo/data/M000/front/happy/level_1/001.mp4 --output=results/demo/demo_infer.mp4
	@echo "demo done: metrics in results/demo/*/metrics.json, video in results/demo/demo_infer.mp4"

# The web app on http://127.0.0.1:7860 (APP_ARGS="--port=8000 --checkpoint=..." to change it); it offers
# every model trained under checkpoints/, e.g. by `make demo`.
app: $(STAMP)
	$(PY) run_talkingface.py --mode=app $(APP_ARGS)

# Two pytest workers, one test file each at a time (so a file's fixtures are built once): every
# test holds torch to one thread, so two run side by side on two cores. Files start in collection
# order (--no-loadscope-reorder), which tests/conftest.py sorts longest first.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# tests/unit mirrors the package (seconds each); tests/integration runs the CLI, resume, DDP, the app
# and the real clips. The long integration files go first, so the short unit files fill the end.
test: $(STAMP)
	$(PYTEST) tests/integration tests/unit

test-fast: $(STAMP)
	$(PYTEST) tests/unit

bench: $(STAMP)
	$(PY) benchmarks/bench_preprocess.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_stream.py
	$(PY) benchmarks/bench_generator.py
	$(PY) benchmarks/bench_engine.py --int8

# A CUDA machine checked in <= 6 minutes (benchmarks/gpu_check.py; JSON in results/gpu_check/); no GPU: one line, exit 0.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf dataset/demo checkpoints/demo results/demo
