"""Experiment plans: a baseline deployment, a workload, factors; read, validated, expanded into
variants. Every refusal happens here, before anything starts, and names the key and what is
allowed (the allowed flags come from the real `serve` / `bench` parsers: experiment/flags.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from experiment.background import BackgroundLoad
from experiment.flags import Flag, bench_flags, normalize_key, serve_flags
from experiment.stats import COMPARED

# Cluster factors: settings of the emulated link between nodes (`hopscope cluster up` flags).
CLUSTER_FACTORS = {"link_delay_ms": "--link-delay-ms", "link_rate_mbit": "--rate-mbit"}
# Background load (experiment/background.py): busy processes beside the deployment for the length
# of the workload. Workload settings of a plan (`workload:`, `workloads:`) and factors, but not
# bench flags: the round starts them itself, so their CPU counts as outside CPU, not the client's.
BACKGROUND_DEFAULTS: dict[str, Any] = {"background_procs": 0, "background_duty": 1.0}
BACKGROUND_FACTORS = tuple(BACKGROUND_DEFAULTS)
TOP_KEYS = (
    "name",
    "description",
    "baseline",
    "workload",
    "workloads",
    "target",
    "factors",
    "repeats",
    "warmup",
    "timeout_s",
    "prediction",
)
DEFAULT_WARMUP_REQUESTS = 4
DEFAULT_TIMEOUT_S = 900.0  # one variant-round's workload; running out of it is a failure
BASELINE = "baseline"


class PlanError(ValueError):
    """The plan cannot run; one line per problem, each naming the key and the allowed values."""


# ---------------------------------------------------------------------------- external targets
TARGET_KEYS = ("url", "start", "stop", "ready_path", "ready_timeout_s", "metrics_path")
DEFAULT_TARGET_URL = "http://127.0.0.1:{port}"
DEFAULT_READY_TIMEOUT_S = 300.0
SERVER_FLAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class Target:
    """An OpenAI-compatible server measured instead of `hopscope serve` (a plan's `target:`).

    `start` is a shell command line (run by /bin/sh in its own process group through
    deploy/lifecycle.py, one fresh server per variant-round) with placeholders: `{port}` a free
    port chosen per round, `{flags}` the variant's server flags (appended at the end when
    absent), `{python}` this interpreter, `{otlp_endpoint}` the round's OTLP/gRPC collector
    (`http://127.0.0.1:PORT`, for vLLM's `--otlp-traces-endpoint`: its spans then decompose
    the server's side, tracing/vllm.py). `url` (may hold `{port}`) is where it answers;
    without `start` the server must already be up there, and it is measured as it is (no
    factors). `stop` is a shell command run before the process group gets SIGTERM."""

    url: str
    start: str | None = None
    stop: str | None = None
    ready_path: str = "/v1/models"
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    metrics_path: str = "/metrics"

    def command(
        self, flags: dict[str, Any], port: int | str, otlp_endpoint: str = "{otlp_endpoint}"
    ) -> str:
        """The start command line for a variant with `flags`, on `port`."""
        import shlex
        import sys

        assert self.start is not None
        argv = shlex.join(external_argv(flags))
        line = self.start.replace("{port}", str(port)).replace("{python}", sys.executable)
        line = line.replace("{otlp_endpoint}", otlp_endpoint)
        if "{flags}" in line:
            return line.replace("{flags}", argv)
        return f"{line} {argv}".rstrip()

    def url_for(self, port: int | str) -> str:
        return self.url.replace("{port}", str(port)).rstrip("/")

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "start": self.start,
            "stop": self.stop,
            "ready_path": self.ready_path,
            "ready_timeout_s": self.ready_timeout_s,
            "metrics_path": self.metrics_path,
        }


def external_argv(flags: dict[str, Any]) -> list[str]:
    """An external server's flags as its command line: `max_num_seqs: 8` -> `--max-num-seqs 8`;
    true -> `--flag`, false -> `--no-flag`."""
    argv: list[str] = []
    for key, value in flags.items():
        option = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(option if value else "--no-" + option[2:])
        else:
            argv += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def _target(raw: Any, errors: list[str]) -> Target | None:
    if isinstance(raw, str):
        raw = {"url": raw}
    if not isinstance(raw, dict):
        errors.append("target: expected a URL or a mapping with " + ", ".join(TARGET_KEYS))
        return None
    for key in raw:
        if key not in TARGET_KEYS:
            errors.append(f"target.{key}: unknown target key; allowed: {', '.join(TARGET_KEYS)}")
    start = raw.get("start")
    if start is not None and (not isinstance(start, str) or not start.strip()):
        errors.append("target.start: expected a shell command line (a string)")
        start = None
    stop = raw.get("stop")
    if stop is not None and (not isinstance(stop, str) or not stop.strip()):
        errors.append("target.stop: expected a shell command line (a string)")
        stop = None
    url = raw.get("url")
    if url is None and start is not None:
        url = DEFAULT_TARGET_URL
    if not isinstance(url, str) or not re.match(r"https?://", url):
        errors.append(
            f"target.url: {url!r}; allowed: http://HOST:PORT (may hold {{port}} with start), "
            "required without start"
        )
        url = DEFAULT_TARGET_URL
    if "{port}" in url and start is None:
        errors.append("target.url: {port} needs target.start (the port is chosen per round)")
    if stop is not None and start is None:
        errors.append("target.stop: needs target.start (a server that is already up stays up)")
    for key in ("ready_path", "metrics_path"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].startswith("/")):
            errors.append(f"target.{key}: {raw[key]!r}; allowed: a path starting with /")
    timeout = _positive(
        raw.get("ready_timeout_s", DEFAULT_READY_TIMEOUT_S), "target.ready_timeout_s", float,
        errors,
    )  # fmt: skip
    return Target(
        url=url,
        start=start,
        stop=stop,
        ready_path=str(raw.get("ready_path") or "/v1/models"),
        ready_timeout_s=float(timeout),
        metrics_path=str(raw.get("metrics_path") or "/metrics"),
    )


def _server_flags(raw: Any, where: str, errors: list[str]) -> dict[str, Any]:
    """An external server's flags: names as its CLI spells them (dashes or underscores), one
    scalar value each (the server checks them itself when it starts)."""
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping of the target server's flags")
        return {}
    flags: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = normalize_key(raw_key)
        if not SERVER_FLAG_RE.fullmatch(key):
            errors.append(f"{where}.{raw_key}: not a flag name (letters, digits, '-', '_')")
        elif value is None or isinstance(value, (list, dict)):
            errors.append(f"{where}.{raw_key}: {value!r}; allowed: one number, string or boolean")
        else:
            flags[key] = value
    return flags


def _server_factors(
    raw: Any, baseline: dict[str, Any], target: Target, errors: list[str]
) -> dict[str, list[Any]]:
    if target.start is None:
        if raw:
            errors.append(
                "factors: a target without start is measured as it is (its flags cannot "
                "change); add target.start (the command that starts it) or drop factors"
            )
        if baseline:
            errors.append("baseline: a target without start takes no flags; add target.start")
        return {}
    if not isinstance(raw, dict) or not raw:
        errors.append(
            "factors: expected a mapping FLAG: [VALUE, ...] of the target server's flags, "
            "e.g. max_num_seqs: [4, 16]"
        )
        return {}
    factors: dict[str, list[Any]] = {}
    for raw_key, values in raw.items():
        key, where = normalize_key(raw_key), f"factors.{raw_key}"
        if not isinstance(values, list) or not values:
            errors.append(f"{where}: expected a non-empty list of values, e.g. [4, 16]")
            continue
        checked = bool(SERVER_FLAG_RE.fullmatch(key))
        if not checked:
            errors.append(f"{where}: not a flag name (letters, digits, '-', '_')")
        for value in values:
            if value is None or isinstance(value, (list, dict)):
                errors.append(f"{where}: {value!r}; allowed: numbers, strings or booleans")
                checked = False
            elif key in baseline and value == baseline[key]:
                errors.append(
                    f"{where}: {value!r} equals the baseline's {key}; a factor value must change "
                    "the setting (drop it: the baseline is always measured)"
                )
        if len({repr(v) for v in values}) != len(values):
            errors.append(f"{where}: a value is listed twice")
        if checked:
            factors[key] = list(values)
    return factors


@dataclass(frozen=True, slots=True)
class Variant:
    """The baseline, or the baseline with exactly one setting changed."""

    name: str
    factor: str | None
    value: Any
    serve: dict[str, Any]  # serve flags set by the plan (baseline + this factor)
    link_delay_ms: float = 0.0
    link_rate_mbit: float = 0.0
    target: Target | None = None  # an external server: `serve` holds that server's flags
    workload: dict[str, Any] = field(default_factory=dict)  # background load a factor changes

    @property
    def dirname(self) -> str:
        return self.name.replace("/", "_").replace(" ", "_")

    @property
    def is_ray(self) -> bool:
        return self.target is None and not self.serve.get("no_ray", False)

    @property
    def num_nodes(self) -> int:
        """Ray nodes the placement spans (1 when it fits on one)."""
        from deploy.placement import resolve_placement

        if self.target is not None:
            return 1
        placement = resolve_placement(str(self.serve.get("placement", "inproc")))
        return placement.num_nodes(int(self.serve.get("worker_replicas", 1)))

    def serve_argv(self) -> list[str]:
        if self.target is not None:
            return external_argv(self.serve)
        flags = serve_flags()
        return [arg for key, value in self.serve.items() for arg in flags[key].argv(value)]

    def deployment(self) -> dict[str, Any]:
        """Every serve flag, resolved (defaults filled in), plus the link between nodes."""
        from experiment.flags import resolve, serve_parser

        if self.target is not None:
            return {
                "target": self.target.to_json(),
                "flags": dict(self.serve),
                "start": self.target.command(self.serve, "{port}"),
            }
        resolved = resolve(serve_parser(), self.serve_argv())
        for key in ("host", "port", "ray_address", "metrics", "metrics_port", "log_dir"):
            resolved.pop(key, None)
        resolved["link_delay_ms"] = self.link_delay_ms
        resolved["link_rate_mbit"] = self.link_rate_mbit
        return resolved


@dataclass(slots=True)
class Plan:
    name: str
    description: str
    baseline: dict[str, Any]
    workload: dict[str, Any]
    factors: dict[str, list[Any]]
    repeats: int = 1
    warmup: int = DEFAULT_WARMUP_REQUESTS
    timeout_s: float = DEFAULT_TIMEOUT_S
    source: str = ""
    variants: list[Variant] = field(default_factory=list)
    # named workloads (`workloads:`), each the workload with some bench flags changed; each runs
    # every variant as an experiment of its own, in DIR/<workload>/
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    # an external OpenAI-compatible server instead of `hopscope serve` (`target:`)
    target: Target | None = None
    # what the author expected, written before the run (`prediction:`; see _prediction)
    prediction: str | dict[str, Any] | None = None

    def for_workload(self, name: str) -> Plan:
        """This plan on one of its named workloads (an experiment of its own)."""
        plan = Plan(
            name=f"{self.name}/{name}",
            description=self.description,
            baseline=self.baseline,
            workload={**self.workload, **self.workloads[name]},
            factors=self.factors,
            repeats=self.repeats,
            warmup=self.warmup,
            timeout_s=self.timeout_s,
            source=self.source,
            target=self.target,
            prediction=self.prediction,
        )
        plan.variants = list(self.variants)
        return plan

    @property
    def is_cluster_needed(self) -> bool:
        """A Ray variant spans nodes, or a link between nodes is emulated."""
        return any(
            v.is_ray and (v.num_nodes > 1 or v.factor in CLUSTER_FACTORS) for v in self.variants
        )

    @property
    def num_cluster_nodes(self) -> int:
        return max((v.num_nodes for v in self.variants if v.is_ray), default=1)

    def bench_argv(self) -> list[str]:
        """The bench child's flags: the workload less its background load (the round's own)."""
        flags = bench_flags()
        return [
            arg
            for key, value in self.workload.items()
            if key not in BACKGROUND_DEFAULTS
            for arg in flags[key].argv(value)
        ]

    def background(self, variant: Variant | None = None) -> BackgroundLoad:
        """The busy processes beside the deployment in `variant`'s rounds (none by default)."""
        settings = BACKGROUND_DEFAULTS | self.workload | (variant.workload if variant else {})
        return BackgroundLoad(int(settings["background_procs"]), float(settings["background_duty"]))

    def resolved(self) -> dict[str, Any]:
        from experiment.flags import bench_parser, resolve

        workload = resolve(bench_parser(), ["--address", "-", *self.bench_argv()])
        for key in ("url", "address", "out", "label", "no_plots", "no_live", "repeat"):
            workload.pop(key, None)
        workload |= {k: v for k, v in self.workload.items() if k in BACKGROUND_DEFAULTS}
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "baseline": self.variants[0].deployment(),
            "workload": workload,
            "factors": self.factors,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "timeout_s": self.timeout_s,
            "variants": [v.name for v in self.variants],
            **({"workloads": self.workloads} if self.workloads else {}),
            **({"target": self.target.to_json()} if self.target else {}),
            **({"prediction": self.prediction} if self.prediction is not None else {}),
        }


