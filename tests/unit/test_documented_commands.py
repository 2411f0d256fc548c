"""Every `hopscope …` command that README.md and docs/ show in a code block parses, and the
`--help` of each (sub)command they use prints its usage: a renamed or removed flag, or a
subcommand that no longer exists, fails here before a reader hits it.

The ones that read a run's files (`diagnose`, `traces summarize|show|export`, `bench compare`,
`experiment compare|report`, ...) also run, on a small run of their own:
tests/integration/test_documented_commands_run.py. The rest need servers, clusters and models; the
ones that run end to end (the Quick start, `experiment quick`, `next`, `generate --chat`) have
integration tests of their own."""

from __future__ import annotations

import contextlib
import io
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


def command_path(argv: list[str]) -> list[str]:
    """The (sub)command words of a command line: `traces summarize`, `bench compare`, `serve`."""
    words = [a for a in argv[:2] if not a.startswith("-")]
    if len(words) == 2 and _usage(words).startswith(f"usage: hopscope {' '.join(words)} "):
        return words  # the second word is a subcommand, not an argument (`diagnose RUN`)
    return words[:1]


def _usage(words: list[str]) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        build_parser(words[0]).parse_args([*words, "--help"])
    return printed.getvalue()


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


HELP_PATHS = sorted({" ".join(command_path(shlex.split(c)[1:])) for _, c in COMMANDS})


@pytest.mark.parametrize("path", HELP_PATHS)
def test_the_help_of_a_documented_command_prints_its_usage(
    path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    words = path.split()
    with pytest.raises(SystemExit) as exited:
        build_parser(words[0]).parse_args([*words, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: hopscope {path} ")
