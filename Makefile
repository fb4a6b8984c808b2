# Two set-up commands (see README): `make demo` and `make test`.
# Each creates its own virtual environment from nothing and installs everything.
PYTHON ?= python3
VENV ?= .venv
VENV_COMPAT ?= .venv-tf457
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: install install-compat test test-latest test-compat test-fast demo demo-shared bench clean

$(VENV)/.installed: pyproject.toml entry_points/tide-plugin-example/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) $(TORCH)
	$(PY) -m pip install $(PIP_FLAGS) -e ".[test]"
	$(PY) -m pip install $(PIP_FLAGS) --no-deps mistral-common
	$(PY) -m pip install $(PIP_FLAGS) --no-deps -e ./entry_points/tide-plugin-example
	touch $@

install: $(VENV)/.installed

$(VENV_COMPAT)/.installed: pyproject.toml constraints-tf457.txt entry_points/tide-plugin-example/pyproject.toml
	$(PYTHON) -m venv $(VENV_COMPAT)
	$(VENV_COMPAT)/bin/python -m pip install $(PIP_FLAGS) $(TORCH)
	$(VENV_COMPAT)/bin/python -m pip install $(PIP_FLAGS) -c constraints-tf457.txt -e ".[test]"
	$(VENV_COMPAT)/bin/python -m pip install $(PIP_FLAGS) --no-deps mistral-common
	$(VENV_COMPAT)/bin/python -m pip install $(PIP_FLAGS) --no-deps -e ./entry_points/tide-plugin-example
	touch $@

install-compat: $(VENV_COMPAT)/.installed

# The test command: newest transformers, then dllm's transformers 4.57.
test: test-latest test-compat

test-latest: install
	$(PY) -m pytest -q

test-compat: install-compat
	$(VENV_COMPAT)/bin/python -m pytest -q

# The edit-test loop: the tests not marked slow, newest transformers only. `make test`
# stays the command that says a change is done.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/tide distill --overwrite_output_dir True

demo-shared: install
	$(VENV)/bin/tide distill --preset shared --overwrite_output_dir True

bench: install
	$(PY) bench/losses.py
	$(PY) bench/alignment.py
	$(PY) bench/sampling.py
	$(PY) bench/train_step.py
	$(PY) bench/output_layer.py

clean:
	rm -rf $(VENV) $(VENV_COMPAT) runs .pytest_cache
