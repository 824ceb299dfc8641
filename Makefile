# Two commands, each does its own set-up (virtualenv + install):
#   make demo   compile the bundled sample for every target and print the quantization card
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEBIAN_DATA := fortunes-min fonts-dejavu-core alsa-utils espeak-ng sox chromium

.PHONY: demo test check bench clean system-data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

DEMO_TARGETS := ort-cpu tflite tflm ethos-u qnn-htp
demo: $(STAMP)
	@set -e; for t in $(DEMO_TARGETS); do \
		$(VENV)/bin/qcompile compile samples/digits_cnn.onnx --target $$t \
			--calib samples/digits_calib.npz --eval samples/digits_test.npz -o out/digits-$$t; \
	done

# Real text, fonts and speech for the real-model tests, and a headless browser for the HTML
# card (Debian packages); best effort: without root or apt the tests that need them skip and say why.
system-data:
	@if [ -d /usr/share/sounds/alsa ] && [ -d /usr/share/games/fortunes ] && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_DATA) >/dev/null) \
		|| echo "note: could not install $(DEBIAN_DATA); tests that need them will skip"; \
	else echo "note: not root or no apt-get; tests that need $(DEBIAN_DATA) will skip"; fi

# Lint, format and types. mypy reads the package through a folder of links laid out as it
# installs (passes/ and targets/ become qcompile.passes and qcompile.targets).
TYPECHECK := $(VENV)/typecheck
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/qcompile
	ln -s $(CURDIR)/qcompile/*.py $(CURDIR)/qcompile/py.typed $(TYPECHECK)/qcompile/
	ln -s $(CURDIR)/passes $(TYPECHECK)/qcompile/passes
	ln -s $(CURDIR)/targets $(TYPECHECK)/qcompile/targets
	cd $(TYPECHECK) && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p qcompile

test: check system-data
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench.compile_vs_ort

clean:
	rm -rf $(VENV) out
