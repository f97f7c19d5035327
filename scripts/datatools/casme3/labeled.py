"""The labeled MEs of a CAS(ME)^3 preparation: one difference pair per usable annotation row."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from dataset import file_subject, labeled_view_paths, make_key
from scripts.datatools.casme3 import images as ci
from scripts.datatools.casme3.annotations import AnnotatedRow
from scripts.datatools.casme3.frames import SourceTree
from scripts.datatools.casme3.pairs import run_pairs
from scripts.datatools.casme3.settings import Inputs, Settings
from scripts.datatools.common.report import Report
from util import UserError


@dataclass(frozen=True)
class LabeledPair:
    """A labeled ME to write: its annotation row, class and task."""
    row: AnnotatedRow
    label: int
    class_name: str
    task: ci.PairTask


def plan_labeled(rows: Sequence[AnnotatedRow], tree: SourceTree, settings: Settings, inputs: Inputs,
                 report: Report) -> list[LabeledPair]:
    """One task per usable ME; every row left out is reported with its reason."""
    per_video: dict[tuple[int, str], list[AnnotatedRow]] = defaultdict(list)
    for row in rows:
        per_video[(row.subject, row.video)].append(row)
    for (n, video), group in sorted(per_video.items()):
        if len(group) > 1:
            report.add("anomaly", "several_mes", f"{file_subject(n)}/{video}",
                       f"{len(group)} MEs in one video (rows {', '.join(str(r.row_no) for r in group)})")
    seen: dict[tuple[int, str, int, int], AnnotatedRow] = {}
    planned = []
    for row in rows:
        if row.emotion not in inputs.class_map.labels:
            report.add("skipped", "unknown_emotion", row.source,
                       f"emotion {row.emotion!r} is not in the class mapping")
            continue
        label = inputs.class_map.labels[row.emotion]
        if label is None:
            report.add("excluded", "class_map", row.source,
                       f"emotion {row.emotion!r} left out by the class mapping")
            continue
        identity = (row.subject, row.video, row.onset, row.apex)
        if identity in seen:
            first = seen[identity]
            same = "same emotion" if first.emotion == row.emotion else f"emotion {first.emotion!r} there"
            report.add("skipped", "duplicate", row.source,
                       f"same subject, video, onset and apex as {first.source} ({same})")
            continue
        seen[identity] = row
        if row.apex == row.onset:
            detail = f"Apex == Onset == {row.onset}: all-zero difference"
            if not settings.keep_zero_gap:
                report.add("skipped", "apex_equals_onset", row.source, detail + " (--keep_zero_gap keeps it)")
                continue
            report.add("anomaly", "apex_equals_onset", row.source, detail + ": kept")
        if row.apex < row.onset:
            report.add("skipped", "apex_before_onset", row.source, f"Apex {row.apex} before Onset {row.onset}")
            continue
        paths = tree.frame_paths(row.subject, row.video, row.onset, row.apex)
        if isinstance(paths, str):
            kind = "missing_frame" if " frame " in paths else "missing_folder"
            report.add("skipped", kind, row.source, paths)
            continue
        box = None
        if inputs.boxes is not None:
            box = inputs.boxes.get((row.subject, row.video))
            if box is None:
                report.add("skipped", "no_box", row.source,
                           f"no box for {file_subject(row.subject)}/{row.video} in the box file")
                continue
        class_name = inputs.class_map.classes[label]
        key = make_key(row.subject, row.video, row.onset, row.apex)
        rgb_out, depth_out, gray_out = labeled_view_paths(len(inputs.class_map.classes), class_name, key)
        au = inputs.au.change(row.subject, row.video, row.onset, row.apex) if inputs.au else None
        task = ci.PairTask(key, *map(str, paths), rgb_out=str(settings.out_dir / rgb_out),
                           depth_out=str(settings.out_dir / depth_out), gray_out=str(settings.out_dir / gray_out),
                           settings=settings.image_settings, box=box, measure=settings.intensity, au_change=au)
        planned.append(LabeledPair(row, label, class_name, task))
    return planned


def _strict_check(report: Report, settings: Settings) -> None:
    item = report.first("skipped")
    if settings.strict and item is not None:
        raise UserError(f"{item.source}: {item.detail} (--strict)")


def labeled_stage(rows: Sequence[AnnotatedRow], tree: SourceTree, settings: Settings, inputs: Inputs,
                  report: Report) -> list[tuple[LabeledPair, ci.PairResult]]:
    """Plan, compute and check the labeled MEs; the usable ones with their results, in subject,
    video, onset, apex order."""
    planned = plan_labeled(rows, tree, settings, inputs, report)
    _strict_check(report, settings)
    results = run_pairs([p.task for p in planned], settings, "labeled", "labeled MEs")
    usable = []
    for pair in planned:
        result = results[pair.task.key]
        if result.status == "skipped":
            report.add("skipped", result.kind, pair.row.source, result.reason)
            continue
        for kind, detail in result.notes:
            report.add("anomaly", kind, pair.row.source, detail)
        usable.append((pair, result))
    _strict_check(report, settings)
    return sorted(usable, key=lambda pr: (pr[0].row.subject, pr[0].row.video, pr[0].row.onset, pr[0].row.apex))
