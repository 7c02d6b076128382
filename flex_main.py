"""Dataflow Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

The launcher runs this file as a script with the template's parameters as `--name=value`
arguments; they go to the pipeline as `python -m pipeline.run ARGS` would take them, after two
adaptations that a launch request (a fixed JSON body, as Cloud Scheduler sends) needs:

- `{today}` and `{yesterday}` in any value become the UTC date at launch, YYYY-MM-DD, so that a
  scheduled launch can name a date-partitioned `--input`/`--output` (docs/dataflow.md);
- on/off options that take no value on the command line (`--skip_existing`) are accepted as
  `--name=true` / `--name=false`, the form in which the launcher passes every parameter.
"""

from __future__ import annotations

import datetime
import runpy
import sys

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def expand_dates(value: str, now: datetime.datetime) -> str:
    """`value` with {today} and {yesterday} replaced by UTC dates (YYYY-MM-DD)."""
    today = now.astimezone(datetime.timezone.utc).date()
    return (value.replace("{today}", today.isoformat())
                 .replace("{yesterday}", (today - datetime.timedelta(days=1)).isoformat()))


def _switches() -> set[str]:
    """Option strings of the pipeline's value-less on/off options (store_true)."""
    import argparse

    from pipeline.options import build_parser

    return {flag for action in build_parser()._actions if isinstance(action, argparse._StoreTrueAction)
            for flag in action.option_strings}


def launcher_args(argv: list[str], now: datetime.datetime | None = None) -> list[str]:
    """The launcher's arguments, adapted for `pipeline.run` (see the module docstring)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    switches = _switches()
    adapted = []
    for arg in argv:
        arg = expand_dates(arg, now)
        name, sep, value = arg.partition("=")
        if sep and name in switches:
            if value.strip().lower() in _TRUE:
                adapted.append(name)
            elif value.strip().lower() not in _FALSE:
                raise SystemExit(f"error: {name} takes true or false, not {value!r}")
            continue
        adapted.append(arg)
    return adapted


if __name__ == "__main__":
    sys.argv[1:] = launcher_args(sys.argv[1:])
    runpy.run_module("pipeline.run", run_name="__main__", alter_sys=True)
