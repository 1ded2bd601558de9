# The two commands: `make demo` runs the whole pipeline on simulated data; `make test` runs the test suite.
# Both set up .venv on first use (scripts/bootstrap.sh).
.PHONY: setup demo test test-fast lint bench

setup:
	@./scripts/bootstrap.sh

demo: setup
	.venv/bin/brainmm demo

test: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadfile

test-fast: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: setup
	.venv/bin/ruff check .
