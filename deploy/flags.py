"""The `hopscope serve` / `generate` flags, their --help and the flag tables of docs/cli.md, all derived
from the configuration tree (services/config.py): a setting is defined there once.

Conventions: a unit in the name (`--timeout-s`, `--kv-cache-mb`), booleans as `--x/--no-x`
(those that once took `on|off` still take it); an older spelling stays a deprecated alias.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

from services.config import SECTIONS, HopscopeConfig, Setting, flag_of, settings_of

ON_OFF = {"on": True, "off": False, "true": True, "false": False}
TABLE_BEGIN = (
    "<!-- flags:{command} (generated from services/config.py: python -m deploy.flags --write) -->"
)
TABLE_END = "<!-- /flags:{command} -->"
CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"  # the command reference


class OnOffAction(argparse.Action):
    """`--x` / `--no-x`, and the older `--x on|off` (deprecated: --help says so)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        positive = option_strings[0]
        names = [*option_strings, "--no-" + positive[2:]]
        super().__init__(names, dest, nargs="?", metavar="on|off", **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if option_string and option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        if values is None:
            setattr(namespace, self.dest, True)
            return
        if str(values).lower() not in ON_OFF:
            parser.error(f"{option_string}: {values!r} is not on or off")
        # the older spelling: still works, quietly (its stderr is a contract); --help says so
        setattr(namespace, self.dest, ON_OFF[str(values).lower()])


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _value_type(f: dataclasses.Field[Any]) -> type:
    text = str(f.type).replace(" | None", "")
    return {"int": int, "float": float, "str": str, "bool": bool}.get(text, str)


def _help(f: dataclasses.Field[Any], s: Setting, default: Any, tracked: bool) -> str:
    text = s.help
    if s.unit:
        text += f" [{s.unit}]"
    if tracked and not _unset(default) and "default" not in text.lower():
        text += f" (default: {default})"
    if s.aliases:
        text += f"; deprecated spelling: {', '.join(s.aliases)}"
    if s.on_off:
        text += f"; the older `{flag_of(f, s)} on|off` still works (deprecated)"
    return text.replace("%", "%%")


def _unset(value: Any) -> bool:
    return value is None or value is False or value == "" or value == []


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Every setting of the tree that `command` takes, as a flag. For `generate`, the engine
    flags (those it shares with `serve`) default to None: `given_engine_flags` can then say
    which ones a user gave, and the tree's default applies to the others."""
    for section, cls in SECTIONS.items():
        for f, s in settings_of(cls):
            if s.flag is None or command not in s.commands:
                continue
            default = default_of(f)
            tracked = command == "generate" and section != "client"
            kwargs: dict[str, Any] = {
                "dest": s.dest or f.name,
                "default": None if tracked else default,
                "help": _help(f, s, default, tracked),
            }
            names = [flag_of(f, s), *s.aliases]
            kind = _value_type(f)
            if s.on_off:
                parser.add_argument(*names, action=OnOffAction, **kwargs)
            elif kind is bool and f.name.startswith("no_"):
                parser.add_argument(*names, action="store_true", **kwargs)
            elif kind is bool:
                parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
            elif str(f.type).startswith("list"):
                parser.add_argument(*names, action="append", **kwargs)
            else:
                if s.choices:
                    kwargs["choices"] = list(s.choices)
                parser.add_argument(*names, type=kind, metavar=s.metavar, **kwargs)


def given_engine_flags(args: argparse.Namespace) -> list[str]:
    """The engine flags `generate` was given (they default to None there)."""
    given = []
    for section, cls in SECTIONS.items():
        for f, s in settings_of(cls):
            if section == "client" or s.flag is None or "generate" not in s.commands:
                continue
            if getattr(args, s.dest or f.name, None) is not None:
                given.append(flag_of(f, s))
    return given


def config_from_args(args: argparse.Namespace) -> HopscopeConfig:
    """The tree from parsed flags: a flag not given (None where the flag tracks that, or a
    command that lacks it) keeps the tree's default. ValueError names the flag at fault."""
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = {}
        for f, s in settings_of(cls):
            value = getattr(args, s.dest or f.name, None)
            if value is not None and s.flag is not None:
                values[f.name] = value
        sections[section] = cls(**values)
    return HopscopeConfig(**sections)


# ---------------------------------------------------------------------------- README tables
def _default_text(f: dataclasses.Field[Any], s: Setting) -> str:
    if s.shown_default:
        return s.shown_default
    default = default_of(f)
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None or default == "" or default == []:
        return "none"
    if isinstance(default, str):
        return f"`{default}`"
    return f"{default:g}" if isinstance(default, float) else str(default)


def readme_table(command: str) -> str:
    """The Markdown table of `command`'s own flags (flag, default, unit, meaning): generate's
    leaves out the engine flags it shares with serve (serve's table has them)."""
    rows = ["| flag | default | unit | meaning |", "| --- | --- | --- | --- |"]
    for cls in SECTIONS.values():
        for f, s in settings_of(cls):
            if s.flag is None or command not in s.commands:
                continue
            if command != "serve" and "serve" in s.commands:
                continue
            names = f"`{flag_of(f, s)}`"
            if s.metavar:
                names = f"`{flag_of(f, s)} {s.metavar}`"
            if s.on_off or (_value_type(f) is bool and not f.name.startswith("no_")):
                names += f", `--no-{flag_of(f, s)[2:]}`"
            meaning = _relative_to_docs((s.doc or s.help).replace("|", "\\|"))
            if s.choices and not s.doc:
                meaning += " (" + ", ".join(f"`{c}`" for c in s.choices) + ")"
            if s.aliases:
                meaning += " (deprecated spelling: " + ", ".join(f"`{a}`" for a in s.aliases) + ")"
            rows.append(f"| {names} | {_default_text(f, s)} | {s.unit} | {meaning} |")
    return "\n".join(rows)


def _relative_to_docs(text: str) -> str:
    """Help texts link from the repository root; the table lives in docs/."""
    text = text.replace("](docs/", "](").replace("](#security)", "](security.md)")
    return text.replace("](benchmarks/", "](../benchmarks/")


def _block(command: str) -> re.Pattern[str]:
    begin, end = TABLE_BEGIN.format(command=command), TABLE_END.format(command=command)
    return re.compile(re.escape(begin) + r"\n(?:.*?\n)?" + re.escape(end), re.DOTALL)


def readme_with_tables(text: str) -> str:
    """`text` (the README) with every generated table replaced by what the tree says now."""
    for command in ("serve", "generate"):
        begin, end = TABLE_BEGIN.format(command=command), TABLE_END.format(command=command)
        block = f"{begin}\n{readme_table(command)}\n{end}"
        text, count = _block(command).subn(block.replace("\\", "\\\\"), text)
        if count != 1:
            raise ValueError(
                f"docs/cli.md: expected one {begin!r} ... {end!r} block, found {count}"
            )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.flags")
    parser.add_argument("--write", action="store_true", help="rewrite docs/cli.md's flag tables")
    args = parser.parse_args(argv)
    text = CLI_DOC.read_text()
    new = readme_with_tables(text)
    if args.write:
        CLI_DOC.write_text(new)
        return 0
    print("docs/cli.md is up to date" if new == text else "docs/cli.md differs: run with --write")
    return 0 if new == text else 1


if __name__ == "__main__":
    raise SystemExit(main())
