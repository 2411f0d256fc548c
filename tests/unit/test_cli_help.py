"""What `hopscope ... --help` shows, and what a command costs to start."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from deploy import cli


def _subparsers(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _subparsers(child, f"{path} {name}")


_FULLY_DOCUMENTED = ("bench", "describe", "traces")  # every option has a help text


def _entry(help_text: str, flag: str) -> str:
    """The lines of one option in a help text (its flag line up to the next option)."""
    match = re.search(
        rf"^  (-\w, )?{re.escape(flag)}\b.*?(?=^  -|\Z)", help_text, re.MULTILINE | re.DOTALL
    )
    assert match, flag
    return match.group(0)


def _shows_no_default(default: object) -> bool:
    return default is None or default is False or isinstance(default, str | list) and not default


def test_every_option_of_every_command_has_help_showing_its_default() -> None:
    problems = []
    for path, parser in _subparsers(cli.build_parser(), "hopscope"):
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.default == argparse.SUPPRESS:
                continue
            flag = next(o for o in action.option_strings if o.startswith("--"))
            if not action.help and path.split()[1] in _FULLY_DOCUMENTED:
                problems.append(f"{path} {flag}: no help")
            elif not _shows_no_default(action.default) and "default" not in _entry(text, flag):
                problems.append(f"{path} {flag}: default {action.default!r} not shown")
    assert not problems, "\n".join(problems)


# The load client may use the one channel factory (grpc and the standard library only) and the
# settings tree (pure data: DEFAULT_PORT), nothing else of the services: no servicer, no model
# code, no torch.
_CLIENT_SIDE = ("services", "services.config", "services.common", "services.common.channels")
_CLIENT_SIDE += ("services.common.grpc_options", "services.common.tls")
_CLIENT_SIDE += ("services.common.procfs",)  # stdlib-only /proc readers: bench warns of a busy host
_NO_HEAVY_IMPORTS = (
    "import sys\n"
    f"allowed = {_CLIENT_SIDE!r}\n"
    "heavy = sorted(m for m in sys.modules if m == 'torch'"
    " or (m.startswith('services') and m not in allowed))\n"
    "assert not heavy, heavy\n"
)
_NO_TORCH = "import sys\nassert 'torch' not in sys.modules\n"


@pytest.mark.parametrize(
    ("build", "check"),
    [
        ("deploy.cli.build_parser('bench').format_help()", _NO_HEAVY_IMPORTS),
        ("deploy.cli.build_parser().format_help()", _NO_TORCH),  # `hopscope --help`
    ],
)
def test_building_the_parser_does_not_import_torch(build: str, check: str) -> None:
    code = f"import deploy.cli\n{build}\n{check}"
    result = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_bench_itself_does_not_import_torch_or_the_services() -> None:
    """A load client runs where torch is absent: a whole (failing) bench run imports neither."""
    code = (
        "import deploy.cli\n"
        "rc = deploy.cli.main(['bench', '--address', '127.0.0.1:1', '--rate', '1',"
        " '--num-requests', '1', '--connect-timeout-s', '0.2', '--no-live'])\n"
        "assert rc != 0\n" + _NO_HEAVY_IMPORTS
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "no server answers at 127.0.0.1:1" in result.stderr


@pytest.mark.parametrize(
    ("command", "new", "old", "value"),
    [
        (["profile", "--address", "a", "--out", "p"], "--duration-s", "--seconds", "3"),
        (["profile", "--address", "a", "--out", "p"], "--sample-rate", "--rate", "50"),
        (["diagnose", "run.json"], "--link-delay-ms", "--delay-ms-list", "1,3"),
        (["cluster", "up"], "--link-delay-ms", "--delay-ms", "0.5"),
    ],
)
def test_a_renamed_flag_keeps_its_old_name_as_a_deprecated_alias(
    command: list[str], new: str, old: str, value: str
) -> None:
    """Issue 33: one name per meaning (`bench --rate` is requests/s; profile's is samples/s;
    the link delay is `link_delay_ms` as the experiment factor); the old spellings still parse,
    to the same value, and --help says they are deprecated."""
    parser = cli.build_parser(command[0])
    parsed_new = vars(parser.parse_args([*command, new, value]))
    assert parsed_new == vars(parser.parse_args([*command, old, value]))
    sub = parser._subparsers._group_actions[0].choices[command[0]]  # type: ignore[union-attr]
    if command[0] == "cluster":
        sub = sub._subparsers._group_actions[0].choices["up"]  # type: ignore[union-attr]
    assert f"deprecated spelling: {old}" in " ".join(sub.format_help().split())
