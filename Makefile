# Two commands do all the set-up on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-slow venv-dev venv-demo clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Ultralytics depends on the GUI build of OpenCV, which needs libGL (absent on servers): swap in the headless build.
define fix_opencv
	$(PY) -c "import cv2" 2>/dev/null || ( $(PIP) uninstall -y -q opencv-python; $(PIP) install -q --force-reinstall --no-deps "opencv-python-headless>=4.8" )
endef

$(VENV)/.dev: pyproject.toml | $(VENV)/bin/activate
	$(PIP) install -q -e '.[dev]'
	$(fix_opencv)
	touch $@

$(VENV)/.demo: pyproject.toml | $(VENV)/bin/activate
	$(PIP) install -q -e '.[ultralytics]'
	$(fix_opencv)
	touch $@

demo: $(VENV)/.demo
	$(VENV)/bin/yolotune demo

# the fast suite (a few minutes on 2 cores); the slow checks are marked and run by test-slow (CI runs both)
test: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.dev
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) yolotune-demo yolotune-out
