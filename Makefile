# Two commands for users: `make demo` and `make test`. Both set everything up first
# (scripts/setup_env.sh is idempotent: seconds when the environment is current).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test doctor bench lock clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(VENV)/bin/rgb2thermal demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

doctor: setup
	$(VENV)/bin/rgb2thermal doctor

bench: setup
	$(PY) -m benchmarks

# Re-resolve the pinned set after changing dependencies in pyproject.toml.
lock: setup
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements/lock.txt

clean:
	rm -rf $(VENV) .pytest_cache
