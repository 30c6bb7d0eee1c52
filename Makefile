# intermod — the two commands a new user needs are `make demo` and `make test`.
# Both create .venv and install the pinned dependencies (constraints.txt) the first time.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test fuzz bench gpu-check gpu-wheels validate proto serve lint lock clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/python -m intermod.client.demo

test: install
	$(BIN)/python -m pytest -q

# >= 10,000 random, raw-byte and abusive requests on every RPC of a fresh server: codes per
# RPC, UNKNOWN/INTERNAL count (must be 0), p95 health-check latency, server RSS before/after.
fuzz: install
	rm -rf out/fuzz-data
	$(BIN)/python -m intermod.client.fuzz --requests $${FUZZ_REQUESTS:-10000} --seed $${FUZZ_SEED:-0}

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/ablation.py
	$(BIN)/python bench/transformer_models.py --out out/bench
	$(BIN)/python bench/conv_models.py
	$(BIN)/python bench/class_models.py
	$(BIN)/python bench/wide_models.py
	$(BIN)/python bench/resnet.py

# The prepared GPU check (docs/performance.md, "GPU"): tests/test_cuda.py, then bench/gpu.py,
# into $${OUT:-out/gpu}. No install step: it runs where there is no network, with .venv when
# its torch sees CUDA, else the system python3 (bench/gpu_check.sh says which it used).
gpu-check:
	bash bench/gpu_check.sh

# The wheels of igraph and leidenalg (pinned versions) for the GPU machine's Python 3.12,
# into .whl/ (git-ignored; carry it there).
gpu-wheels: install
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl \
	  $$(grep -E '^(igraph|leidenalg|texttable)==' constraints.txt)

validate: install
	$(BIN)/python -m intermod.analysis.validation

proto: install
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto \
	  --pyi_out=proto proto/intermod/v1/*.proto

serve: install
	$(BIN)/intermod serve

lint: install
	$(BIN)/ruff check analysis server client tests bench

lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^torch==' > constraints.txt.new
	echo "torch==2.13.0" >> constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) out .pytest_cache
