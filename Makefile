# Two commands, each does its own set-up (virtualenv + install):
#   make demo   compile the bundled sample for every target and print the quantization card
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEBIAN_DATA := fortunes-min fonts-dejavu-core alsa-utils espeak-ng sox

.PHONY: demo test bench clean system-data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qcompile compile samples/digits_cnn.onnx --target ort-cpu \
		--calib samples/digits_calib.npz --eval samples/digits_test.npz -o out/digits

# Real text, fonts and speech for the real-model tests (Debian packages); best effort:
# without root or apt the tests that need them skip and say why.
system-data:
	@if [ -d /usr/share/sounds/alsa ] && [ -d /usr/share/games/fortunes ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_DATA) >/dev/null) \
		|| echo "note: could not install $(DEBIAN_DATA); tests that need them will skip"; \
	else echo "note: not root or no apt-get; tests that need $(DEBIAN_DATA) will skip"; fi

test: $(STAMP) system-data
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/compile_vs_ort.py

clean:
	rm -rf $(VENV) out
