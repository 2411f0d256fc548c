"""The flags a plan may set, derived from the real `serve` and `bench` argparse parsers (one
source of truth: a flag added to `serve` is at once usable in a plan)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import cache
from typing import Any

from deploy.flags import ON_OFF

# Set by the experiment itself for every variant: a plan may not set them.
SERVE_RESERVED = ("host", "port", "metrics", "metrics_port", "ray_address", "log_dir")
BENCH_RESERVED = (
    "address",
    "url",
    "out",
    "label",
    "no_plots",
    "no_live",
    "repeat",
)
SINGLE_POINT = ("rate", "concurrency")  # list-typed in bench (sweeps); one value in a plan


@dataclass(frozen=True, slots=True)
class Flag:
    """One command-line flag: its long name as a plan key (underscores), how to check a value."""

    key: str
    option: str  # "--max-num-seqs"
    is_bool: bool
    default: Any
    choices: tuple[str, ...] | None
    type_name: str
    action: argparse.Action
    negative: str | None = None  # `--no-x` of a `--x/--no-x` boolean

    def check(self, value: Any, where: str) -> Any:
        """The value converted as the CLI would; ValueError naming `where` and what is allowed."""
        if self.is_bool:
            if isinstance(value, str) and value.lower() in ON_OFF:  # the older `on|off` values
                return ON_OFF[value.lower()]
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {value!r} is not a boolean; allowed: true, false")
            return value
        if isinstance(value, (bool, list, dict)) or value is None:
            raise ValueError(f"{where}: {value!r} is not {_a(self.type_name)}{self._allowed()}")
        if self.choices and str(value) not in self.choices:
            raise ValueError(
                f"{where}: {value!r} is not allowed; allowed: {', '.join(self.choices)}"
            )
        convert = self.action.type or str
        try:
            converted: Any = convert(str(value))  # type: ignore[operator]
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"{where}: {value!r} is not {_a(self.type_name)}") from None
        if self.key in SINGLE_POINT:
            if len(converted) != 1:
                raise ValueError(f"{where}: one number (a plan measures one load point)")
            return converted[0]
        return converted

    def argv(self, value: Any) -> list[str]:
        if self.is_bool:
            if value:
                return [self.option]
            return [] if self.negative is None else [self.negative]
        return [self.option, _text(value)]

    def _allowed(self) -> str:
        return f"; allowed: {', '.join(self.choices)}" if self.choices else ""


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _type_name(action: argparse.Action) -> str:
    kind = getattr(action.type, "__name__", "string")
    return {
        "int": "integer",
        "float": "number",
        "str": "string",
        "_int_list": "integer",
        "_float_list": "number",
        "Path": "path",
    }.get(kind, kind)


def _flags_of(parser: argparse.ArgumentParser, reserved: tuple[str, ...]) -> dict[str, Flag]:
    flags: dict[str, Flag] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest == "help" or isinstance(action, argparse._SubParsersAction):
            continue
        key = action.dest
        if key in reserved:
            continue
        negative = next((o for o in longs[1:] if o == "--no-" + longs[0][2:]), None)
        is_bool = negative is not None or isinstance(action, argparse._StoreTrueAction)
        choices = tuple(str(c) for c in action.choices) if action.choices else None
        flags[key] = flag = Flag(
            key, longs[0], is_bool, action.default, choices, _type_name(action), action, negative
        )
        for alias in longs[1:]:  # a deprecated spelling is still a plan key
            if alias != negative:
                flags.setdefault(normalize_key(alias), flag)
    return flags


def _subparser(register: Any, name: str) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser()
    sub = root.add_subparsers()
    register(sub)
    return sub.choices[name]  # type: ignore[no-any-return]


@cache
def serve_parser() -> argparse.ArgumentParser:
    from deploy import commands

    return _subparser(commands.add_parser, "serve")


@cache
def bench_parser() -> argparse.ArgumentParser:
    from loadgen import cli

    return _subparser(cli.add_parser, "bench")


@cache
def serve_flags() -> dict[str, Flag]:
    return _flags_of(serve_parser(), SERVE_RESERVED)


@cache
def bench_flags() -> dict[str, Flag]:
    return _flags_of(bench_parser(), BENCH_RESERVED)


def normalize_key(key: Any) -> str:
    """A plan key by its long name, with dashes or underscores: `max-num-seqs` → `max_num_seqs`."""
    return str(key).strip().lstrip("-").replace("-", "_")


def resolve(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
    """Every flag of `parser` after parsing `argv` (defaults filled in), JSON-friendly."""
    namespace = parser.parse_args(argv)
    skip = {"func", "bench_command", "command", "summaries"}
    return {
        k: (str(v) if not isinstance(v, (int, float, str, bool, list, type(None))) else v)
        for k, v in vars(namespace).items()
        if k not in skip
    }
