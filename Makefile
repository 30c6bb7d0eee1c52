# intermod — the two commands a new user needs are `make demo` and `make test`.
# Both create .venv and install the pinned dependencies (constraints.txt) the first time.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test fuzz bench validate proto serve lint lock clean

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
