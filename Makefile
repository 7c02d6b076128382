# Filigree developer tasks. `make test` is what CI runs (.ci/run).
#
#   make install     .venv with the locked dependencies and the project (editable)
#   make run ARGS=…  python -m pipeline.run ARGS
#   make test        the test suite
#   make bench-deps  optional benchmark peers (invisible-watermark), on top of install
#   make seed-data   Fashion-MNIST from Debian, for the training job's seed preset (needs root)
#   make lock        re-resolve requirements.lock from setup.py
#   make clean       remove the venv and build leftovers

PYTHON ?= python3
VENV := .venv
LOCK := requirements.lock

# The stamp's name carries a hash of everything that decides what gets installed, so editing the
# lock or setup.py re-runs the install, and nothing else does.
INPUTS_HASH := $(shell cat $(LOCK) setup.py pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.stamp-$(INPUTS_HASH)

.PHONY: install run test bench-deps seed-data lock clean

install: $(STAMP)

# The project goes in without dependencies (all came from the lock), built with the lock's
# setuptools rather than a freshly downloaded one.
$(STAMP):
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r $(LOCK)
	$(VENV)/bin/pip install --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.stamp-*
	touch $@

run: install
	$(VENV)/bin/python -m pipeline.run $(ARGS)

test: install
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests

# invisible-watermark's metadata asks for opencv-python (the GUI build) and onnx, which it does
# not need: install what it does use (the `bench` extra), held to the lock's versions, then it
# without dependencies. `pip check` therefore reports opencv-python as missing afterwards.
bench-deps: install
	$(VENV)/bin/pip install -c $(LOCK) --no-build-isolation -e ".[bench]"
	$(VENV)/bin/pip install --no-deps invisible-watermark==0.2.0

seed-data:
	apt-get update
	apt-get install -y dataset-fashion-mnist

# Resolves the runtime and test dependencies afresh in a throw-away venv and pins all of them.
lock:
	rm -rf /tmp/filigree-lockvenv
	$(PYTHON) -m venv /tmp/filigree-lockvenv
	/tmp/filigree-lockvenv/bin/pip install -U setuptools wheel
	/tmp/filigree-lockvenv/bin/pip install ".[test]"
	{ $(PYTHON) -c 'import sys; print("# python %d.%d" % sys.version_info[:2])'; \
	  echo "# platform linux x86_64 (manylinux wheels)"; \
	  echo "#"; \
	  echo "# The full resolved set for filigree's runtime dependencies plus the \`test\` extra (setup.py)."; \
	  echo "# Install with \`pip install -r requirements.lock\`, then the project itself with \`--no-deps\`."; \
	  echo "# Regenerate with \`make lock\` after changing a dependency in setup.py. The \`bench\` and \`gpu\`"; \
	  echo "# extras are not part of this set: they are installed with it as constraints (\`-c\`)."; \
	  /tmp/filigree-lockvenv/bin/pip freeze --all --exclude pip --exclude filigree; \
	} > $(LOCK)
	rm -rf /tmp/filigree-lockvenv

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
