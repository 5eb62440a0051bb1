# The README's two commands: `make serve` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
APT_PACKAGES := espeak-ng sox libsndfile1
# For `make test` only: the browser tests drive the web UIs in Chromium, and dicom3tools' dciodvfy
# validates the DICOM the radiology app writes (both kinds of test skip without them).
DEV_APT_PACKAGES := chromium dicom3tools
PYTEST_ARGS ?=

.PHONY: serve test install install-dev sysdeps sysdeps-dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,lidc]'
	touch $(STAMP) $@

install: sysdeps $(STAMP)
install-dev: sysdeps sysdeps-dev $(DEV_STAMP)

# System packages (text-to-speech, audio tools; Chromium for the tests). Installed when missing and we
# are root; otherwise the features that need them report that they are unavailable instead of crashing,
# and the browser tests skip.
sysdeps sysdeps-dev:
	@missing=""; for p in $(if $(filter sysdeps-dev,$@),$(DEV_APT_PACKAGES),$(APT_PACKAGES)); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
			echo "installing system packages:$$missing"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
				|| echo "warning: could not install$$missing; what needs it will be unavailable or skipped"; \
		else \
			echo "warning: missing system packages:$$missing (install them as root: voice output, browser tests)"; \
		fi; \
	fi

serve: install
	$(BIN)/triptych serve

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check core apps tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
