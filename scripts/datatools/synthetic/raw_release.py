"""The synthetic dataset as a raw CAS(ME)^3 release (`scripts/data/make_synthetic_casme3.py --raw_release`).

The generator's subjects, labeled samples, pool pairs and nuisances, written as what
`scripts/data/prepare_casme3.py` reads (the layout of `scripts.datatools.fake_release` and of the real
release) instead of as difference images::

    partA/RGB/spNO.<n>/<video>/color/<frame>.jpg     labeled subjects: RGB frames (JPEG, OpenCV, quality 95)
    partA/depth/spNO.<n>/<video>/depth/<frame>.png   16-bit depth frames in mm (0 = no measurement)
    partB/...                                        pool-only subjects, same layout
    cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx        sheet 'label': one row per labeled sample
    ground_truth.csv                                 what every labeled sample and pool pair carries

Every pair is rendered by `render.render_pair_frames` from the random stream it has in the
prepared layout, so its onset and apex frames are the frames the generator differences there.
Frame numbers are new. In each of a subject's videos the pairs follow one another in the order of
their planned frames, each starting a new block of ``stride`` frames, so that the pool sampling of
`scripts.datatools.casme3.pool.pool_pairs` with prepare_casme3.py's default ``--gap`` and
``--stride`` (pairs (f, f + gap) every stride frames from the video's first frame, outside every
annotated interval) finds every pool pair and nothing else. A labeled sample is the frames onset
to offset (offset = apex + ``OFFSET_FRAMES``), its in-between frames rendered part-way along
onset -> apex -> onset (`render.render_between`); a pool pair is the frames f and f + gap.

Random streams beyond the prepared layout's: in-between frames ``[seed, 6, subject, stream,
frame - onset]``, the emotion of a labeled sample ``[seed, 7, subject, stream]``. The workbook is
written with fixed dates, so the same arguments give the same bytes.

Public API: ``write_release``, ``RAW_ENTRIES``, ``GROUND_TRUTH_NAME``, ``GROUND_TRUTH_COLUMNS``.
"""
from __future__ import annotations

import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from dataset import DEFAULT_CLASS_NAMES, file_subject, make_key
from scripts.datatools.casme3.annotations import EMOTION_TO_CLASS
from scripts.datatools.casme3.settings import POOL_GAP, POOL_STRIDE
from scripts.datatools.common.report import write_csv
from scripts.datatools.fake_release import (ANNOTATION_NAME, video_folders, write_annotation, write_depth_frame,
                                            write_rgb_frame)
from scripts.datatools.synthetic.face import AU_NAMES, Subject, make_subject
from scripts.datatools.synthetic.regime import Regime
from scripts.datatools.synthetic.render import PairFrames, head_motion, render_between, render_pair_frames

if TYPE_CHECKING:
    from scripts.datatools.synthetic.generate import _Plan

PART_A, PART_B = "partA", "partB"
GROUND_TRUTH_NAME = "ground_truth.csv"
RAW_ENTRIES = (PART_A, PART_B, ANNOTATION_NAME, GROUND_TRUTH_NAME)
OFFSET_FRAMES = 3  # frames from apex back to the neutral face
GROUND_TRUTH_COLUMNS = ("key", "split", "part", "subject", "video", "onset", "apex", "offset", "label", "class",
                        "action_class", "emotion", "aus", "apex_equals_onset", "head_dx_px", "head_dy_px",
                        "head_roll_deg", "head_dz_mm", "head_motion_px", "blink", "au_displacement_px",
                        "synthetic_key")
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_DOCUMENT_TIME = b"2000-01-01T00:00:00Z"


