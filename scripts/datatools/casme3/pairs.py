"""Computing pair tasks: the per-pair cache that lets a re-run resume, and the worker processes.

The cache holds the measures of every pair written or dropped, one JSON line per pair, appended as
results arrive, with the size, modification time and path of its four frames: an entry is reused
only while its frames are the ones it was measured from, and a written pair only while its three
images are whole PNGs (`common.format.png_ok`). The image settings the entries were made with are
the output folder's, which its run record (`util.claim_folder`) holds fixed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from scripts.datatools.casme3 import images as ci
from scripts.datatools.casme3.settings import Settings
from scripts.datatools.common.format import png_ok
from scripts.datatools.common.tasks import run_tasks

CACHE_FOLDER = ".prepare_cache"


def frame_signature(task: ci.PairTask) -> list[list]:
    """[path, size, modification time in ns] of the pair's four frames ([path] when unreadable)."""
    signature = []
    for path in (task.rgb_first, task.rgb_second, task.depth_first, task.depth_second):
        try:
            stat = os.stat(path)
            signature.append([path, stat.st_size, stat.st_mtime_ns])
        except OSError:
            signature.append([path])
    return signature


class PairCache:
    """Measures of pairs already processed, by key; lines an interrupted run cut short are passed over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        lines = path.read_bytes().decode("utf-8", "replace").splitlines() if path.is_file() else []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                self.entries[entry["key"]] = entry

    def record(self, task: ci.PairTask, result: ci.PairResult) -> None:
        """Keep and append the measures of a computed pair."""
        entry = {"key": result.key, "mad": result.mad, "flow": result.flow, "frames": frame_signature(task)}
        self.entries[result.key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")


def reuse(task: ci.PairTask, entry: dict | None) -> ci.PairResult | None:
    """The cached outcome of `task`, or None when it must be (re)computed."""
    if entry is None or entry.get("frames") != frame_signature(task):
        return None
    mad, flow = entry.get("mad"), entry.get("flow")
    if ci.below(ci.intensity_of(task.measure, mad, flow, task.au_change), task.min_intensity):
        return ci.PairResult(task.key, "dropped", mad, flow)
    size = task.settings.image_size
    if all(png_ok(path, mode, size) for path, mode in ((task.rgb_out, "RGB"), (task.depth_out, "L"),
                                                       (task.gray_out, "L"))):
        return ci.PairResult(task.key, "reused", mad, flow)
    return None


def run_pairs(tasks: Sequence[ci.PairTask], settings: Settings, stage: str, desc: str) -> dict[str, ci.PairResult]:
    """Process `tasks` of `stage` ('labeled' or 'pool'), reusing the pairs its cache holds, with
    `--workers` processes; results by key."""
    cache = PairCache(settings.out_dir / CACHE_FOLDER / f"{stage}.jsonl")
    results: dict[str, ci.PairResult] = {}
    todo = []
    for task in tasks:
        cached = reuse(task, cache.entries.get(task.key))
        if cached is None:
            todo.append(task)
        else:
            results[task.key] = cached
    bar = tqdm(total=len(tasks), initial=len(results), desc=desc, unit="pair")
    for task, result in zip(todo, run_tasks(ci.process_pair, todo, settings.workers)):
        if result.status in ("written", "dropped"):
            cache.record(task, result)
        results[result.key] = result
        bar.update()
    bar.close()
    return results
