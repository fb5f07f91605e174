# edgeprune: `make demo` runs the main job on built-in defaults; `make test` runs the tests.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install system-deps demo test conformance bench clean

install: $(VENV)/.installed

# torch first, from the pinned CPU wheel, so nothing pulls a CUDA build; then every extra.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

# sshd and adb for the device-agent tests and emulated targets (root only; apt-get).
system-deps:
	@if [ "$$(id -u)" = 0 ] && [ -f .ci/system-deps.sh ]; then bash .ci/system-deps.sh; \
	else echo "system-deps: not root, skipping apt-get (emulated targets need root)" >&2; fi

demo: install system-deps
	$(VENV)/bin/edgeprune demo

test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# the user-family conformance suite (tests/conformance); not yet part of `make test`
conformance: install system-deps
	$(PY) -m pytest -m conformance tests/conformance $(PYTEST_ARGS)

bench: install system-deps
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
