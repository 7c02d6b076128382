# Filigree developer tasks. `make test` is what CI runs (.ci/run).
#
#   make install     .venv with the locked dependencies and the project (editable)
#   make run ARGS=…  python -m pipeline.run ARGS
#   make test        the test suite
#   make bench-deps  optional benchmark peers (invisible-watermark), on top of install
#   make eval-photos   held-out evaluation photos (Debian packages) -> benchmarks/photos*/
#   make bench-quality quality benchmark on them; rewrites the results in docs/quality.md
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

.PHONY: install run test bench-deps eval-photos bench-quality seed-data lock clean

install: $(STAMP)

# The project goes in without dependencies (all came from the lock), built with the lock's
# setuptools rather than a freshly downloaded one.
# Quiet (no command echo; pip shows errors only, not progress, notices or warnings about the
# machine's own pip configuration): `make run` prints only Filigree's lines.
PIP_QUIET := -qq --disable-pip-version-check
$(STAMP):
	@echo "filigree: installing the locked environment into $(VENV) (first run only)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install $(PIP_QUIET) -r $(LOCK)
	@$(VENV)/bin/pip install $(PIP_QUIET) --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.stamp-*
	@touch $@

run: install
	@$(VENV)/bin/python -m pipeline.run $(ARGS)

test: install
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests

# invisible-watermark's metadata asks for opencv-python (the GUI build) and onnx, which it does
# not need: install what it does use (setup.py's `bench` extra, pinned here to the versions the
# published benchmark ran with), held to the lock's versions for everything shared (numpy,
# setuptools, ...), then it without dependencies. Additive only: nothing in the lock changes.
# `pip check` therefore reports opencv-python as missing afterwards. torch is only used by
# rivaGan for trivial tensor ops; pip takes the CPU build where a local index offers one.
BENCH_PEERS := opencv-python-headless==5.0.0.93 pywavelets==1.9.0 onnxruntime==1.32.0 torch==2.13.0
bench-deps: install
	$(VENV)/bin/pip install -c $(LOCK) $(BENCH_PEERS)
	$(VENV)/bin/pip install --no-deps invisible-watermark==0.2.0

# Held-out photos: palapeli-data and tuxpaint-data via apt-get download (see benchmarks/photos.md),
# plus the training folder's validation split. Git ignores both folders.
eval-photos:
	PYTHONPATH=. $(VENV)/bin/python benchmarks/eval_photos.py --out benchmarks/photos \
	  --validation-out benchmarks/photos-val

# Regenerates docs/quality.md's results (and docs/quality.png) with the bundled model: held-out
# photos against the peers, then the validation split (Filigree only). Output also in out/quality*/;
# finished photos are cached in out/quality/cache (keyed by model, key, seed, attacks), so an
# interrupted run resumes. rivaGan dominates the time (tens of seconds per megapixel and read on a
# busy 2-core machine): QUALITY_PEERS=dwtDct,dwtDctSvd,rivaGan@0/2 runs it on every other photo.
QUALITY_PEERS ?= dwtDct,dwtDctSvd,rivaGan
bench-quality: bench-deps eval-photos
	PYTHONPATH=. $(VENV)/bin/python benchmarks/quality.py --images benchmarks/photos \
	  --peers $(QUALITY_PEERS) --reframe --retime --out out/quality --docs docs/quality.md
	PYTHONPATH=. $(VENV)/bin/python benchmarks/quality.py --images benchmarks/photos-val \
	  --peers none --reframe --out out/quality-val --docs docs/quality.md --docs-block validation

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
