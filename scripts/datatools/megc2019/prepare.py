"""MEGC2019 composite preparation: the driver of `scripts/data/prepare_megc2019.py`.

Input: any of SMIC-HS, CASME II and SAMM in their release layouts (`databases`). Output, all under
`--out` (never inside an input tree), in the data format of `dataset.py`, paths in lists relative
to it:

    megc2019_diff/<database>/<class>/<key>.png    RGB onset-apex difference, 8-bit, 3 channels
    data/v_rgb/<subject>_test.txt, <subject>_train.txt, subName.txt; data/classes.txt
    megc2019_samples.csv                           one row a sample: database, subject, clip,
                                                   emotion, class, onset, apex, apex_source
                                                   (annotated|estimated), apex_reason (why estimated)
    prepare_report.txt                             the counts against the standard composite's, and
                                                   every row left out or estimated, and why

List lines are `<path> <label> <dbtype>`: labels 0 negative, 1 positive, 2 surprise; dbtype 1
SMIC, 2 CASME II, 3 SAMM. A subject's train list holds every other subject's samples. There is no
depth view: evaluate the lists with `--view RGB`.

`--out` is claimed through its run record (`run.json`, `util.claim_folder`): a folder another tool
wrote is refused, and one of other settings unless `--overwrite`, which first removes what the
earlier preparation wrote (`OWNS`).
"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

import util
from dataset import LIST_FOLDER, RGB_LISTS
from scripts.datatools.common.crop import face_detector
from scripts.datatools.common.format import list_line, write_loso_lists
from scripts.datatools.common.report import Report, write_csv
from scripts.datatools.common.tasks import run_tasks
from scripts.datatools.megc2019 import databases as db
from scripts.datatools.megc2019.images import ClipResult, ClipTask, ImageSettings, process_clip
from util import UserError, atomic_write_text

TOOL = "prepare_megc2019.py"
IMAGE_FOLDER = "megc2019_diff"
SAMPLES_CSV = "megc2019_samples.csv"
REPORT_FILE = "prepare_report.txt"
OWNS = (IMAGE_FOLDER, LIST_FOLDER, SAMPLES_CSV, REPORT_FILE)  # what --overwrite removes
INPUTS = ("smic", "casme2", "samm")


@dataclass(frozen=True)
class Settings:
    """Every flag of `scripts/data/prepare_megc2019.py` (same names); paths as given."""
    out: str
    smic: str | None
    casme2: str | None
    casme2_sheet: str | None
    samm: str | None
    samm_sheet: str | None
    estimate_bad_apex: bool
    crop: str
    crop_margin: float
    image_size: int
    rgb_gain: float
    workers: int
    overwrite: bool

    @classmethod
    def from_flags(cls, flags: argparse.Namespace) -> Settings:
        """The settings of parsed flags."""
        return cls(**vars(flags))

    @property
    def given(self) -> list[str]:
        """The databases given (of INPUTS), in database order."""
        return [name for name in INPUTS if getattr(self, name)]

    @property
    def image_settings(self) -> ImageSettings:
        """The settings that change the written images."""
        return ImageSettings(self.crop, self.crop_margin, self.image_size, self.rgb_gain)

    def identity(self) -> dict:
        """What determines the output, as the output folder's run record holds it: every flag but
        --out, --workers and --overwrite, the databases' folders and sheets resolved."""
        values = {k: v for k, v in asdict(self).items() if k not in ("out", "workers", "overwrite")}
        for name in (*INPUTS, "casme2_sheet", "samm_sheet"):
            if values[name] is not None:
                values[name] = str(Path(values[name]).resolve())
        return values


def check(settings: Settings) -> None:
    """Validate flag values and paths; UserError naming the first problem."""
    given = settings.given
    if not given:
        raise UserError("no database given: pass at least one of --smic, --casme2, --samm")
    for name in given:
        if not Path(getattr(settings, name)).is_dir():
            raise UserError(f"{getattr(settings, name)}: --{name} folder not found")
    out = Path(settings.out).resolve()
    for name in given:
        root = Path(getattr(settings, name)).resolve()
        if out == root or root in out.parents:
            raise UserError(f"--out {settings.out} is inside the input tree --{name} {getattr(settings, name)}; "
                            f"choose an output folder outside it")
    if 0 < settings.image_size < 16:
        raise UserError(f"--image_size {settings.image_size}: use 0 (keep the crop size) or at least 16")


