# facelib: `make book` sets everything up and runs the main job; `make test` runs the tests.
# Both create or reuse the local virtual environment .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.facelib-installed

.PHONY: setup book html model preview test test-unit test-avx2 test-emulated clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[book,test,photos]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (facelib)" > /dev/null
	@touch $(STAMP)

setup: $(STAMP)

# Main job: execute every notebooks/NN_*.ipynb with papermill (cpu profile) into book/, write
# results/<chapter>.json, and build the HTML into book/_build/html (stops at the first failing cell).
book: $(STAMP)
	$(PY) scripts/build_book.py all --profile cpu

# Only the HTML, from the executed chapters already in book/ (no execution).
html: $(STAMP)
	$(PY) scripts/build_book.py html

model: $(STAMP)
	$(PY) -m facelib model build

preview: $(STAMP)
	$(PY) -m facelib model preview --out out/open_model_preview.png

# The training chapters are published in the cpu profile (minutes to tens of minutes), too slow to
# re-run under nbval in CI; they are executed in the ci profile into out/ci and nbval re-runs those
# copies: the cells marked NBVAL_CHECK_OUTPUT must give the same output twice (determinism).
NBVAL_CI := $(filter-out notebooks/01_face_model.ipynb,$(wildcard notebooks/[0-9][0-9]_*.ipynb))

# Unit tests, every notebook in the ci profile (papermill), nbval on the committed chapter 1, and the
# headless-Chromium check of the HTML book (built here from the committed chapters, no execution;
# --strict: a Sphinx warning, e.g. an unknown citation key, fails the test).
test: $(STAMP)
	$(PY) -m pytest -q -m "not browser"
	FACELIB_RESULTS=$$(mktemp -d) $(PY) -m pytest -q --nbval-lax book/01_face_model.ipynb -p no:cacheprovider
	rm -rf out/ci && FACELIB_RESULTS=$$(mktemp -d) $(PY) scripts/build_book.py execute --profile ci --out out/ci $(NBVAL_CI)
	FACELIB_RESULTS=$$(mktemp -d) $(PY) -m pytest -q --nbval-lax out/ci -p no:cacheprovider
	$(PY) scripts/build_book.py html --strict
	$(PY) -m pytest -q -m browser tests/test_browser.py

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not browser and not notebooks"

# The CPU-specific tests (renderer, kernels, GEMM, rasterizer, shading, closest points) once more as on an
# AVX2-only CPU: our LLVM kernels compiled for Haswell (FACELIB_CPU), Numba's code, PyTorch's kernels
# and OpenBLAS's for AVX2. .ci/run runs it after `make test`.
AVX2_TESTS := tests/test_render.py tests/test_kernels.py tests/test_gemm.py tests/test_raster.py \
	tests/test_camera_shading.py tests/test_now.py
AVX2_ENV := FACELIB_CPU=haswell NUMBA_CPU_NAME=haswell ATEN_CPU_CAPABILITY=avx2 OPENBLAS_CORETYPE=Haswell
test-avx2: $(STAMP)
	$(AVX2_ENV) $(PY) -c "from facelib import repro; print('cpu:', repro.cpu_summary()); print('kernels:', repro.kernels())"
	$(AVX2_ENV) $(PY) -m pytest -q -p no:cacheprovider $(AVX2_TESTS)

# The same CPU-specific tests on an emulated AVX2-only CPU: Debian's qemu-user (`apt-get install qemu-user`)
# runs Python on a Haswell whose CPUID has no AVX-512 and which stops the run with SIGILL at any AVX-512
# instruction, so nothing is forced: each library picks its kernels as on that CPU. (The -features are the
# system ones QEMU's TCG drops anyway, listed to keep it quiet; QEMU_CPU=EPYC-Rome is an AMD Zen 2.)
# Correctness only, about 20x slower than native; the open model is built natively first.
QEMU_CPU ?= Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm
EMULATED_TESTS ?= $(AVX2_TESTS)
test-emulated: $(STAMP)
	@command -v qemu-x86_64 > /dev/null || { echo "test-emulated needs qemu-x86_64 (Debian: apt-get install qemu-user)"; exit 1; }
	$(PY) -c "import facelib; facelib.load_model('open')"
	qemu-x86_64 -cpu $(QEMU_CPU) $(PY) -c "from facelib import repro; print('cpu:', repro.cpu_summary()); print('kernels:', repro.kernels())"
	qemu-x86_64 -cpu $(QEMU_CPU) $(PY) -m pytest -q -p no:cacheprovider $(EMULATED_TESTS)

clean:
	rm -rf $(VENV) out .pytest_cache book/_build
