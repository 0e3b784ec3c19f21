# mscg_lightning: `make demo` compares SASRec, TIGER, MSCGRec and ablations on the embedded
# default (MovieLens-100K, configs/compare/ml100k.yaml), `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (from local disk on the project's machines). On a CUDA machine:
#   make install TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"   (see README)
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install install-timm test test-slow test-all lint format demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, so that no later requirement pulls a CUDA build on a CPU machine
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# timm backbones (optional). torchvision must be the build of the torch already installed; on a
# CPU machine the PyPI build does not import beside CPU torch, so take it from the PyTorch CPU
# index: make install-timm TORCHVISION="torchvision==0.28.0 --index-url <PyTorch CPU index>"
TORCHVISION ?= torchvision==0.28.0
install-timm: install
	$(PY) -m pip install --quiet $(TORCHVISION)
	$(PY) -m pip install --quiet "timm>=1.0.16"

# pytest exits 5 when it collects no test: report it instead of failing.
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-slow: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/mscg fit --config configs/compare/ml100k.yaml

clean:
	rm -rf runs .pytest_cache
