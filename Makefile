# Two commands, each does its own set-up (virtualenv + install):
#   make demo   compile the bundled sample for every target and print the quantization card
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qcompile compile samples/digits_cnn.onnx --target ort-cpu \
		--calib samples/digits_calib.npz --eval samples/digits_test.npz -o out/digits

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/compile_vs_ort.py

clean:
	rm -rf $(VENV) out
