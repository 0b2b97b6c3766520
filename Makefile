# The two commands of the README:  `make demo` (install + start the app)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install system-deps train bench space-bundle space-check

demo: install system-deps
	$(PY) -m demo.app

# packages.txt's, chromium for tests/test_demo_browser.py (playwright drives Debian's build) and
# git-lfs for the Space bundle's test (tests/test_space.py).
test: install
	bash scripts/install_system_deps.sh chromium git-lfs
	$(PY) -m pytest

install: $(STAMP)

# Retrain every shipped tiny model from scratch (hours on a 2-core CPU; resumable;
# FROM=distil re-distils the shipped teacher only).
train: install
	PY=$(PY) FROM=$(FROM) bash scripts/train_tiny.sh

# Every figure in results/ from the shipped checkpoints (about an hour on a 2-core CPU; resumable).
bench: install
	PY=$(PY) bash scripts/benchmark_all.sh

# Debian packages the demo needs: packages.txt (ffmpeg), as a Hugging Face Space installs them.
system-deps:
	bash scripts/install_system_deps.sh

# What a Hugging Face Space receives: HEAD without history, binaries and files over 10 MB through
# git LFS (SPACE=<folder> to put it elsewhere; push that folder to the Space).
SPACE ?= /tmp/shotstream-space
space-bundle:
	bash scripts/space_bundle.sh $(SPACE)

# Not in CI (a fresh ~6 GB venv under /tmp, minutes): the bundle's blobs, then a clone of it
# installed from requirements.txt alone and started as a Space starts it; one shot is streamed.
space-check: space-bundle
	python3 scripts/space_check.py $(SPACE)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)
