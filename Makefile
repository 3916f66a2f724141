# Two set-up commands for a fresh clone with only Python 3 and pip:
#   make demo   -- install into .venv (idempotent) and run the study on the embedded default model
#   make test   -- install into .venv (idempotent), lint with pyflakes and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo lint browser test test-fast bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scaffold-sae demo

lint: $(STAMP)
	$(PY) -m pyflakes src tests bench results

# Headless Chromium for the feature browser's real-browser test (tests/test_browse.py); where apt-get is missing or
# not allowed this only prints a note and that test skips.
browser:
	-@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get install -y chromium >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y chromium >/dev/null 2>&1)) || \
	  echo "note: could not install chromium (needs apt-get as root); the real-browser test will skip"

test: lint browser
	$(PY) -m pytest -q -ra --durations=20

test-fast: lint
	$(PY) -m pytest -q -ra -m "not slow"

bench: $(STAMP)
	$(PY) bench/harvest.py
	$(PY) bench/train.py
	$(PY) bench/distributed.py

clean:
	rm -rf $(VENV) .pytest_cache
