"""The hottest functions of each service by self time, from `hopscope profile`'s py-spy
speedscope files (`SERVICE.speedscope.json`): what the host_cpu finding names."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

# Leaf frames where a thread waits rather than computes (py-spy records idle threads with --idle)
IDLE_LEAVES = frozenset(
    {"select", "poll", "epoll", "wait", "sleep", "acquire", "_wait_for_tstate_lock", "get"}
)
SUFFIX = ".speedscope.json"


def top_self(path: Path, num_functions: int = 3) -> list[str]:
    """'function (file:line) NN%' of the busiest leaf frames, shares of the non-idle samples."""
    document = json.loads(path.read_text(encoding="utf-8"))
    frames = document["shared"]["frames"]
    counts: Counter[int] = Counter()
    for profile in document.get("profiles", []):
        weights = profile.get("weights") or [1] * len(profile.get("samples", []))
        for stack, weight in zip(profile.get("samples", []), weights):
            # root first, leaf last; py-spy names methods "Class.method"
            if stack and str(frames[stack[-1]]["name"]).rsplit(".", 1)[-1] not in IDLE_LEAVES:
                counts[stack[-1]] += weight
    total = sum(counts.values())
    rows = []
    for index, count in counts.most_common(num_functions):
        frame = frames[index]
        where = f"{Path(str(frame.get('file', ''))).name}:{frame.get('line')}"
        rows.append(f"{frame['name']} ({where}) {count / total:.0%}")
    return rows


def hot_functions(profile_dir: Path | None) -> dict[str, list[str]]:
    """Per service (file stem), its top functions by self time; {} without a profile."""
    if profile_dir is None or not profile_dir.is_dir():
        return {}
    result = {}
    for path in sorted(profile_dir.glob(f"*{SUFFIX}")):
        try:
            rows = top_self(path)
        except (OSError, ValueError, KeyError, IndexError):
            continue  # a truncated or foreign file: the diagnosis stands without it
        if rows:
            result[path.name.removesuffix(SUFFIX)] = rows
    return result