# ---------------------------------------------------------------------------- built-in plans
def builtin_plans() -> dict[str, Path]:
    folder = resources.files("experiment") / "plans"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def list_lines() -> list[str]:
    """`hopscope experiment --list`: one line per built-in plan."""
    lines = []
    for name, path in sorted(builtin_plans().items()):
        data = yaml.safe_load(path.read_text()) or {}
        lines.append(f"{name:<10} {data.get('description', '')}")
    return lines


# ---------------------------------------------------------------------------- reading
def load_plan(ref: str, *, ray_address: str = "") -> Plan:
    """A built-in plan's name or a YAML file; PlanError (every problem found) otherwise."""
    builtins = builtin_plans()
    if ref in builtins:
        path = builtins[ref]
    else:
        path = Path(ref)
        if not path.is_file():
            raise PlanError(
                f"plan {ref!r}: no such file and not a built-in plan; built-in plans: "
                f"{', '.join(sorted(builtins))} (`hopscope experiment --list`)"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PlanError(f"plan {path}: not valid YAML: {exc}") from None
    # a built-in plan is named by its name (what the user typed, e.g. in the --resume hint)
    return parse_plan(data, source=ref if ref in builtins else str(path), ray_address=ray_address)


def parse_plan(data: Any, *, source: str = "<plan>", ray_address: str = "") -> Plan:
    errors: list[str] = []
    if not isinstance(data, dict):
        raise PlanError(f"plan {source}: expected a mapping with baseline, workload, factors")
    for key in data:
        if key not in TOP_KEYS:
            errors.append(f"{key}: unknown plan key; allowed: {', '.join(TOP_KEYS)}")
    target = _target(data["target"], errors) if "target" in data else None
    if target is not None:
        baseline = _server_flags(data.get("baseline") or {}, "baseline", errors)
    else:
        baseline = _settings(data.get("baseline") or {}, "baseline", serve_flags(), "serve", errors)
    workload = _workload(data.get("workload") or {}, "workload", errors)
    raw_load = (
        {normalize_key(k) for k in (data.get("workload") or {})}
        if isinstance(data.get("workload"), dict)
        else set()
    )
    if not raw_load & {"rate", "concurrency"}:
        errors.append("workload: set concurrency (closed loop) or rate (open loop)")
    if "rate" in workload and "concurrency" in workload:
        errors.append("workload: set concurrency or rate, not both")
    workloads: dict[str, dict[str, Any]] = {}
    raw_workloads = data.get("workloads") or {}
    if not isinstance(raw_workloads, dict):
        errors.append("workloads: expected a mapping NAME: {bench flag: value, ...}")
        raw_workloads = {}
    for wl_name, overrides in raw_workloads.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(wl_name)):
            errors.append(f"workloads.{wl_name}: a name of letters, digits, '_', '.', '-'")
            continue
        where = f"workloads.{wl_name}"
        workloads[str(wl_name)] = _workload(overrides or {}, where, errors)
    if target is not None:
        _refuse_background_with_target([workload, *workloads.values()], errors)
    if target is not None:
        factors = _server_factors(data.get("factors"), baseline, target, errors)
    else:
        factors = _factors(data.get("factors"), baseline, workload, errors)
    repeats = _positive(data.get("repeats", 1), "repeats", int, errors)
    warmup = _positive(data.get("warmup", DEFAULT_WARMUP_REQUESTS), "warmup", int, errors, 0)
    timeout_s = _positive(data.get("timeout_s", DEFAULT_TIMEOUT_S), "timeout_s", float, errors)
    plan = Plan(
        name=str(data.get("name") or Path(source).stem),
        description=str(data.get("description") or ""),
        baseline=baseline,
        workload=workload,
        factors=factors,
        repeats=int(repeats),
        warmup=int(warmup),
        timeout_s=float(timeout_s),
        source=source,
        workloads=workloads,
        target=target,
    )
    plan.variants = _variants(plan)  # of the values that passed: their own checks run too
    plan.prediction = _prediction(data.get("prediction"), plan.variants, errors)
    if target is None:
        _check_variants(plan, ray_address, errors)
    elif ray_address:
        errors.append("--ray-address: the plan measures an external target (target:), no Ray")
    if errors:
        unique = list(dict.fromkeys(errors))
        raise PlanError(f"plan {source} cannot run:\n  " + "\n  ".join(unique))
    return plan