@dataclass(frozen=True)
class _Placed:
    """A planned pair at its place in the release: video and frame numbers (offset None for pool pairs)."""

    plan: _Plan
    video: str
    onset: int
    apex: int
    offset: int | None

    @property
    def frame_numbers(self) -> list[int]:
        """The frames this pair writes: onset to offset for a labeled sample, the two frames of a pool pair."""
        if self.offset is None:
            return [self.onset, self.apex]
        return list(range(self.onset, self.offset + 1))

    def apex_weight(self, frame: int) -> float:
        """How far `frame` is from onset (0) to apex (1): rising to the apex, falling to 0 at offset."""
        if frame <= self.apex:
            return (frame - self.onset) / (self.apex - self.onset)
        return (self.offset - frame) / (self.offset - self.apex)


def place_pairs(plans: Sequence[_Plan], gap: int, stride: int) -> list[_Placed]:
    """Frame numbers of one subject's pairs: per video (the planned one), in the order of their
    planned frames, each from the next block start 1, 1 + stride, ... after the previous pair."""
    by_video: dict[str, list[_Plan]] = defaultdict(list)
    for plan in plans:
        by_video[plan.video].append(plan)
    placed = []
    for video in sorted(by_video):
        start = 1
        for plan in sorted(by_video[video], key=lambda p: (p.first, p.second)):
            if plan.label >= 0:
                apex = start + plan.second - plan.first
                pair = _Placed(plan, video, start, apex, apex + OFFSET_FRAMES)
            else:
                pair = _Placed(plan, video, start, start + gap, None)
            placed.append(pair)
            start += stride * ((pair.frame_numbers[-1] - start) // stride + 1)
    return placed


def _video_frames(subj: Subject, pair: PairFrames, placed: _Placed, seed: int
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(frame number, (S, S, 3) uint8 RGB, (S, S) int32 depth in mm) of every frame of `placed`."""
    for frame in placed.frame_numbers:
        if frame == placed.onset:
            yield frame, pair.rgb_onset, pair.depth_onset
        elif frame == placed.apex:
            yield frame, pair.rgb_apex, pair.depth_apex
        else:
            rng = np.random.default_rng([seed, 6, subj.number, placed.plan.index, frame - placed.onset])
            yield frame, *render_between(subj, pair, placed.apex_weight(frame), rng)


def _emotion(seed: int, subject: int, plan: _Plan, class_name: str) -> str:
    """An annotation emotion of `class_name` (negative: disgust, fear, anger or sad, drawn)."""
    emotions = sorted(e for e, c in EMOTION_TO_CLASS.items() if c == class_name)
    return str(np.random.default_rng([seed, 7, subject, plan.index]).choice(emotions))


def _in_au_order(aus: Sequence[str]) -> list[str]:
    """AU names sorted by AU number (the order of `face.AU_NAMES`)."""
    return sorted(aus, key=AU_NAMES.index)


def _truth_row(subj: Subject, pair: PairFrames, placed: _Placed, part: str, class_name: str,
               emotion: str) -> tuple:
    """The `GROUND_TRUTH_COLUMNS` values of one rendered pair."""
    plan = placed.plan
    motion = head_motion(subj, pair)
    return (make_key(subj.number, placed.video, placed.onset, placed.apex),
            "labeled" if plan.label >= 0 else "pool", part, file_subject(subj.number), placed.video,
            placed.onset, placed.apex, placed.offset, plan.label, class_name, plan.action_class, emotion,
            "+".join(_in_au_order(plan.aus)), int(plan.same_frame),
            motion.dx_px, motion.dy_px, motion.roll_deg, motion.dz_mm, motion.mean_px, int(pair.blink != 0.0),
            pair.max_displacement_px, plan.key)


def _write_subject(root: Path, subj: Subject, plans: Sequence[_Plan], args: dict
                   ) -> Iterator[tuple[PairFrames, _Placed, str, str]]:
    """Render and write the frames of one subject's pairs; yield each pair with its class name and
    emotion ('' for pool pairs)."""
    seed, regime = args["seed"], Regime(**args["regime"])
    classes = DEFAULT_CLASS_NAMES[args["n_classes"]]
    for placed in place_pairs(plans, POOL_GAP, POOL_STRIDE):
        plan = placed.plan
        pair = render_pair_frames(subj, plan.index, plan.aus, plan.same_frame, seed, regime)
        rgb_dir, depth_dir = video_folders(root, file_subject(subj.number), placed.video)
        for frame, rgb, depth in _video_frames(subj, pair, placed, seed):
            write_rgb_frame(rgb_dir, frame, np.ascontiguousarray(rgb[..., ::-1]))
            write_depth_frame(depth_dir, frame, depth.astype(np.uint16))
        class_name = classes[plan.label] if plan.label >= 0 else ""
        yield pair, placed, class_name, _emotion(seed, subj.number, plan, class_name) if class_name else ""


def _make_reproducible(workbook: Path) -> None:
    """Rewrite an .xlsx (a zip archive) with fixed entry times and document dates: openpyxl stamps
    both with the time of writing."""
    with zipfile.ZipFile(workbook) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(workbook, "w") as archive:
        for name, data in entries:
            if name == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*", rb"\g<1>" + FIXED_DOCUMENT_TIME, data)
            archive.writestr(zipfile.ZipInfo(name, FIXED_ZIP_TIME), data, compress_type=zipfile.ZIP_DEFLATED)


def write_release(out: Path, args: dict, labeled_numbers: Sequence[int], plans: dict[int, list[_Plan]]) -> dict:
    """Write the raw release of `plans` (subject number -> the generator's planned pairs) under
    `out`: the frames of `labeled_numbers` in Part A, of the other subjects in Part B, the
    annotation workbook and the ground truth. `args` are the generator's arguments.

    Returns the pool counts (pairs, with_motion, noise_only, part_a, part_b), the frames written
    per part and the largest AU displacement in pixels, for the generator's summary.
    """
    truth, annotation, max_displacement = [], [], 0.0
    frames = {PART_A: 0, PART_B: 0}
    for folder in (out / part / top for part in frames for top in ("RGB", "depth")):
        folder.mkdir(parents=True, exist_ok=True)  # also for a part without subjects: prepare_casme3.py needs both
    for number, subject_plans in plans.items():
        part = PART_A if number in labeled_numbers else PART_B
        subj = make_subject(args["seed"], number, args["image_size"])
        for pair, placed, class_name, emotion in _write_subject(out / part, subj, subject_plans, args):
            truth.append(_truth_row(subj, pair, placed, part, class_name, emotion))
            frames[part] += len(placed.frame_numbers)
            max_displacement = max(max_displacement, pair.max_displacement_px)
            if class_name:
                annotation.append((file_subject(number), placed.video, placed.onset, placed.apex, placed.offset,
                                   "+".join(au[2:] for au in _in_au_order(placed.plan.aus)), None, emotion))
    write_annotation(out / ANNOTATION_NAME, annotation)
    _make_reproducible(out / ANNOTATION_NAME)
    write_csv(out / GROUND_TRUTH_NAME, GROUND_TRUTH_COLUMNS, truth)
    return {"pool": _pool_counts(labeled_numbers, plans), "frames": frames,
            "max_au_displacement_px": round(max_displacement, 3)}


def _pool_counts(labeled_numbers: Sequence[int], plans: dict[int, list[_Plan]]) -> dict:
    """Pool pairs in all, with and without facial action, in Part A (labeled subjects) and Part B."""
    pool = [(number in labeled_numbers, plan) for number, subject_plans in plans.items()
            for plan in subject_plans if plan.label < 0]
    with_motion = sum(bool(plan.aus) for _, plan in pool)
    in_part_a = sum(labeled for labeled, _ in pool)
    return {"pairs": len(pool), "with_motion": with_motion, "noise_only": len(pool) - with_motion,
            "part_a": in_part_a, "part_b": len(pool) - in_part_a}
