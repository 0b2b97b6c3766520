# The two commands of the README:  `make demo` (install + start the app)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install system-deps train bench

demo: install
	$(PY) -m demo.app

test: install
	$(PY) -m pytest

install: $(STAMP)

# Retrain every shipped tiny model from scratch (hours on a 2-core CPU; resumable;
# FROM=distil re-distils the shipped teacher only).
train: install
	PY=$(PY) FROM=$(FROM) bash scripts/train_tiny.sh

# Every figure in results/ from the shipped checkpoints (about an hour on a 2-core CPU; resumable).
bench: install
	PY=$(PY) bash scripts/benchmark_all.sh

# Debian packages the tests and the demo use (ffmpeg for video, chromium for the browser test).
system-deps:
	bash scripts/install_system_deps.sh

$(STAMP): pyproject.toml
	$(MAKE) system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)