PREDICTION_TEXT_KEY = "why"


def _prediction(
    raw: Any, variants: list[Variant], errors: list[str]
) -> str | dict[str, Any] | None:
    """`prediction:` what the author expects, written before the run: free text, or a mapping
    VARIANT: {METRIC: RATIO} (the expected variant / baseline ratio, e.g. `max_num_seqs=2:
    {output_tok_s: 0.3}`) with an optional `why:` text. The report shows it beside the result."""
    if raw is None or isinstance(raw, str):
        return raw.strip() if isinstance(raw, str) and raw.strip() else None
    names = [v.name for v in variants if v.factor is not None]
    metrics = [spec.key for spec in COMPARED]
    if not isinstance(raw, dict):
        errors.append("prediction: expected text, or a mapping VARIANT: {METRIC: RATIO}")
        return None
    checked: dict[str, Any] = {}
    for key, expected in raw.items():
        where = f"prediction.{key}"
        if key == PREDICTION_TEXT_KEY:
            if isinstance(expected, str):
                checked[key] = expected.strip()
            else:
                errors.append(f"{where}: expected text (why the author expects these ratios)")
        elif key not in names:
            errors.append(f"{where}: not a variant of this plan; allowed: {', '.join(names)}")
        elif not isinstance(expected, dict) or not expected:
            errors.append(f"{where}: expected a mapping METRIC: RATIO, e.g. output_tok_s: 0.3")
        else:
            checked[key] = _predicted_ratios(expected, where, metrics, errors)
    return checked


