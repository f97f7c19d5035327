"""CAS(ME)^3 preparation for DVSCL: the driver of `scripts/data/prepare_casme3.py`.

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
re-run skips pairs already written. `--out` is claimed through its run record (`run.json`,
`util.claim_folder`): a folder another tool wrote is refused, and one of other image settings
unless `--overwrite`, which first removes what the earlier preparation wrote (`OWNS`).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import util
from dataset import DEPTH_LISTS, GRAY_LISTS, LIST_FOLDER, POOL_FOLDER, RGB_LISTS, file_subject, list_subject
from scripts.datatools.casme3 import images as ci
from scripts.datatools.casme3.annotations import parse_rows, read_annotation
from scripts.datatools.casme3.frames import SourceTree
from scripts.datatools.casme3.labeled import LabeledPair, labeled_stage
from scripts.datatools.casme3.pairs import CACHE_FOLDER
from scripts.datatools.casme3.pool import PoolOutcome, Threshold, decide_threshold, plot_histograms, pool_stage
from scripts.datatools.casme3.report import print_summary, report_text
from scripts.datatools.casme3.settings import IMAGE_SETTINGS, Inputs, Settings, check, read_inputs
from scripts.datatools.common.crop import face_detector
from scripts.datatools.common.format import list_line, write_loso_lists
from scripts.datatools.common.report import Report, write_csv
from util import UserError, atomic_write_json, atomic_write_text

TOOL = "prepare_casme3.py"
# What the preparation writes into --out (what --overwrite removes): the labeled images of any
# number of classes, the pool, the lists, the per-pair cache and the report files.
OWNS = ("casme3_diff_me*", POOL_FOLDER, LIST_FOLDER, CACHE_FOLDER, "prepare_report.txt", "prepare_report.json",
        "class_counts.csv", "report_items.csv", "intensity_labeled.csv", "intensity_pool.csv",
        "intensity_histogram.png")


def claim(settings: Settings) -> util.RunRecord:
    """The output folder's run record, not yet saved: a folder of another tool is refused, and one
    of other image settings unless --overwrite (which removes what the earlier run wrote)."""
    identity = settings.identity()
    return util.claim_folder(settings.out_dir, TOOL, identity, OWNS, settings.overwrite,
                             may_change=[name for name in identity if name not in IMAGE_SETTINGS])


def prepare(settings: Settings) -> dict:
    """Run the whole preparation; returns the report (also written as prepare_report.json)."""
    check(settings)
    record = claim(settings)
    if settings.crop == "face":
        face_detector()
    inputs, report = read_inputs(settings), Report()
    sheet = read_annotation(settings.annotation, labeled=True, sheet=settings.sheet)
    exclude = [read_annotation(path, labeled=False) for path in settings.pool_exclude]
    tree_a = SourceTree(Path(settings.root), "Part A", report)
    trees = ([tree_a] if "a" in settings.pool else []) + (
        [SourceTree(Path(settings.part_b_root), "Part B", report)] if "b" in settings.pool else [])
    record.start()

    out = settings.out_dir
    rows = parse_rows(sheet, report, labeled=True)
    labeled = labeled_stage(rows, tree_a, settings, inputs, report)
    if not labeled:
        reasons = ", ".join(f"{k} {n}" for k, n in report.kinds("skipped").items())
        raise UserError(f"{sheet.name}: no usable ME ({reasons})")
    threshold = decide_threshold(settings, labeled)
    pool = pool_stage(rows, exclude, trees, settings, inputs, report, threshold.value) if trees else None
    if settings.calibrate:
        pool_values = [v for v in (pool.values if pool else []) if v is not None]
        plot_histograms(out / "intensity_histogram.png", threshold.labeled, pool_values, threshold.value,
                        settings.intensity)
    views = {view: {} for view in (RGB_LISTS, DEPTH_LISTS, GRAY_LISTS)}
    for pair, _ in labeled:
        paths = (pair.task.rgb_out, pair.task.depth_out, pair.task.gray_out)
        for lines, path in zip(views.values(), paths):
            lines.setdefault(list_subject(pair.row.subject), []).append(list_line(os.path.relpath(path, out),
                                                                                  pair.label))
    subjects = write_loso_lists(out / LIST_FOLDER, views, inputs.class_map.classes)
    report_json = write_reports(settings, inputs, report, len(sheet.rows), labeled, subjects, threshold, pool)
    record.finish(classes=report_json["classes"], subjects=report_json["subjects"],
                  samples=report_json["labeled"]["samples"], threshold=report_json["threshold"]["value"],
                  pool_pairs=report_json["pool"].get("kept", 0))
    return report_json


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
    atomic_write_text(out / "prepare_report.txt", report_text(report_json, report))
    write_csv(out / "class_counts.csv", ("subject", *classes, "total"),
              [(s, *(c.get(k, 0) for k in classes), sum(c.values())) for s, c in per_subject.items()])
    write_csv(out / "report_items.csv", ("category", "kind", "source", "detail"),
              [(i.category, i.kind, i.source, i.detail) for i in report.items])
    print_summary(report_json, report, out)
    return report_json
