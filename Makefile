# Two commands set up and run everything on a fresh machine:
#   make demo   trains SyncNet -> HyperLipsBase -> HyperLipsHR on the generated demo data, then infers
#   make test   runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := --dataset=demo

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# The venv is (re)built when requirements.txt changes. A CUDA torch already importable by
# $(PYTHON) is kept (the venv sees system packages only if created with VENV_FLAGS=--system-site-packages);
# otherwise the CPU wheel 2.13.0 is installed before the rest, so pip never pulls a multi-GB CUDA build.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) run_talkingface.py --model=SyncNet $(DEMO)
	$(PY) run_talkingface.py --model=HyperLipsBase $(DEMO)
	$(PY) run_talkingface.py --model=HyperLipsHR $(DEMO)
	$(PY) run_talkingface.py --model=HyperLipsHR $(DEMO) --mode=infer \
		--video=dataset/demo/data/M003/front/neutral/level_1/001.mp4 \
		--audio=dataset/demo/data/M002/front/neutral/level_1/001.mp4 --output=results/demo/demo_infer.mp4

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_preprocess.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_inference.py

clean:
	rm -rf dataset/demo checkpoints/demo results/demo