def read_clips(settings: Settings, report: Report) -> list[db.Clip]:
    """The clips of every given database, in database order."""
    clips: list[db.Clip] = []
    if settings.smic:
        clips += db.read_smic(Path(settings.smic), report)
    if settings.casme2:
        clips += db.read_casme2(Path(settings.casme2), _optional(settings.casme2_sheet), report,
                                settings.estimate_bad_apex)
    if settings.samm:
        clips += db.read_samm(Path(settings.samm), _optional(settings.samm_sheet), report, settings.estimate_bad_apex)
    return clips


def _optional(path: str | None) -> Path | None:
    return Path(path) if path else None


def prepare(settings: Settings) -> dict:
    """Run the whole preparation; returns the summary (counts, subjects, what was left out)."""
    check(settings)
    out = Path(settings.out)
    record = util.claim_folder(out, TOOL, settings.identity(), OWNS, settings.overwrite)
    if settings.crop == "face":
        face_detector()
    report = Report()
    clips = read_clips(settings, report)
    if not clips:
        raise UserError(f"no usable micro-expression in {', '.join(str(getattr(settings, n)) for n in settings.given)}")
    record.start()
    tasks = [ClipTask(c.subject, c.video, c.frames, c.apex, str(out / IMAGE_FOLDER / c.database / c.class_name),
                      settings.image_settings) for c in clips]
    samples = []
    results = run_tasks(process_clip, tasks, settings.workers)
    for clip, result in zip(clips, tqdm(results, total=len(tasks), desc="MEGC2019 clips", unit="clip")):
        if result.status == "skipped":
            db.warn(report, result.kind, clip.source, result.reason)
            continue
        for kind, detail in result.notes:
            report.add("anomaly", kind, clip.source, detail)
        if clip.apex is None:
            report.add("estimated", clip.apex_reason, clip.source, f"apex estimated: frame {result.apex} of frames "
                                                                  f"{clip.frames[0][0]}..{clip.frames[-1][0]}")
        samples.append((clip, result))
    if not samples:
        raise UserError(f"no clip could be encoded ({', '.join(f'{k} {n}' for k, n in report.kinds('skipped').items())})")
    lines: dict[str, list[str]] = {}
    for clip, result in samples:
        rel = Path(result.path).relative_to(out).as_posix()
        lines.setdefault(clip.subject, []).append(list_line(rel, clip.label, dbtype=db.DBTYPES[clip.database]))
    write_loso_lists(out / LIST_FOLDER, {RGB_LISTS: lines}, db.CLASSES)
    write_samples(out / SAMPLES_CSV, out, samples)
    summary = summarize(samples, report, settings)
    text = summary_text(summary)
    sections = (("skipped", "left out"), ("estimated", "apex estimated"), ("excluded", "excluded by the mapping"),
                ("anomaly", "notes"))
    atomic_write_text(out / REPORT_FILE, text + "\n".join(report.item_lines(sections)) + "\n")
    print(text, end="")
    record.finish(samples=summary["samples"], counts=summary["counts"], subjects=summary["subjects"])
    return summary


def write_samples(path: Path, out: Path, samples: Sequence[tuple[db.Clip, ClipResult]]) -> None:
    """The samples table (CSV): one row a sample, the apex marked annotated or estimated."""
    write_csv(path, ("key", "database", "dbtype", "subject", "clip", "emotion", "class", "label", "onset", "apex",
                     "apex_source", "apex_reason", "rgb"),
              [(result.key, clip.database, db.DBTYPES[clip.database], clip.subject, clip.video, clip.emotion,
                clip.class_name, clip.label, clip.onset, result.apex,
                "annotated" if clip.apex is not None else "estimated", clip.apex_reason,
                Path(result.path).relative_to(out).as_posix()) for clip, result in samples])


def summarize(samples: Sequence[tuple[db.Clip, ClipResult]], report: Report, settings: Settings) -> dict:
    """Counts per database and class, subjects per database, the databases given, the estimated
    apexes by '<database name> <reason>' (all, and those a sheet lacks or gets wrong), and the
    report's items."""
    counts = {name: {c: 0 for c in db.CLASSES} for name in db.DATABASES}
    subjects: dict[str, list[str]] = {name: [] for name in db.DATABASES}
    for clip, _ in samples:
        counts[clip.database][clip.class_name] += 1
        if clip.subject not in subjects[clip.database]:
            subjects[clip.database].append(clip.subject)
    estimated = Counter((db.database_name(clip.database), clip.apex_reason) for clip, _ in samples
                        if clip.apex is None)
    return {"out": str(Path(settings.out)), "samples": len(samples), "counts": counts, "subjects": subjects,
            "databases": settings.given,
            "estimate_bad_apex": settings.estimate_bad_apex, "estimated_apex": _by_label(estimated),
            "bad_apex_estimated": _by_label({key: n for key, n in estimated.items() if key[1] != db.SMIC_APEX_REASON}),
            "excluded": dict(sorted(report.kinds("excluded").items())),
            "left_out": [asdict(item) for item in report.items if item.category == "skipped"],
            "notes": [asdict(item) for item in report.items if item.category == "anomaly"]}


