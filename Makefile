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

# make mutate -> mutation testing of the core modules with mutmut ([tool.mutmut] in pyproject.toml: the modules and
# a fast test selection). About 1 h 45 min on 2 cores, so not part of `make test` or CI; the score goes in
# docs/testing.md.
# One OpenMP thread per mutmut worker: a worker forked after torch's thread pool started hangs in its first
# parallel op (seen as timeouts), and mutmut already runs one worker per core.
.PHONY: mutate
mutate: setup-test
	$(BIN)/python -m pip install -q "mutmut>=3.3,<4"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run; $(BIN)/mutmut results
