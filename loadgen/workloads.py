"""Seeded workloads: request `i` depends only on (seed, i), so two runs send byte-identical work.

- synthetic: random token ids in [10, 4000) sent as `prompt_token_ids`, lengths fixed/uniform/normal
- jsonl: one object per line, `{"prompt": "...", "max_tokens": 64, "ignore_eos": true}` (only
  `prompt` required; a missing max_tokens is drawn from --output-len)
- sharegpt: a JSON list of `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt",
  "value": ...}]}`; the first human turn is the prompt, the reply's length sets max_tokens
  (about 4 characters per token, since the loadgen does not tokenize)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.config import LengthSpec, WorkloadConfig

MIN_TOKEN_ID = 10
MAX_TOKEN_ID = 4000  # exclusive; valid for every shipped model preset
CHARS_PER_TOKEN = 4
_WORKLOAD_STREAM = 0


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and the line."""


@dataclass(slots=True, frozen=True)
class RequestSpec:
    """What one request asks for, independent of when it is sent."""

    prompt: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    ignore_eos: bool


def sample_length(spec: LengthSpec, rng: np.random.Generator) -> int:
    if spec.dist == "uniform":
        value = rng.uniform(spec.mean - spec.spread, spec.mean + spec.spread)
    elif spec.dist == "normal":
        value = rng.normal(spec.mean, spec.spread)
    else:
        value = spec.mean
    return max(1, round(value))


class Workload:
    """Request `i` of a seeded workload (`request(i)`), synthetic or from a dataset."""

    def __init__(self, config: WorkloadConfig) -> None:
        self._config = config
        self._entries = load_dataset(config) if config.dataset else []
        order_rng = np.random.default_rng([config.seed, _WORKLOAD_STREAM])
        self._order = order_rng.permutation(len(self._entries)) if self._entries else None

    def request(self, index: int) -> RequestSpec:
        rng = np.random.default_rng([self._config.seed, _WORKLOAD_STREAM, index])
        if self._order is None:
            return self._synthetic(rng)
        prompt, max_tokens, ignore_eos = self._entries[self._order[index % len(self._entries)]]
        if max_tokens is None:
            max_tokens = sample_length(self._config.output_len, rng)
        return RequestSpec(prompt, (), max_tokens, ignore_eos)

    def _synthetic(self, rng: np.random.Generator) -> RequestSpec:
        num_in = sample_length(self._config.input_len, rng)
        num_out = sample_length(self._config.output_len, rng)
        ids = rng.integers(MIN_TOKEN_ID, MAX_TOKEN_ID, size=num_in)
        return RequestSpec("", tuple(int(t) for t in ids), num_out, self._config.ignore_eos)


Entry = tuple[str, int | None, bool]


def load_dataset(config: WorkloadConfig) -> list[Entry]:
    path = Path(config.dataset)
    if not path.is_file():
        raise DatasetError(f"dataset {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if config.dataset_format == "sharegpt":
        entries = _parse_sharegpt(path, text)
    else:
        entries = _parse_jsonl(path, text, config.ignore_eos)
    if not entries:
        raise DatasetError(f"dataset {path}: no usable prompts")
    return entries


def _parse_jsonl(path: Path, text: str, ignore_eos: bool) -> list[Entry]:
    entries: list[Entry] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
        entries.append(_jsonl_entry(path, line_no, item, ignore_eos))
    return entries


def _jsonl_entry(path: Path, line_no: int, item: Any, ignore_eos: bool) -> Entry:
    where = f"{path}:{line_no}"
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
        raise DatasetError(f'{where}: expected an object with a non-empty "prompt" string')
    max_tokens = item.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise DatasetError(f'{where}: "max_tokens" must be an integer >= 1')
    return item["prompt"], max_tokens, bool(item.get("ignore_eos", ignore_eos))


def _parse_sharegpt(path: Path, text: str) -> list[Entry]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: ShareGPT data must be a JSON list of conversations")
    entries: list[Entry] = []
    for index, item in enumerate(data):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            raise DatasetError(f'{path}: item {index} has no "conversations" list')
        entry = _sharegpt_entry(turns)
        if entry is not None:
            entries.append(entry)
    return entries


def _sharegpt_entry(turns: list[Any]) -> Entry | None:
    """First human turn and the reply after it; None when the conversation has no such pair."""
    values = [t.get("value") for t in turns if isinstance(t, dict)]
    if len(values) < 2 or not isinstance(values[0], str) or not isinstance(values[1], str):
        return None
    if not values[0]:
        return None
    return values[0], max(1, len(values[1]) // CHARS_PER_TOKEN), True
