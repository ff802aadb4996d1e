# The project's commands. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
APT_PACKAGES ?=

.PHONY: install browser docker-tools run test compose-test check bench screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/lookalike up --demo 300

# The gallery's browser test drives Debian's chromium (playwright uses it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromium not found and not root: the browser test will be skipped"; fi; }

# A Docker engine, compose and debootstrap from Debian, when root and apt can install them.
docker-tools:
	@command -v dockerd >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
	  && { command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap; \
	  else echo "docker, docker-compose or debootstrap missing and not root: compose-test will skip"; fi; }

# The compose stack built and run in a real Docker engine (skips, saying why, without one).
compose-test: install docker-tools
	$(BIN)/python docker/test/run.py

test: install browser
	$(BIN)/python -m pytest -q

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/index.py
	$(BIN)/python bench/graph_cost.py
	$(BIN)/python bench/importer.py
	$(BIN)/python bench/gallery.py
	$(BIN)/python bench/durability.py
	$(BIN)/python bench/http_load.py
	$(BIN)/python bench/scale.py --dims 0 256
	$(BIN)/python bench/follow.py --replicas 1 2
	$(BIN)/python bench/tail_scan.py
	$(BIN)/python bench/interference.py
	$(BIN)/python bench/journal_read.py
	$(BIN)/python bench/load_stall.py
	$(BIN)/python bench/quiet_wake.py
	$(BIN)/python bench/faults.py --out docs/reliability.md

# The README's pictures, from a real `lookalike up --demo 300` and `lookalike evaluate --html`.
screenshots: install browser
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
