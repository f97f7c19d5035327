"""The unlabeled pre-training pool of a CAS(ME)^3 preparation, and its intensity threshold.

Pairs (f, f + gap) every `stride` frames, outside every annotated interval, from Part A and/or
Part B; each gets the measures of `images.process_pair`, and the chosen one is compared with a
threshold: given, or calibrated as a low percentile of the labeled MEs' intensities.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from dataset import (DEPTH_LISTS, GRAY_LISTS, LIST_FOLDER, POOL_LIST, RGB_LISTS, UNLABELED, file_subject, make_key,
                     pool_view_paths)
from scripts.datatools.casme3 import images as ci
from scripts.datatools.casme3.annotations import AnnotatedRow, parse_rows
from scripts.datatools.casme3.frames import SourceTree
from scripts.datatools.casme3.labeled import LabeledPair
from scripts.datatools.casme3.pairs import run_pairs
from scripts.datatools.casme3.settings import Inputs, Settings
from scripts.datatools.common.format import list_line, write_list
from scripts.datatools.common.report import Report, write_csv
from scripts.datatools.common.sheets import Sheet
from util import UserError


@dataclass(frozen=True)
class PoolPair:
    """An unlabeled pair of the pre-training pool."""
    subject: int
    video: str
    first: int
    second: int
    au: float | None
    task: ci.PairTask


def pool_pairs(frames: Iterable[int], gap: int, stride: int,
               intervals: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], int]:
    """Pairs (f, f + gap) for f = first frame, + stride, ... with both frames present and no
    overlap with an annotated interval [start, end]; also the number of pairs missing a frame."""
    present = set(frames)
    if not present:
        return [], 0
    pairs, missing = [], 0
    for first in range(min(present), max(present) - gap + 1, stride):
        second = first + gap
        if any(first <= end and second >= start for start, end in intervals):
            continue
        if first in present and second in present:
            pairs.append((first, second))
        else:
            missing += 1
    return pairs, missing


def plan_pool(trees: Sequence[SourceTree], intervals: dict[tuple[int, str], list[tuple[int, int]]],
              settings: Settings, inputs: Inputs, report: Report, threshold: float | None) -> list[PoolPair]:
    """Unlabeled pairs from every video of the given parts, outside the annotated intervals."""
    planned: list[PoolPair] = []
    owner: dict[tuple[int, str], str] = {}
    for tree in trees:
        for n in tree.subjects():
            for video in tree.videos(n):
                if (n, video) in owner:
                    report.count("duplicate_video", f"{tree.part} {file_subject(n)}/{video} also in "
                                                        f"{owner[(n, video)]}: left out")
                    continue
                owner[(n, video)] = tree.part
                planned += _plan_video(tree, n, video, intervals.get((n, video), []), settings, inputs,
                                       report, threshold)
    return planned


def _plan_video(tree: SourceTree, n: int, video: str, intervals: Sequence[tuple[int, int]], settings: Settings,
                inputs: Inputs, report: Report, threshold: float | None) -> list[PoolPair]:
    """The pool pairs of one video; what is left out is counted in the report."""
    where = f"{tree.part} {file_subject(n)}/{video}"
    found = tree.frames(n, video)
    if isinstance(found, str):
        report.count("missing_folder", found)
        return []
    unpaired = len(found.rgb.keys() ^ found.depth.keys())
    if unpaired:
        report.count("frame_in_one_view", f"{where}: {unpaired} frame(s) in one view only", unpaired)
    box = None
    if inputs.boxes is not None:
        box = inputs.boxes.get((n, video))
        if box is None:
            report.count("no_box", f"no box for {file_subject(n)}/{video} in the box file: video left out")
            return []
    pairs, missing = pool_pairs(found.rgb.keys() & found.depth.keys(), settings.gap, settings.stride, intervals)
    if missing:
        report.count("missing_frame", f"{where}: {missing} pair(s) with a missing frame", missing)
    planned = []
    for first, second in pairs:
        au = inputs.au.change(n, video, first, second) if inputs.au else None
        if settings.intensity == "au" and au is None:
            report.count("no_au", f"{where} frames {first}, {second}: no AU values")
            continue
        key = make_key(n, video, first, second)
        rgb_out, depth_out, gray_out = pool_view_paths(n, key)
        task = ci.PairTask(key, str(found.rgb[first]), str(found.rgb[second]), str(found.depth[first]),
                           str(found.depth[second]), rgb_out=str(settings.out_dir / rgb_out),
                           depth_out=str(settings.out_dir / depth_out), gray_out=str(settings.out_dir / gray_out),
                           settings=settings.image_settings, box=box, measure=settings.intensity, au_change=au,
                           min_intensity=threshold)
        planned.append(PoolPair(n, video, first, second, au, task))
    return planned


def calibrate(values: Sequence[float], percentile: float) -> float:
    """The `percentile`-th percentile of the labeled MEs' intensities (linear interpolation)."""
    return float(np.percentile(np.asarray(values, np.float64), percentile))


