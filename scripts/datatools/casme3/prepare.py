"""CAS(ME)^3 preparation for DVSCL: the driver of `scripts/prepare_casme3.py`.

Input: the Part A root (`RGB/<Subject>/<Filename>/color/<frame>.jpg`,
`depth/<Subject>/<Filename>[/depth]/<frame>.png`, 16-bit, 0 = no measurement), the ME annotation
(`.xlsx` sheet `label`, `.xls` or `.csv` with columns Subject, Filename, Onset, Apex, Offset,
emotion) and optionally the Part B root (same layout, unlabeled).

Output, all under `--out` (never inside an input tree), in the data format of `dataset.py`, paths
in lists relative to it:

    casme3_diff_me<K>/casme3_diff_imgs_all/<class>/<key>.png         RGB difference, 8-bit, 3 channels
    casme3_diff_me<K>/casme3_diff_depth_all/<class>/<key>_depth.png  depth difference, 8-bit, 1 channel
    casme3_diff_me<K>/casme3_diff_gray_all/<class>/<key>_gray.png    grey (luma) difference, 8-bit, 1 channel
    casme3_pool/rgb/<subject>/<key>.png, casme3_pool/depth/<subject>/<key>_depth.png,
    casme3_pool/gray/<subject>/<key>_gray.png                        unlabeled pairs
    data/v_rgb|v_depth|v_gray/spNO<n>_train.txt, spNO<n>_test.txt, pretrain.txt; data/v_rgb/subName.txt;
    data/classes.txt
    prepare_report.{txt,json}, class_counts.csv, report_items.csv, intensity_labeled.csv,
    intensity_pool.csv, intensity_histogram.png (with --calibrate)

`<key>` is `dataset.make_key` of the pair (second = apex, first = onset for MEs); K is the number
of classes. The encoding is in `images.py`. Per-pair measures are cached in `.prepare_cache/` so a
re-run skips pairs already written.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from dataset import (CLASS_LIST, DEPTH_LISTS, GRAY_LISTS, LIST_FOLDER, RGB_LISTS, SUBJECT_LIST, file_subject,
                     list_line, list_subject, split_list, subject_of, write_list)
from scripts.datatools.casme3 import images as ci
from scripts.datatools.casme3.annotations import parse_rows, read_table
from scripts.datatools.casme3.frames import SourceTree
from scripts.datatools.casme3.labeled import LabeledPair, labeled_stage
from scripts.datatools.casme3.pairs import check_cache
from scripts.datatools.casme3.pool import PoolOutcome, Threshold, decide_threshold, plot_histograms, pool_stage
from scripts.datatools.casme3.report import Report, print_summary, report_text, write_csv
from scripts.datatools.casme3.settings import Inputs, Settings, check, read_inputs
from util import UserError, atomic_write_json, atomic_write_text

SPLITS = ("train", "test")


def prepare(settings: Settings) -> dict:
    """Run the whole preparation; returns the report (also written as prepare_report.json)."""
    check(settings)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    check_cache(settings)
    if settings.crop == "face":
        try:
            ci.face_detector()
        except RuntimeError as err:
            raise UserError(str(err)) from None
    inputs, report = read_inputs(settings), Report()

    table = read_table(settings.annotation, settings.sheet)
    rows = parse_rows(table, report, labeled=True)
    tree_a = SourceTree(Path(settings.root), "Part A", report)
    labeled = labeled_stage(rows, tree_a, settings, inputs, report)
    if not labeled:
        reasons = ", ".join(f"{k} {n}" for k, n in report.kinds("skipped").items())
        raise UserError(f"{table.name}: no usable ME ({reasons})")
    threshold = decide_threshold(settings, labeled)
    pool = pool_stage(rows, tree_a, settings, inputs, report, threshold.value) if settings.pool != "none" else None
    if settings.calibrate:
        pool_values = [v for v in (pool.values if pool else []) if v is not None]
        plot_histograms(out / "intensity_histogram.png", threshold.labeled, pool_values, threshold.value,
                        settings.intensity)
    samples = [(p.row.subject, os.path.relpath(p.task.rgb_out, out), os.path.relpath(p.task.depth_out, out),
                os.path.relpath(p.task.gray_out, out), p.label) for p, _ in labeled]
    subjects = write_lists(out, samples, inputs.class_map.classes)
    return write_reports(settings, inputs, report, len(table.rows), labeled, subjects, threshold, pool)


def write_lists(out: Path, samples: Sequence[tuple[int, str, str, str, int]], classes: Sequence[str]) -> list[str]:
    """Per-subject lists from (subject, rgb path, depth path, grey path, label), paths relative to
    `out`.

    S_test holds S's samples, S_train every other subject's, in the order given (every view in
    the same order). Lists of subjects an earlier run wrote that have no sample now are removed.
    Returns the subject names written to subName.txt.
    """
    lists = out / LIST_FOLDER
    subjects = sorted({s[0] for s in samples})
    names = [list_subject(n) for n in subjects]
    wanted = {split_list(name, split) for name in names for split in SPLITS}
    for view, column in ((RGB_LISTS, 1), (DEPTH_LISTS, 2), (GRAY_LISTS, 3)):
        folder = lists / view
        folder.mkdir(parents=True, exist_ok=True)
        for n in subjects:
            for split, chosen in (("test", [s for s in samples if s[0] == n]),
                                  ("train", [s for s in samples if s[0] != n])):
                write_list(folder / split_list(list_subject(n), split), [list_line(s[column], s[4]) for s in chosen])
        for stale in folder.iterdir():
            if _is_split_list(stale.name) and stale.name not in wanted:
                stale.unlink()
    write_list(lists / RGB_LISTS / SUBJECT_LIST, names)
    write_list(lists / CLASS_LIST, classes)
    return names


def _is_split_list(name: str) -> bool:
    """Whether `name` is a subject's LOSO list as `split_list` names it."""
    return any(name == split_list(subject_of(name), split) for split in SPLITS)


