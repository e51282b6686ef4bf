# facelib: `make book` sets everything up and runs the main job; `make test` runs the tests.
# Both create or reuse the local virtual environment .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.facelib-installed

.PHONY: setup book model preview test clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[book,test]"
	@touch $(STAMP)

setup: $(STAMP)

# Main job. Until the book exists (issue 4) it builds the open face model and renders a preview.
book: $(STAMP)
	$(PY) -m facelib model info
	$(PY) -m facelib model preview --out out/open_model_preview.png

model: $(STAMP)
	$(PY) -m facelib model build

preview: $(STAMP)
	$(PY) -m facelib model preview --out out/open_model_preview.png

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