def _predicted_ratios(
    raw: dict[str, Any], where: str, metrics: list[str], errors: list[str]
) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for metric, ratio in raw.items():
        if metric not in metrics:
            errors.append(f"{where}.{metric}: not a compared metric; allowed: {', '.join(metrics)}")
        elif isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
            errors.append(f"{where}.{metric}: {ratio!r}; allowed: a ratio > 0 (variant / baseline)")
        else:
            ratios[metric] = float(ratio)
    return ratios


def _settings(
    raw: Any, where: str, flags: dict[str, Flag], command: str, errors: list[str]
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping of `hopscope {command}` flags")
        return {}
    settings: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = normalize_key(raw_key)
        if key not in flags:
            errors.append(
                f"{where}.{raw_key}: not a `hopscope {command}` flag a plan can set; allowed: "
                + ", ".join(sorted(flags))
            )
            continue
        try:
            settings[key] = flags[key].check(value, f"{where}.{raw_key}")
        except ValueError as exc:
            errors.append(str(exc))
    return settings


def _factors(
    raw: Any, baseline: dict[str, Any], workload: dict[str, Any], errors: list[str]
) -> dict[str, list[Any]]:
    allowed = sorted([*serve_flags(), *CLUSTER_FACTORS, *BACKGROUND_FACTORS])
    if not isinstance(raw, dict) or not raw:
        errors.append(
            "factors: expected a mapping FACTOR: [VALUE, ...]; factors: " + ", ".join(allowed)
        )
        return {}
    factors: dict[str, list[Any]] = {}
    for raw_key, values in raw.items():
        key, where = normalize_key(raw_key), f"factors.{raw_key}"
        if key not in allowed:
            errors.append(f"{where}: unknown factor; allowed: {', '.join(allowed)}")
            continue
        if not isinstance(values, list) or not values:
            errors.append(f"{where}: expected a non-empty list of values, e.g. [4, 16]")
            continue
        checked = []
        for value in values:
            try:
                checked.append(_check_factor_value(key, value, where, baseline, workload))
            except ValueError as exc:
                errors.append(str(exc))
        if len({repr(v) for v in checked}) != len(checked):
            errors.append(f"{where}: a value is listed twice")
        factors[key] = checked
    return factors


def _check_factor_value(
    key: str, value: Any, where: str, baseline: dict[str, Any], workload: dict[str, Any]
) -> Any:
    if key in CLUSTER_FACTORS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(
                f"{where}: {value!r} must be a number > 0 (the baseline link has none)"
            )
        return float(value)
    if key in BACKGROUND_DEFAULTS:
        checked, base = _background_value(key, value, where), workload.get(key)
        base = BACKGROUND_DEFAULTS[key] if base is None else base
    else:
        flag = serve_flags()[key]
        checked, base = flag.check(value, where), baseline.get(key, flag.default)
    if checked == base:
        raise ValueError(
            f"{where}: {value!r} equals the baseline's {key} ({base!r}); a factor value must "
            "change the setting (drop it: the baseline is always measured)"
        )
    return checked


def _workload(raw: Any, where: str, errors: list[str]) -> dict[str, Any]:
    """A workload: `hopscope bench` flags, and the background load beside the deployment."""
    if not isinstance(raw, dict):
        return _settings(raw, where, bench_flags(), "bench", errors)  # refused there
    is_background = {k: normalize_key(k) in BACKGROUND_DEFAULTS for k in raw}
    bench_part = {k: v for k, v in raw.items() if not is_background[k]}
    settings = _settings(bench_part, where, bench_flags(), "bench", errors)
    for raw_key in (k for k in raw if is_background[k]):
        try:
            value = _background_value(normalize_key(raw_key), raw[raw_key], f"{where}.{raw_key}")
            settings[normalize_key(raw_key)] = value
        except ValueError as exc:
            errors.append(str(exc))
    return settings


def _background_value(key: str, value: Any, where: str) -> Any:
    """background_procs: an integer >= 0; background_duty: a number in (0, 1]."""
    is_procs = key == "background_procs"
    if isinstance(value, bool) or not isinstance(value, int if is_procs else (int, float)):
        kind = "an integer" if is_procs else "a number"  # a refusal collected as a PlanError line
        raise ValueError(f"{where}: {value!r} is not {kind}")  # noqa: TRY004
    try:
        load = BackgroundLoad(procs=int(value)) if is_procs else BackgroundLoad(duty=float(value))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return load.procs if is_procs else load.duty


def _refuse_background_with_target(workloads: list[dict[str, Any]], errors: list[str]) -> None:
    if any(key in BACKGROUND_DEFAULTS for w in workloads for key in w):
        errors.append(
            "workload.background_procs: background load is planted beside a hopscope "
            "deployment; a plan with target: does not run it"
        )


def _positive(value: Any, key: str, kind: type, errors: list[str], minimum: float = 1) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        errors.append(f"{key}: {value!r}; allowed: a {kind.__name__} >= {minimum:g}")
        return minimum
    return kind(value)


def variant_name(factor: str, value: Any) -> str:
    text = (
        str(value).lower()
        if isinstance(value, bool)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )
    return f"{factor}={text}"


def _variants(plan: Plan) -> list[Variant]:
    variants = [Variant(BASELINE, None, None, dict(plan.baseline), target=plan.target)]
    for factor, values in plan.factors.items():
        for value in values:
            if plan.target is not None:
                serve = {**plan.baseline, factor: value}
                name = variant_name(factor, value)
                variants.append(Variant(name, factor, value, serve, target=plan.target))
            elif factor in CLUSTER_FACTORS:
                link = {factor: value}
                variants.append(
                    Variant(variant_name(factor, value), factor, value, dict(plan.baseline), **link)
                )
            elif factor in BACKGROUND_FACTORS:
                name, serve = variant_name(factor, value), dict(plan.baseline)
                variants.append(Variant(name, factor, value, serve, workload={factor: value}))
            else:
                serve = {**plan.baseline, factor: value}
                variants.append(Variant(variant_name(factor, value), factor, value, serve))
    return variants


def _check_variants(plan: Plan, ray_address: str, errors: list[str]) -> None:
    from deploy.placement import PlacementError
    from deploy.spec import NO_RAY_PLACEMENTS

    own_checks = ("placement", "no_ray", "device", *CLUSTER_FACTORS)
    for variant in plan.variants:
        if variant.factor and variant.factor not in own_checks:
            continue  # same placement and device as the baseline: checked there
        where = f"factors.{variant.factor}" if variant.factor else "baseline"
        _check_device(variant, where, errors)
        placement = str(variant.serve.get("placement", "inproc"))
        try:
            num_nodes = variant.num_nodes
        except PlacementError as exc:
            errors.append(f"{where}.placement: {exc}")
            continue
        if not variant.is_ray and placement not in NO_RAY_PLACEMENTS:
            errors.append(
                f"{where}: placement {placement!r} needs a Ray cluster but no_ray is true; "
                f"with no_ray allowed placements: {', '.join(NO_RAY_PLACEMENTS)}"
            )
        if variant.factor in CLUSTER_FACTORS:
            _check_link_factor(variant, where, placement, num_nodes, ray_address, errors)


def _check_link_factor(
    variant: Variant,
    where: str,
    placement: str,
    num_nodes: int,
    ray_address: str,
    errors: list[str],
) -> None:
    if not variant.is_ray:
        errors.append(f"{where}: an emulated link needs a Ray cluster; set baseline no_ray: false")
    elif num_nodes < 2:
        errors.append(
            f"{where}: the baseline placement {placement!r} keeps every service on one node, so "
            "a link between nodes changes nothing; allowed baseline placements: split, remote "
            "(or a placement file across nodes)"
        )
    elif ray_address:
        errors.append(
            f"{where}: the experiment must start its own cluster to set the link between nodes; "
            "drop --ray-address"
        )


def _check_device(variant: Variant, where: str, errors: list[str]) -> None:
    device = str(variant.serve.get("device", "cpu"))
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        errors.append(
            f"{where}.device: {device!r} but this machine has no CUDA device; allowed: cpu"
        )
