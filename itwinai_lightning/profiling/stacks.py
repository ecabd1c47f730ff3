"""Collapsed stacks (py-spy ``--format raw``): parse, filter to one rank's processes, write, render.

A collapsed line is ``frame;frame;...;frame COUNT`` with the root first. py-spy writes Python frames as
``function (path/file.py:line)``, native frames (``--native``) as ``symbol (library.so)``, and, with
``--subprocesses``, one ``process PID:"command line"`` frame per process in the parent chain.

Renderers here need no third-party tools: :func:`to_speedscope` (speedscope.app JSON, one sampled
profile per process) and :func:`to_svg` (a static, self-contained flame graph with tooltips).
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

Stack = tuple[str, ...]
Samples = Counter[Stack]

_PROCESS = re.compile(r"^process (\d+):")
_THREAD = re.compile(r"^thread \(0x[0-9a-fA-F]+\)")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_collapsed(text: str) -> Samples:
    """Parse collapsed-stack text into ``{stack: count}``; blank or malformed lines are skipped."""
    samples: Samples = Counter()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        samples[tuple(stack_text.split(";"))] += int(count_text)
    return samples


def read_collapsed(path: str | Path) -> Samples:
    return parse_collapsed(Path(path).read_text(errors="replace"))


def write_collapsed(samples: Mapping[Stack, int], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{';'.join(stack)} {count}" for stack, count in sorted(samples.items()) if count > 0]
    out.write_text("\n".join(lines) + ("\n" if lines else ""))
    return out


def process_chain(stack: Stack) -> list[int]:
    """PIDs of the ``process`` frames of a stack, root (the profiled process) first."""
    chain = []
    for frame in stack:
        match = _PROCESS.match(frame)
        if match is None:
            break
        chain.append(int(match.group(1)))
    return chain


def code_frames(stack: Stack) -> Stack:
    """The stack without its ``process`` and ``thread`` pseudo-frames."""
    return tuple(f for f in stack if not (_PROCESS.match(f) or _THREAD.match(f)))


def split_frame(frame: str) -> tuple[str, str, int | None]:
    """``"fn (a/b.py:12)"`` -> ``("fn", "a/b.py", 12)``; without a location -> ``(frame, "", None)``."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, "", None
    line = match.group("line")
    return match.group("func"), match.group("file"), int(line) if line else None


def short_name(frame: str) -> str:
    """A frame without its line number, for ranking functions: ``"fn (a/b.py)"``."""
    func, file, _ = split_frame(frame)
    return f"{func} ({file})" if file else func


def filter_own(samples: Mapping[Stack, int], other_rank_pids: Iterable[int]) -> Samples:
    """Drop samples of other ranks (and their children) that ``--subprocesses`` also recorded.

    Lightning's own launcher starts ranks 1..N-1 as children of rank 0, so rank 0's py-spy sees them.
    A sample is kept unless a ``process`` frame below the root belongs to another rank.
    """
    others = set(other_rank_pids)
    kept: Samples = Counter()
    for stack, count in samples.items():
        if any(pid in others for pid in process_chain(stack)[1:]):
            continue
        kept[stack] += count
    return kept


def to_speedscope(samples: Mapping[Stack, int], name: str) -> dict[str, Any]:
    """speedscope.app file (https://www.speedscope.app/file-format-schema.json), one profile per process."""
    frames: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    profiles: dict[str, dict[str, Any]] = {}
    for stack, count in sorted(samples.items()):
        chain = process_chain(stack)
        key = f"process {chain[-1]}" if chain else name
        prof = profiles.setdefault(
            key,
            {"type": "sampled", "name": key, "unit": "none", "startValue": 0, "endValue": 0,
             "samples": [], "weights": []},
        )  # fmt: skip
        ids = []
        for frame in code_frames(stack):
            if frame not in index:
                func, file, line = split_frame(frame)
                entry: dict[str, Any] = {"name": func}
                if file:
                    entry["file"] = file
                if line is not None:
                    entry["line"] = line
                index[frame] = len(frames)
                frames.append(entry)
            ids.append(index[frame])
        prof["samples"].append(ids)
        prof["weights"].append(count)
        prof["endValue"] += count
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": list(profiles.values()),
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "itwinai-lightning",
    }


def write_speedscope(samples: Mapping[Stack, int], path: str | Path, name: str) -> Path:
    out = Path(path)
    out.write_text(json.dumps(to_speedscope(samples, name)))
    return out


def _tree(samples: Mapping[Stack, int]) -> dict[str, Any]:
    root: dict[str, Any] = {"n": 0, "c": {}}
    for stack, count in samples.items():
        node = root
        node["n"] += count
        for frame in stack:
            node = node["c"].setdefault(frame, {"n": 0, "c": {}})
            node["n"] += count
    return root


def _colour(frame: str) -> str:
    h = sum(ord(ch) for ch in frame)
    return f"rgb({205 + h % 50},{80 + (h // 7) % 120},{30 + (h // 3) % 40})"


def to_svg(samples: Mapping[Stack, int], title: str, width: int = 1200, row: int = 16) -> str:
    """A flame graph (root at the bottom) as standalone SVG; frames narrower than 0.1 px are dropped."""
    tree = _tree(samples)
    total = max(1, tree["n"])
    rects: list[str] = []
    depth_max = 0
    scale = (width - 20) / total

    def walk(node: dict[str, Any], x: float, depth: int) -> None:
        nonlocal depth_max
        for frame, child in sorted(node["c"].items()):
            w = child["n"] * scale
            if w >= 0.1:
                depth_max = max(depth_max, depth)
                label = html.escape(frame)
                pct = 100.0 * child["n"] / total
                text = html.escape(frame if w > 7 * len(frame) else frame[: max(0, int(w / 7) - 2)] + "..")
                rects.append(
                    f"<g><title>{label} ({child['n']} samples, {pct:.2f}%)</title>"
                    f'<rect x="{x:.1f}" y="{{Y{depth}}}" width="{w:.1f}" height="{row - 1}" '
                    f'fill="{_colour(frame)}"/>'
                    + (f'<text x="{x + 3:.1f}" y="{{T{depth}}}">{text}</text>' if w > 21 else "")
                    + "</g>"
                )
                walk(child, x, depth + 1)
            x += w

    walk(tree, 10.0, 0)
    height = (depth_max + 1) * row + 40
    body = "\n".join(rects)
    for depth in range(depth_max + 1):
        y = height - 10 - (depth + 1) * row
        body = body.replace(f"{{Y{depth}}}", str(y)).replace(f"{{T{depth}}}", str(y + row - 4))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">\n'
        f'<text x="10" y="20" font-size="14">{html.escape(title)} ({tree["n"]} samples)</text>\n'
        f"{body}\n</svg>\n"
    )


def write_svg(samples: Mapping[Stack, int], path: str | Path, title: str) -> Path:
    out = Path(path)
    out.write_text(to_svg(samples, title))
    return out
