"""The compiled kernels' cache entry is named after everything the build depends on: two venvs
or checkouts never share (and rebuild over) one entry, and the same install always finds its own."""

from __future__ import annotations

from dataclasses import replace

from services.worker.kernels import build_inputs, cache_name


def test_same_inputs_same_name() -> None:
    assert cache_name(build_inputs()) == cache_name(build_inputs())


def test_each_install_and_toolchain_gets_its_own_name() -> None:
    here = build_inputs()
    others = [
        replace(here, prefix="/home/someone/other-checkout/.venv"),
        replace(here, python="/home/someone/other-checkout/.venv/bin/python3.11"),
        replace(here, torch_dir="/home/someone/other-checkout/.venv/lib/python3.11/torch"),
        replace(here, ninja="/usr/bin/ninja" if here.ninja != "/usr/bin/ninja" else "/x/ninja"),
        replace(here, compiler="/usr/bin/clang++"),
        replace(here, source_sha256="0" * 64),
        replace(here, cpu_flags=here.cpu_flags + " avx512f"),
        replace(here, torch_version="0.0.0"),
    ]
    names = {cache_name(inputs) for inputs in others}
    assert cache_name(here) not in names
    assert len(names) == len(others)


def test_the_inputs_describe_this_install() -> None:
    import sys
    from pathlib import Path

    inputs = build_inputs()
    assert inputs.prefix == str(Path(sys.prefix).resolve())
    assert inputs.python == str(Path(sys.executable).resolve())
    assert len(inputs.source_sha256) == 64
