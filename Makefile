# edgeprune: `make demo` runs the main job on built-in defaults; `make test` runs the tests.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=

TORCH   := torch==2.13.0

.PHONY: install lock system-deps demo test conformance bench clean

install: $(VENV)/.installed

# torch first, from the pinned CPU wheel, so nothing pulls a CUDA build; then every extra at
# the versions in constraints.txt (pyproject.toml keeps ranges, for library users).
$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all]'
	touch $@

# constraints.txt from $(VENV), after the tests pass there (upgrade first with
# `$(PY) -m pip install -U -e '.[all]'` to move the pins).
lock:
	$(PY) .ci/lock.py > constraints.txt.tmp
	grep -qx '$(TORCH)' constraints.txt.tmp || { echo "lock: $(VENV) must hold $(TORCH)" >&2; rm constraints.txt.tmp; exit 1; }
	mv constraints.txt.tmp constraints.txt

# sshd and adb for the device-agent tests and emulated targets (root only; apt-get).
system-deps:
	@if [ "$$(id -u)" = 0 ] && [ -f .ci/system-deps.sh ]; then bash .ci/system-deps.sh; \
	else echo "system-deps: not root, skipping apt-get (emulated targets need root)" >&2; fi

demo: install system-deps
	$(VENV)/bin/edgeprune demo

# every test, conformance included, as pytest units on two lanes (tests/lanes.py);
# with PYTEST_ARGS, one plain pytest run with them
test: install system-deps
	$(PY) tests/lanes.py $(PYTEST_ARGS)

# the user-family conformance suite (tests/conformance) alone
conformance: install system-deps
	$(PY) -m pytest -m conformance tests/conformance $(PYTEST_ARGS)

bench: install system-deps
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
