"""Flag parsing: impossible combinations are refused before anything is sent."""

from __future__ import annotations

import argparse

import pytest

from loadgen import cli
from loadgen.config import BenchConfigError, SloConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_rate_sweep_gives_one_point_per_rate() -> None:
    configs, tags = cli.build_points(parse("--address", "h:1", "--rate", "1,2.5,4"))
    assert [c.load.rate for c in configs] == [1.0, 2.5, 4.0]
    assert tags == ["rate-1", "rate-2.5", "rate-4"]
    assert all(c.load.num_requests == cli.DEFAULT_NUM_REQUESTS for c in configs)


def test_burstiness_selects_gamma_arrivals() -> None:
    (config,), _ = cli.build_points(parse("--address", "h:1", "--rate", "5", "--burstiness", "0.5"))
    assert (config.load.arrival, config.load.gamma_shape) == ("gamma", 0.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "5", "--concurrency", "2"], "not both"),
        ([], "choose --rate"),
        (["--concurrency", "2", "--max-concurrency", "3"], "use it with --rate"),
        (["--rate", "5", "--num-requests", "10", "--duration-s", "5"], "exactly one of"),
        (["--rate", "5", "--num-requests", "10", "--warmup-requests", "10"], "nothing to measure"),
        (["--rate", "5", "--arrival", "constant", "--burstiness", "2"], "gamma"),
        (["--concurrency", "2", "--workers", "3"], "cannot exceed"),
        (["--rate", "0"], "must be > 0"),
        (["--rate", "5", "--len-dist", "fixed", "--input-len-spread", "3"], "spread"),
    ],
)
def test_impossible_combinations_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(BenchConfigError, match=message):
        cli.build_points(parse("--address", "h:1", *argv))


def test_address_is_required_and_checked() -> None:
    with pytest.raises(BenchConfigError, match="--address"):
        cli.build_points(parse("--rate", "1"))
    with pytest.raises(BenchConfigError, match="port must be a number"):
        cli.build_points(parse("--address", "h:port", "--rate", "1"))


def test_an_address_without_a_port_dials_50051_not_443() -> None:
    points, _ = cli.build_points(parse("--address", "localhost", "--rate", "1"))
    assert points[0].address == "localhost:50051"


def test_slo_parsing() -> None:
    assert SloConfig.parse("ttft_ms=200, e2e_ms=5000") == SloConfig(200.0, None, 5000.0)
    with pytest.raises(BenchConfigError, match="ttft"):
        SloConfig.parse("ttft=3")
    with pytest.raises(BenchConfigError, match="not a number"):
        SloConfig.parse("tpot_ms=fast")


def test_bad_flags_exit_non_zero_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--address", "127.0.0.1:1", "--rate", "5", "--concurrency", "2")
    assert args.func(args) == cli.EXIT_BAD_INPUT
    assert "not both" in capsys.readouterr().err


def test_client_processes_default_to_one_per_eight_cores() -> None:
    """`bench --workers` unset: one client process on a small machine (the cores are for what
    it measures), more on a large one, never more than the concurrency."""
    from loadgen.cli import auto_workers

    assert [auto_workers(n) for n in (1, 2, 8, 16, 64, 256)] == [1, 1, 1, 2, 8, 8]
    assert auto_workers(64, concurrency=4) == 4
    assert auto_workers(64, concurrency=0) == 8  # open loop: no concurrency to cap it


@pytest.mark.parametrize(
    ("argv", "ignore_eos"),
    [([], True), (["--no-ignore-eos"], False), (["--ignore-eos"], True)],
)
def test_ignore_eos_is_an_x_no_x_boolean_and_the_old_spelling_works(
    argv: list[str], ignore_eos: bool
) -> None:
    """Issue 20, defect 9: `bench --no-ignore-eos` (the old flag) still works, beside
    `--ignore-eos`, the `--x/--no-x` convention `generate` uses."""
    (config,), _ = cli.build_points(parse("--address", "h:1", "--concurrency", "1", *argv))
    assert config.workload.ignore_eos is ignore_eos
