# The two quick-start commands: `make demo` and `make test`. Each creates .venv if needed.

# The interpreter for a new venv, unless PYTHON is given: python3 if it is a supported version (3.11-3.13,
# not free-threaded), else the first of python3.13/3.12/3.11 on PATH, else one under pyenv. Each candidate
# is run, not only looked up: pyenv's shims exist for versions that are installed but not selected.
SUPPORTED := (3, 11) <= sys.version_info[:2] < (3, 14) and getattr(sys, "_is_gil_enabled", lambda: True)()
PYENV_ROOT ?= $(HOME)/.pyenv
CANDIDATES = python3 python3.13 python3.12 python3.11 $(foreach v,3.13 3.12 3.11,$(wildcard $(PYENV_ROOT)/versions/$(v).*[0-9]/bin/python$(v)))
PYTHON ?= $(shell for p in $(CANDIDATES); do "$$p" -c 'import sys; sys.exit(0 if $(SUPPORTED) else 1)' 2>/dev/null && { "$$p" -c 'import sys; print(sys.executable)'; break; }; done)
# "yes" when the interpreter $(1) runs and is supported; its X.Y version.
is_supported = $(shell "$(1)" -c 'import sys; print("yes" if $(SUPPORTED) else "")' 2>/dev/null)
version_of = $(shell "$(1)" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# Each failure is one line (make's $(error)), naming what to install or change.
REQUIRE_PYTHON = $(if $(PYTHON),,$(error petal needs Python 3.11, 3.12 or 3.13 and none was found (python3, python3.1x, pyenv): install one, e.g. apt install python3.12, brew install python@3.13 or pyenv install 3.13, or pass PYTHON=/path/to/python3.1x))$\
	$(if $(call is_supported,$(PYTHON)),,$(error PYTHON=$(PYTHON) $(if $(call version_of,$(PYTHON)),is Python $(call version_of,$(PYTHON)),does not run): petal needs 3.11, 3.12 or 3.13 (not free-threaded); install one and pass it as PYTHON))
# An existing venv on a supported Python is kept (and updated when pyproject.toml changes); one on another is refused.
REQUIRE_VENV = $(if $(call is_supported,$(BIN)/python),,$(error $(VENV) is not on Python 3.11, 3.12 or 3.13: remove it (rm -r $(VENV)) and run make again))
# PYTHON given on the command line but the venv is on another version: say so rather than run on it.
SAME_PYTHON = $(if $(filter command line,$(origin PYTHON)),$(if $(call version_of,$(PYTHON)),,$(error PYTHON=$(PYTHON) does not run))$\
	$(if $(filter $(call version_of,$(BIN)/python),$(call version_of,$(PYTHON))),,$\
	$(error $(VENV) is Python $(call version_of,$(BIN)/python), not PYTHON's $(call version_of,$(PYTHON)): add VENV=.venv-$(call version_of,$(PYTHON)), or rm -r $(VENV))))
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install python

demo: $(VENV)/.installed
	$(SAME_PYTHON)$(BIN)/petal demo

# With CI=true (slow tests skipped), test files spread over one pytest-xdist worker per core (at most 4: each may
# hold TensorFlow's 1-2 GB); a file's tests stay on one worker, so its module fixtures (a trained run) are made
# once, and one file that starts Ray clusters runs at a time (tests/conftest.py). The slow tests kill Ray runs and
# check who stops what they left, which a petal command on another worker would do: with them, one process.
PYTEST_WORKERS ?= $(if $(and $(filter true,$(CI)),$(filter-out 1_,$(PETAL_SLOW_TESTS)_)),-n auto --maxprocesses 4 --dist loadfile,-n0)
test: $(VENV)/.installed
	$(SAME_PYTHON)$(BIN)/ruff check --quiet . && $(BIN)/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

install: $(VENV)/.installed

# Which interpreter a new venv would get (or the one line saying which to install).
python:
	@$(REQUIRE_PYTHON)echo "$(PYTHON)"

$(VENV)/.installed: pyproject.toml
	$(if $(wildcard $(BIN)/python),$(REQUIRE_VENV),$(REQUIRE_PYTHON)"$(PYTHON)" -m venv $(VENV))
	$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip uninstall -qq --yes petal 2>/dev/null || true  # the name before petal-vision, in venvs made before
	$(BIN)/python -m pip install --quiet -e '.[train,serve,scale,test]'
	touch $@
