"""Every `hopscope …` command that README.md and docs/ show in a code block parses: a renamed or
removed flag, or a subcommand that no longer exists, fails here before a reader hits it.

Parsing is what is checked, not running: the commands need servers, clusters and models. The
commands that do run end to end (the Quick start, `experiment quick`, `next`, `generate --chat`)
have integration tests of their own."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from deploy.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
_SPLIT = re.compile(r"&&|\|\||;|\$\(|\)\"|\||`")  # the pieces of a shell line that are commands
_OPTIONAL = re.compile(r"\[(--?[^\[\]]*)\]")  # `[--link-delay-ms 0.5]`: shown as optional


def documented_commands() -> list[tuple[str, str]]:
    """(page:line, command) for each `hopscope` command in a shell code block."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in _FENCE.finditer(text):
            if block.group(1) not in ("", "bash", "sh", "shell", "console"):
                continue
            start = text.count("\n", 0, block.start(2)) + 1
            joined = block.group(2).replace("\\\n", " ")
            for offset, line in enumerate(joined.splitlines()):
                for piece in _SPLIT.split(line.split(" #")[0]):
                    piece = re.sub(r"^\s*(\.venv/bin/)?", "", piece)
                    if piece.startswith("hopscope "):
                        where = f"{page.relative_to(ROOT)}:{start + offset}"
                        found.append((where, _OPTIONAL.sub(r"\1", piece).strip()))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands_to_check() -> None:
    assert len(COMMANDS) >= 30, COMMANDS  # the extraction itself still finds the pages' commands
    assert any(c.startswith("hopscope experiment next") for _, c in COMMANDS)


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_parses(where: str, command: str) -> None:
    argv = shlex.split(command)[1:]
    subcommand = next(arg for arg in argv if not arg.startswith("-"))
    try:
        build_parser(subcommand).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `{command}` does not parse (exit {exc.code})")
