"""The one typed configuration of a `hopscope bench` run, validated once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from loadgen.address import AddressError, parse_address

ARRIVALS = ("poisson", "gamma", "constant")
LENGTH_DISTS = ("fixed", "uniform", "normal")
DATASET_FORMATS = ("jsonl", "sharegpt")
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")


class BenchConfigError(ValueError):
    """An impossible or malformed option combination; raised before any load is sent."""


@dataclass(slots=True, frozen=True)
class LengthSpec:
    """A token-length distribution: `mean` with `spread` (uniform: ±spread, normal: std)."""

    mean: int
    spread: float = 0.0
    dist: str = "fixed"

    def __post_init__(self) -> None:
        if self.mean < 1:
            raise BenchConfigError(f"token lengths must be >= 1, got {self.mean}")
        if self.dist not in LENGTH_DISTS:
            raise BenchConfigError(f"length distribution must be one of {LENGTH_DISTS}")
        if self.spread < 0:
            raise BenchConfigError(f"a length spread must be >= 0, got {self.spread}")
        if self.dist == "fixed" and self.spread:
            raise BenchConfigError("a spread needs --len-dist uniform or normal")


@dataclass(slots=True, frozen=True)
class WorkloadConfig:
    """What each request asks for; `dataset` empty means synthetic token ids."""

    input_len: LengthSpec = field(default_factory=lambda: LengthSpec(128))
    output_len: LengthSpec = field(default_factory=lambda: LengthSpec(64))
    dataset: str = ""
    dataset_format: str = "jsonl"
    seed: int = 0
    ignore_eos: bool = True
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.dataset and self.dataset_format not in DATASET_FORMATS:
            raise BenchConfigError(f"--dataset-format must be one of {DATASET_FORMATS}")
        if self.temperature < 0:
            raise BenchConfigError("--temperature must be >= 0")


@dataclass(slots=True, frozen=True)
class LoadConfig:
    """How requests are sent for one point: open loop (`rate`) or closed loop (`concurrency`)."""

    rate: float | None = None
    concurrency: int | None = None
    max_concurrency: int | None = None  # cap on requests in flight under a rate
    arrival: str = "poisson"
    burstiness: float = 1.0  # gamma shape; 1 = Poisson, < 1 burstier, > 1 smoother
    num_requests: int | None = None
    duration_s: float | None = None
    warmup_requests: int = 0
    warmup_s: float = 0.0
    cooldown_requests: int = 0
    cooldown_s: float = 0.0
    num_workers: int = 1
    grace_s: float = 5.0  # how long Ctrl-C waits for requests in flight
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        _check_mode(self)
        _check_stop(self)
        if self.arrival not in ARRIVALS:
            raise BenchConfigError(f"--arrival must be one of {ARRIVALS}")
        if self.burstiness <= 0:
            raise BenchConfigError("--burstiness must be > 0")
        if self.arrival == "constant" and self.burstiness != 1.0:
            raise BenchConfigError("--burstiness applies to poisson/gamma arrivals, not constant")
        if self.num_workers < 1:
            raise BenchConfigError("--workers must be >= 1")
        if self.concurrency is not None and self.num_workers > self.concurrency:
            raise BenchConfigError("--workers cannot exceed --concurrency (idle workers)")
        if min(self.warmup_requests, self.cooldown_requests) < 0:
            raise BenchConfigError("warm-up/cool-down counts must be >= 0")
        if min(self.warmup_s, self.cooldown_s, self.grace_s) < 0:
            raise BenchConfigError("warm-up/cool-down/grace seconds must be >= 0")

    @property
    def is_open_loop(self) -> bool:
        return self.rate is not None

    @property
    def gamma_shape(self) -> float:
        return 1.0 if self.arrival == "poisson" else self.burstiness


def _check_mode(load: LoadConfig) -> None:
    if (load.rate is None) == (load.concurrency is None):
        raise BenchConfigError("choose exactly one of --rate (open loop) or --concurrency")
    if load.rate is not None and load.rate <= 0:
        raise BenchConfigError(f"--rate must be > 0, got {load.rate}")
    if load.concurrency is not None and load.concurrency < 1:
        raise BenchConfigError(f"--concurrency must be >= 1, got {load.concurrency}")
    if load.max_concurrency is not None:
        if load.rate is None:
            raise BenchConfigError("--max-concurrency caps an open loop; use it with --rate")
        if load.max_concurrency < 1:
            raise BenchConfigError("--max-concurrency must be >= 1")


def _check_stop(load: LoadConfig) -> None:
    if (load.num_requests is None) == (load.duration_s is None):
        raise BenchConfigError("give exactly one of --num-requests or --duration-s")
    if load.num_requests is not None:
        if load.num_requests < 1:
            raise BenchConfigError("--num-requests must be >= 1")
        if load.warmup_requests + load.cooldown_requests >= load.num_requests:
            raise BenchConfigError(
                "warm-up + cool-down requests leave nothing to measure; raise --num-requests"
            )
    if load.duration_s is not None:
        if load.duration_s <= 0:
            raise BenchConfigError("--duration-s must be > 0")
        if load.warmup_s + load.cooldown_s >= load.duration_s:
            raise BenchConfigError("warm-up + cool-down seconds leave nothing to measure")


@dataclass(slots=True, frozen=True)
class SloConfig:
    """Per-request objectives; None means no objective on that metric."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, text: str) -> SloConfig:
        """Parse `ttft_ms=200,tpot_ms=50,e2e_ms=5000`."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = item.partition("=")
            if not sep or key not in SLO_KEYS:
                raise BenchConfigError(f"--slo item {item!r}: expected one of {SLO_KEYS}=NUMBER")
            try:
                values[key] = float(raw)
            except ValueError:
                raise BenchConfigError(f"--slo {key}: {raw!r} is not a number") from None
            if values[key] <= 0:
                raise BenchConfigError(f"--slo {key} must be > 0")
        return cls(**values)


@dataclass(slots=True, frozen=True)
class BenchConfig:
    """Everything one measured point needs; written whole into the summary's `config`."""

    address: str
    load: LoadConfig
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    label: str = ""
    url: str = ""  # an OpenAI-compatible HTTP front door instead of the gRPC `address`
    # completions | chat: each prompt as one user message through the model's chat template
    # (HTTP: /v1/chat/completions; gRPC: Generate's `messages`)
    endpoint: str = "completions"
    tls_ca: str = ""  # a CA certificate: TLS to a front door served with --tls-dir

    def __post_init__(self) -> None:
        if self.endpoint not in ("completions", "chat"):
            raise BenchConfigError(f"--endpoint must be completions or chat, got {self.endpoint!r}")
        if self.endpoint == "chat" and not self.workload.dataset:
            raise BenchConfigError(
                "--chat needs text prompts (a --dataset); synthetic prompts are token ids"
            )
        if self.url:
            if not self.url.startswith(("http://", "https://")):
                raise BenchConfigError(f"--url must be http://HOST:PORT, got {self.url!r}")
            return
        try:
            resolved = parse_address(self.address)
        except AddressError as exc:
            raise BenchConfigError(f"--address: {exc}") from None
        if resolved != self.address:
            raise BenchConfigError(f"--address {self.address!r}: resolve it first ({resolved})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