def write_reports(settings: Settings, inputs: Inputs, report: Report, annotation_rows: int,
                  labeled: Sequence[tuple[LabeledPair, ci.PairResult]], subjects: Sequence[str],
                  threshold: Threshold, pool: PoolOutcome | None) -> dict:
    """prepare_report.json/.txt, class_counts.csv, report_items.csv, intensity_labeled.csv; prints
    a summary and returns the JSON report."""
    out, classes = settings.out_dir, inputs.class_map.classes
    write_csv(out / "intensity_labeled.csv",
              ("key", "intensity", "subject", "video", "frame1", "frame2", "mad", "flow", "au", "class"),
              [(p.task.key, ci.intensity_of(settings.intensity, r.mad, r.flow, p.task.au_change),
                file_subject(p.row.subject), p.row.video, p.row.onset, p.row.apex, r.mad, r.flow,
                p.task.au_change, p.class_name) for p, r in labeled])
    per_subject: dict[str, Counter[str]] = {name: Counter() for name in subjects}
    for pair, _ in labeled:
        per_subject[list_subject(pair.row.subject)][pair.class_name] += 1
    status = Counter(r.status for _, r in labeled)
    pool_json: dict = {"enabled": pool is not None}
    if pool is not None:
        pool_json.update(parts=pool.parts, gap=settings.gap, stride=settings.stride, videos=pool.videos,
                         pairs=pool.pairs, kept=pool.kept, dropped=pool.status["dropped"],
                         skipped=pool.status["skipped"], written=pool.status["written"],
                         reused=pool.status["reused"])
    report_json = {
        "settings": dict(sorted(asdict(settings).items())),
        "classes": list(classes),
        "image_folder": inputs.image_folder,
        "subjects": list(subjects),
        "labeled": {"annotation_rows": annotation_rows, "samples": len(labeled), "written": status["written"],
                    "reused": status["reused"], "per_subject": {s: dict(c) for s, c in per_subject.items()},
                    "per_class": dict(Counter(p.class_name for p, _ in labeled))},
        "items": [vars(item) for item in report.items],
        "item_counts": {c: dict(report.kinds(c)) for c in ("skipped", "excluded", "anomaly")},
        "counted": {k: {"count": n, "example": report.examples[k]} for k, n in sorted(report.counts.items())},
        "threshold": {"value": threshold.value, "source": threshold.source, "measure": settings.intensity,
                      "percentile": settings.calibration_percentile if settings.calibrate else None,
                      "n_labeled": len(threshold.labeled)},
        "pool": pool_json,
    }
    atomic_write_json(out / "prepare_report.json", report_json)
    atomic_write_text(out / "prepare_report.txt", report_text(report_json))
    write_csv(out / "class_counts.csv", ("subject", *classes, "total"),
              [(s, *(c.get(k, 0) for k in classes), sum(c.values())) for s, c in per_subject.items()])
    write_csv(out / "report_items.csv", ("category", "kind", "source", "detail"),
              [(i.category, i.kind, i.source, i.detail) for i in report.items])
    print_summary(report_json, report, out)
    return report_json
