# One image for Dataflow: the SDK container that workers run (custom container) and the Flex
# Template launcher image.
#
#   docker build -t IMAGE .                              CPU
#   docker build --build-arg VARIANT=gpu -t IMAGE .      adds TensorFlow's CUDA libraries
#
# PYTHON_VERSION, BEAM_VERSION and TF_VERSION must equal what requirements.lock was made for and
# pins (tests/test_packaging.py checks): a launcher, container and workers that disagree on the
# Beam version are the most common Dataflow failure.
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
ARG BASE=python:${PYTHON_VERSION}-slim
# The launcher image is published per Python version, with the dot dropped (3.11 -> python311).
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base

# Sources of two binaries: Beam's SDK harness entrypoint and Google's Flex Template launcher.
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk
FROM ${LAUNCHER_IMAGE} AS template_launcher

FROM ${BASE}
ARG TF_VERSION=2.21.0
# cpu: the lock as it is. gpu: also tensorflow[and-cuda] (CUDA and cuDNN as pip wheels); the
# NVIDIA driver comes from the Dataflow GPU host.
ARG VARIANT=cpu

COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
COPY --from=template_launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

ARG WORKDIR=/template
WORKDIR ${WORKDIR}

# Dependencies first, in their own layers, so that code changes do not reinstall them.
COPY requirements.lock .
RUN pip install --no-cache-dir -r requirements.lock
RUN if [ "${VARIANT}" = gpu ]; then \
      pip install --no-cache-dir -c requirements.lock "tensorflow[and-cuda]==${TF_VERSION}"; \
    elif [ "${VARIANT}" != cpu ]; then \
      echo "VARIANT must be cpu or gpu, not ${VARIANT}" >&2; exit 1; \
    fi

# The project itself: not editable (workers import it from site-packages, whatever their working
# directory), without dependencies (all came from the lock), built with the lock's setuptools.
COPY pyproject.toml setup.py flex_main.py ./
COPY filigree filigree
COPY pipeline pipeline
COPY training training
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && pip check

# Flex Template: the launcher runs this file with the template's parameters. No
# FLEX_TEMPLATE_PYTHON_SETUP_FILE / _REQUIREMENTS_FILE: workers run this same image
# (--sdk_container_image), where the project and every dependency are already installed, so
# nothing is staged for them to install (a staged sdist would make every worker pip-build the
# project at start-up, fetching setuptools from PyPI). The launcher and the workers therefore run
# the same code by construction; tests/test_dataflow.py checks the job stages no packages.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE="${WORKDIR}/flex_main.py"

# Beam's boot binary, so that the image also serves as the SDK (worker) container image.
ENTRYPOINT ["/opt/apache/beam/boot"]