def plot_histograms(path: Path, labeled: Sequence[float], pool: Sequence[float], threshold: float,
                    measure: str) -> None:
    """Histograms (densities) of labeled-ME and unlabeled-pair intensities with the threshold line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    bins = np.histogram_bin_edges([*labeled, *pool], bins=40)
    if pool:
        axes.hist(pool, bins=bins, density=True, alpha=0.5, label=f"unlabeled pairs ({len(pool)})")
    axes.hist(labeled, bins=bins, density=True, alpha=0.5, label=f"labeled MEs ({len(labeled)})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    axes.set_xlabel(f"intensity ({measure})")
    axes.set_ylabel("density")
    axes.legend()
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as err:
        raise UserError(f"{path}: could not be written ({err.strerror or err})") from None


def write_pool_lists(out: Path, kept: Sequence[tuple[str, str, str, float]]) -> None:
    """`data/v_rgb|v_depth|v_gray/pretrain.txt` from (rgb path, depth path, grey path, intensity):
    lines `<path> -1 0 <intensity>`, in the same order in every view."""
    for view, column in ((RGB_LISTS, 0), (DEPTH_LISTS, 1), (GRAY_LISTS, 2)):
        write_list(out / LIST_FOLDER / view / POOL_LIST, [list_line(k[column], UNLABELED, k[3]) for k in kept])


@dataclass(frozen=True)
class PoolOutcome:
    """The pool stage's numbers for the report, and every pair's intensity for the histogram."""
    parts: list[str]
    videos: int
    pairs: int
    kept: int
    status: Counter[str]
    values: list[float | None]


def pool_stage(rows: Sequence[AnnotatedRow], exclude: Sequence[Sheet], trees: Sequence[SourceTree],
               settings: Settings, inputs: Inputs, report: Report, threshold: float | None) -> PoolOutcome:
    """Plan and compute the unlabeled pairs of the release parts `trees`, outside the intervals of
    the ME annotation's `rows` and of the `--pool_exclude` sheets `exclude`; write pretrain.txt
    and intensity_pool.csv."""
    intervals: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
    extra = [row for sheet in exclude for row in parse_rows(sheet, report, labeled=False)]
    for row in [*rows, *extra]:
        intervals[(row.subject, row.video)].append((row.onset, row.end))
    planned = plan_pool(trees, intervals, settings, inputs, report, threshold)
    results = run_pairs([p.task for p in planned], settings, "pool", "pool pairs")
    kept, table, values = [], [], []
    for pair in planned:
        result = results[pair.task.key]
        for kind, detail in result.notes:
            report.count(kind, detail)
        if result.status == "skipped":
            report.count(result.kind, result.reason)
            continue
        value = ci.intensity_of(settings.intensity, result.mad, result.flow, pair.au)
        values.append(value)
        is_kept = result.status in ("written", "reused")
        if is_kept:
            kept.append((*(os.path.relpath(path, settings.out_dir)
                           for path in (pair.task.rgb_out, pair.task.depth_out, pair.task.gray_out)), value))
        table.append((pair.task.key, value, file_subject(pair.subject), pair.video, pair.first, pair.second,
                      result.mad, result.flow, pair.au, int(is_kept)))
    write_pool_lists(settings.out_dir, kept)
    write_csv(settings.out_dir / "intensity_pool.csv",
              ("key", "intensity", "subject", "video", "frame1", "frame2", "mad", "flow", "au", "kept"), table)
    status = Counter(r.status for r in results.values())
    print(f"pool: {len(planned)} pairs; kept {len(kept)}, dropped {status['dropped']}"
          + (f" below {threshold:.6g} ({settings.intensity})" if threshold is not None else "")
          + f", skipped {status['skipped']}")
    return PoolOutcome([t.part for t in trees], len({(p.subject, p.video) for p in planned}), len(planned),
                       len(kept), status, values)


@dataclass(frozen=True)
class Threshold:
    """The pool threshold: `source` 'calibrated', 'given' or None (no threshold); `labeled` holds
    the labeled intensities calibration uses (apex != onset, measure available)."""
    value: float | None
    source: str | None
    labeled: list[float]


def decide_threshold(settings: Settings, labeled: Sequence[tuple[LabeledPair, ci.PairResult]]) -> Threshold:
    """Calibrate (a percentile of the labeled intensities, printed) or take --intensity_threshold."""
    values = [v for p, r in labeled if p.row.apex != p.row.onset
              for v in [ci.intensity_of(settings.intensity, r.mad, r.flow, p.task.au_change)] if v is not None]
    if not settings.calibrate:
        given = settings.intensity_threshold
        return Threshold(given, None if given is None else "given", values)
    if not values:
        raise UserError(f"--calibrate: no labeled ME has a {settings.intensity!r} intensity")
    value = calibrate(values, settings.calibration_percentile)
    print(f"calibrated intensity threshold ({settings.intensity}, {settings.calibration_percentile:g}th percentile "
          f"of {len(values)} labeled MEs): {value:.6g}")
    return Threshold(value, "calibrated", values)
