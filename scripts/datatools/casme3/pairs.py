"""Computing pair tasks: the per-pair cache that lets a re-run resume, and the worker processes."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image
from tqdm import tqdm

from scripts.datatools.casme3 import images as ci
from scripts.datatools.casme3.settings import Settings
from util import UserError, atomic_write_json

CACHE_FOLDER = ".prepare_cache"
STAGES = ("labeled", "pool")


class PairCache:
    """Measures of pairs already processed, one JSON line per pair, appended as results arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run
                self.entries[entry["key"]] = entry

    def record(self, result: ci.PairResult) -> None:
        """Keep and append the measures of a computed pair."""
        entry = {"key": result.key, "mad": result.mad, "flow": result.flow}
        self.entries[result.key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")


def _image_ok(path: str, mode: str, size: int) -> bool:
    """The file is a whole PNG of `mode` (and `size` x `size` when size > 0). It is decoded in
    full, because the header of a PNG cut short by an interrupted run or a full disk still reads
    as valid."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG" or image.mode != mode or (size and image.size != (size, size)):
                return False
            image.load()
            return True
    except (OSError, ValueError, SyntaxError):
        return False


def reuse(task: ci.PairTask, entry: dict | None) -> ci.PairResult | None:
    """The cached outcome of `task`, or None when it must be (re)computed."""
    # A pair measured from a truncated frame (by a version that did not check, or truncated
    # since) is computed again, so that it is reported and left out instead of reused.
    if entry is None or any(ci.jpeg_file_problem(frame) for frame in (task.rgb_first, task.rgb_second)):
        return None
    intensity = ci.intensity_of(task.measure, entry["mad"], entry["flow"], task.au_change)
    if ci.below(intensity, task.min_intensity):
        return ci.PairResult(task.key, "dropped", entry["mad"], entry["flow"])
    size = task.settings.image_size
    # all three views, so that an output folder from before the grey view, or one whose grey image
    # was cut short, gets the missing image made from the frames
    if all(_image_ok(path, mode, size) for path, mode in ((task.rgb_out, "RGB"), (task.depth_out, "L"),
                                                          (task.gray_out, "L"))):
        return ci.PairResult(task.key, "reused", entry["mad"], entry["flow"])
    return None


def run_pairs(tasks: Sequence[ci.PairTask], settings: Settings, stage: str, desc: str) -> dict[str, ci.PairResult]:
    """Process `tasks` of `stage` ('labeled' or 'pool'), reusing the pairs its cache holds, with
    `--workers` processes; results by key."""
    cache = PairCache(settings.out_dir / CACHE_FOLDER / _cache_name(stage))
    results: dict[str, ci.PairResult] = {}
    todo = []
    for task in tasks:
        cached = reuse(task, cache.entries.get(task.key))
        if cached is None:
            todo.append(task)
        else:
            results[task.key] = cached
    bar = tqdm(total=len(tasks), initial=len(results), desc=desc, unit="pair")
    for result in _imap(todo, settings.workers):
        if result.status in ("written", "dropped"):
            cache.record(result)
        results[result.key] = result
        bar.update()
    bar.close()
    return results


def _cache_name(stage: str) -> str:
    return f"{stage}.jsonl"


def _imap(tasks: list[ci.PairTask], workers: int) -> Iterator[ci.PairResult]:
    if workers <= 1 or len(tasks) < 2:
        yield from map(ci.process_pair, tasks)
        return
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(tasks) // (4 * workers)))
    with context.Pool(workers, initializer=ci.init_worker) as pool:
        yield from pool.imap_unordered(ci.process_pair, tasks, chunksize=chunk)


# what a folder prepared before a setting was recorded was made with
SETTINGS_BEFORE_RECORDED = {"motion_compensation": False}


def check_cache(settings: Settings) -> None:
    """Refuse to mix images made with other image settings in one output folder; `--overwrite`
    discards the cache instead, so that every pair is recomputed."""
    image = settings.image_settings
    cache = settings.out_dir / CACHE_FOLDER
    box_file = settings.box_file
    current = {"crop": image.crop, "crop_margin": image.crop_margin, "image_size": image.image_size,
               "rgb_gain": image.rgb_gain, "depth_gain": image.depth_gain,
               "box_file_sha1": hashlib.sha1(Path(box_file).read_bytes()).hexdigest() if box_file else None}
    current["motion_compensation"] = image.motion_compensation
    path = cache / "settings.json"
    if settings.overwrite:
        for name in ("settings.json", *(_cache_name(stage) for stage in STAGES)):
            (cache / name).unlink(missing_ok=True)
    elif path.is_file():
        previous = json.loads(path.read_text())
        recorded = {**SETTINGS_BEFORE_RECORDED, **previous}
        changed = [f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in current.items() if recorded.get(k) != v]
        if changed:
            raise UserError(f"{settings.out} was prepared with other settings ({'; '.join(changed)}); "
                            f"use a new --out or add --overwrite")
    atomic_write_json(path, current)
