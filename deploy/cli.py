"""The `hopscope` command. Each package contributes its own subcommands through
`add_parser(subparsers)`; this module only assembles them (imports point down).

A command imports only the module that registers it: `hopscope bench` (a load client) never
imports torch or the services, and `--help` stays cheap. Every `--help` shows the defaults.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

ENGINE_COMMANDS = ("serve", "generate")  # they run a model here or in children started here

# command -> the module whose `add_parser(subparsers)` registers it
COMMAND_MODULES: dict[str, str] = {
    "serve": "deploy.commands",
    "generate": "deploy.commands",
    "describe": "deploy.describe_cli",
    "cluster": "deploy.cluster_cli",
    "certs": "deploy.certs",
    "bench": "loadgen.cli",
    "traces": "tracing.cli",
    "experiment": "experiment.cli",
    "diagnose": "diagnose.cli",
    "profile": "diagnose.cli",
}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every option with a default worth showing; a help text that
    already names its default, or an unset/off default (None, False, ""), is left as it is."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and not _is_unset(action.default):
            action = copy.copy(action)  # an option without help still shows its default
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or _is_unset(action.default):
            return action.help
        return super()._get_help_string(action)


def _is_unset(default: object) -> bool:
    if default is None or default is False or default == argparse.SUPPRESS:
        return True
    return isinstance(default, str | list) and not default


class HopscopeParser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults; subparsers inherit the class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command (importing only its module), or of all commands."""
    parser = HopscopeParser(
        prog="hopscope",
        description="An LLM serving pipeline that measures what every hop costs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in COMMAND_MODULES:
        modules = [COMMAND_MODULES[command]]
    else:
        modules = list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in modules:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in ENGINE_COMMANDS:  # before anything imports torch; its services inherit it
        from services.common.threads import openmp_env_defaults

        os.environ.update(openmp_env_defaults(os.environ))
    args = build_parser(command).parse_args(argv)
    if command in ENGINE_COMMANDS:  # torch is still not loaded: an inproc engine runs here
        from services.common.threads import apply_wait_policy

        apply_wait_policy(getattr(args, "engine_wait_policy", None) or "auto")
    # every subcommand sets `func(args) -> int` with set_defaults
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
