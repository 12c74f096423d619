# The README's two commands. Each one sets up .venv first (idempotent: scripts/setup_env.py installs a
# torch build only when the venv has none, then this package with its `emo` command), then runs.
#   make demo   -> emo_output.mp4, made by the built-in CPU demo model
#   make test   -> the test suite (CPU only, no downloads)
# Variables: PYTHON (the interpreter that creates .venv), TORCH_SPEC / TORCH_INDEX_URL (see scripts/setup_env.py).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup-demo setup-test

demo: setup-demo
	$(BIN)/emo generate

test: setup-test
	$(BIN)/python -m pytest -q

setup-demo:
	@$(PYTHON) scripts/setup_env.py demo

setup-test:
	@$(PYTHON) scripts/setup_env.py test
