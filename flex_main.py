"""Dataflow Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

The launcher runs this file as a script with the template's parameters as arguments; it hands
them to the pipeline exactly as `python -m pipeline.run ARGS` would.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("pipeline.run", run_name="__main__", alter_sys=True)