def _by_label(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """{'<database name> <reason>': count}, sorted, of counts by (database name, reason)."""
    return {f"{name} {reason}": n for (name, reason), n in sorted(counts.items())}


def summary_text(summary: dict) -> str:
    """The counts table, then one line each for what was excluded, noted, left out (against the
    standard composite) and estimated."""
    header = "database  dbtype  subjects" + "".join(c.rjust(10) for c in db.CLASSES) + "total".rjust(8)
    lines = [f"MEGC2019 composite: {summary['samples']} samples -> {summary['out']}", header]
    totals = Counter()
    for name in db.DATABASES:
        counts, n_subjects = summary["counts"][name], len(summary["subjects"][name])
        totals.update(counts)
        lines.append(name.ljust(8) + str(db.DBTYPES[name]).rjust(8) + str(n_subjects).rjust(10)
                     + "".join(str(counts[c]).rjust(10) for c in db.CLASSES) + str(sum(counts.values())).rjust(8))
    lines.append("all".ljust(16) + str(sum(map(len, summary["subjects"].values()))).rjust(10)
                 + "".join(str(totals[c]).rjust(10) for c in db.CLASSES) + str(summary["samples"]).rjust(8))
    excluded = summary["excluded"]
    lines.append("excluded by the MEGC2019 mapping: "
                 + (", ".join(f"{kind} {n}" for kind, n in excluded.items()) if excluded else "none"))
    notes = Counter(item["kind"] for item in summary["notes"])
    if notes:
        lines.append("kept, with a note: " + ", ".join(f"{k} {n}" for k, n in sorted(notes.items())))
    lines.append(standard_text(summary))
    estimated, bad_apex = (sum(summary[key].values()) for key in ("estimated_apex", "bad_apex_estimated"))
    lines.append(f"apex estimated for {estimated} clips, {estimated - bad_apex} of them SMIC's (no apex annotation): "
                 f"the frame whose blurred crop differs most from the onset's; the others annotated")
    lines.append(f"lists: {Path(summary['out']) / LIST_FOLDER / RGB_LISTS} (RGB only: evaluate with --view RGB); "
                 f"samples: {Path(summary['out']) / SAMPLES_CSV}; report: {Path(summary['out']) / REPORT_FILE}")
    return "\n".join(lines) + "\n"


def standard_text(summary: dict) -> str:
    """One line: how far the samples are from the standard composite's 442, and why (rows left
    out, databases not given, rows the releases lack), and which apexes of the sheets are estimated."""
    standard = {name: sum(counts.values()) for name, counts in db.STANDARD_COUNTS.items()}
    kept = {name: sum(counts.values()) for name, counts in summary["counts"].items()}
    given = summary["databases"]
    reasons = []
    if summary["left_out"]:
        kinds = Counter(item["kind"] for item in summary["left_out"])
        reasons.append(f"{len(summary['left_out'])} left out ({_counts_text(kinds)})")
    reasons += [f"{db.database_name(name)} not given" for name in db.DATABASES if name not in given]
    lacking = sum(standard[name] - kept[name] for name in given) - len(summary["left_out"])
    if lacking:
        reasons.append(f"{lacking} not in the given releases" if lacking > 0 else f"{-lacking} more than standard")
    return (f"kept {summary['samples']} of the {sum(standard.values())} samples of the standard composite ("
            + ", ".join(f"{db.database_name(name)} {kept[name]} of {standard[name]}" for name in db.DATABASES) + ")"
            + (": " + ", ".join(reasons) if reasons else "")
            + f"; {sum(summary['bad_apex_estimated'].values())} with an estimated apex"
            + (f" ({_counts_text(summary['bad_apex_estimated'])})" if summary["bad_apex_estimated"] else "")
            + ("" if summary["estimate_bad_apex"] else " (--no_estimate_bad_apex: rows with a bad apex left out)"))


def _counts_text(counts: dict[str, int]) -> str:
    """`a: 1, b: 2`, in key order."""
    return ", ".join(f"{key}: {n}" for key, n in sorted(counts.items()))
