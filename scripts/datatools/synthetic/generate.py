"""Synthetic CAS(ME)^3-like micro-expression data, written in the real DVSCL layout.

Subjects (``spNO.<n>`` in file names, ``spNO<n>`` in list names) get their own face
(`scripts.datatools.synthetic.face`); a sample is an onset frame and an apex frame that differs
from it by AU-like deformations of micro-expression amplitude: about one pixel of displacement at
72 px, about three at the most (scaled with the image size; the summary reports the largest),
rendered by `scripts.datatools.synthetic.render`.

Classes (`dataset.DEFAULT_CLASS_NAMES`: 4-class labels 0 negative, 1 others, 2 positive, 3
surprise; 3-class drops others) are carried by AU patterns with intra-class variation (AU subset,
amplitude, left/right asymmetry), see ``CLASS_PATTERNS``. Class shares follow the CAS(ME)^3
test-list totals (``CASME3_TEST_COUNTS``); per-subject sample counts are heavy-tailed; a share of
labeled samples has apex == onset (an all-zero difference), as some published samples do; and a
share ``label_noise`` carries the AU pattern of another class than its label, as self-reported
emotions are noisy.

The unlabeled pre-training pool holds pairs of the labeled subjects and of ``pool_only_subjects``
extra subjects (as CAS(ME)^3 part B). A share ``regime.low_intensity_share`` of them has no AU at all
(noise, head motion, flicker and the regime's blinks only); the others carry 1-3 random AUs. Its intensity column is measured,
not the hidden truth: the mean absolute RGB difference of the two 8-bit frames (0..255 units,
averaged over channels) inside the face region. A threshold separates most noise-only pairs from AU
pairs, not all. ``casme3_pool/ground_truth.csv`` holds the truth (``has_motion``, AU list).

The ``regime`` (`scripts.datatools.synthetic.regime`) sets the nuisances: pose jitter, head motion
between onset and apex, blinks, action amplitude, the pool's share without action. With
``motion_compensation`` the frames of every pair are registered before they are differenced and
measured, as `scripts/data/prepare_casme3.py --motion_compensation` does for the real frames.

File names, list lines, class names and the difference encoding are those of the data format in
`dataset.py`. Every pair also gets the grey view of the `--view RGB_gray` ablation (the luma
difference of the same two RGB frames) and `data/v_gray/` lists; these lists keep the order of the
v_rgb lists, as the published ones do.

Generation is deterministic: the same arguments give byte-identical files (every pair has its own
random stream, keyed by seed, subject and index). The output folder is claimed through its run
record (``run.json``, `util.claim_folder`, tool ``TOOL``): the settings are the arguments, the
details the summary (counts, the pool's best threshold), ``complete`` true once every file is
written. A folder another tool wrote, or one without a record that holds files, is never written
into; a folder of other arguments only with ``overwrite``; regenerating first removes only what
the generator wrote there (``PREPARED_ENTRIES`` or, for a raw release, ``RAW_ENTRIES``).

With ``raw_release`` the same subjects, pairs and nuisances are written as a raw CAS(ME)^3 release
(frames, annotation workbook, ground truth) for `scripts/data/prepare_casme3.py` instead
(`scripts.datatools.synthetic.raw_release`).

Public API: ``generate_dataset``, ``SyntheticError`` and the module constants.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

import util
from dataset import (CLASS_LIST, DEFAULT_CLASS_NAMES, DEPTH_LISTS, GRAY_LISTS, LIST_FOLDER, POOL_FOLDER,
                     POOL_LIST, RGB_LISTS, SUBJECT_LIST, UNLABELED, image_folder, image_view_dirs,
                     labeled_view_paths, list_subject, make_key, pool_view_paths, split_list)
from scripts.datatools.common.format import list_line, write_list, write_png
from scripts.datatools.synthetic.face import AU_NAMES, make_subject
from scripts.datatools.synthetic.raw_release import RAW_ENTRIES, write_release
from scripts.datatools.synthetic.regime import Regime, knob_names
from scripts.datatools.synthetic.render import render_pair

CASME3_TEST_COUNTS = {"negative": 508, "others": 170, "positive": 64, "surprise": 201}

TOOL = "make_synthetic_casme3.py"  # the writer the run record names
# Labeled images go under the 4-class folder even with 3 classes.
IMAGE_CLASSES = 4
RGB_DIR, DEPTH_DIR, GRAY_DIR = image_view_dirs(IMAGE_CLASSES)
PREPARED_ENTRIES = (image_folder(IMAGE_CLASSES), POOL_FOLDER, LIST_FOLDER)  # what the prepared layout writes


# class -> patterns (weight, AUs always present, AUs present with probability 1/2)
CLASS_PATTERNS: dict[str, tuple[tuple[float, tuple[str, ...], tuple[str, ...]], ...]] = {
    "negative": ((0.30, ("AU4",), ("AU7",)),
                 (0.20, ("AU4", "AU15"), ()),
                 (0.20, ("AU9",), ("AU10", "AU4")),
                 (0.15, ("AU15",), ("AU17",)),
                 (0.15, ("AU10",), ("AU4",))),
    "others": ((0.35, ("AU14",), ()),
               (0.35, ("AU45",), ()),
               (0.30, ("AU17",), ("AU14",))),
    "positive": ((0.70, ("AU12", "AU6"), ()),
                 (0.30, ("AU12",), ())),
    "surprise": ((0.50, ("AU1", "AU2"), ("AU5", "AU26")),
                 (0.30, ("AU1", "AU2", "AU26"), ()),
                 (0.20, ("AU26",), ("AU5",))),
}

VIDEOS = "abcdefghijklm"
POOL_INDEX_OFFSET = 1_000_000  # per-sample random streams: labeled i -> i, pool j -> offset + j
POOL_DECIMALS = 4  # pool intensities are rounded once, so that the lists and the summary agree


class SyntheticError(util.UserError):
    """A bad argument; the message is one line."""


class _PoolRow(NamedTuple):
    """A rendered pool pair as it goes into the lists and the ground truth."""

    key: str
    rgb_path: str
    depth_path: str
    gray_path: str
    intensity: float
    aus: tuple[str, ...]


@dataclass(frozen=True)
class _Plan:
    """One pair to render: where it goes and what it carries."""

    index: int  # per-subject random stream: labeled samples 0.., pool pairs POOL_INDEX_OFFSET + j
    key: str  # file stem, e.g. spNO.3-b-120-spNO.3-b-114_diff
    rgb_path: str
    depth_path: str
    gray_path: str
    label: int  # -1 for pool pairs
    aus: tuple[str, ...]  # empty: no facial movement
    same_frame: bool  # apex == onset: an all-zero difference
    video: str
    first: int  # onset frame (the earlier frame of a pool pair)
    second: int  # apex frame (the later frame of a pool pair)
    action_class: str  # the class whose AU pattern the sample carries ('' for pool pairs)


def _draw_class_aus(rng: np.random.Generator, class_name: str) -> tuple[str, ...]:
    """The AUs of one sample of `class_name`: a pattern drawn by weight, its optional AUs by coin."""
    patterns = CLASS_PATTERNS[class_name]
    weights = np.array([p[0] for p in patterns])
    _, required, optional = patterns[rng.choice(len(patterns), p=weights / weights.sum())]
    return required + tuple(name for name in optional if rng.random() < 0.5)


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integer parts proportional to ``weights``."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _draw_frames(rng: np.random.Generator, used: set[tuple[str, int, int]], same_frame: bool
                 ) -> tuple[str, int, int]:
    """A video letter and (later, earlier) frame numbers not used before for this subject."""
    while True:
        video = VIDEOS[rng.integers(len(VIDEOS))]
        first = int(rng.integers(30, 4000))
        gap = 0 if same_frame else int(np.clip(round(rng.lognormal(math.log(6.0), 0.5)), 1, 30))
        choice = (video, first + gap, first)
        if choice not in used:
            used.add(choice)
            return choice


def _validate(args: dict) -> None:
    """Raise SyntheticError for arguments outside what the generator supports."""
    if args["n_subjects"] < 2:
        raise SyntheticError(f"n_subjects must be at least 2 (LOSO), got {args['n_subjects']}")
    if args["pool_only_subjects"] < 0 or args["n_subjects"] + args["pool_only_subjects"] > 217:
        raise SyntheticError("n_subjects + pool_only_subjects must be within 2..217 (spNO.1 to spNO.217)")
    if args["samples_per_subject"] < 1 or args["pool_per_subject"] < 0:
        raise SyntheticError("samples_per_subject must be >= 1 and pool_per_subject >= 0")
    if args["image_size"] < 32:
        raise SyntheticError(f"image_size must be at least 32, got {args['image_size']}")
    if args["n_classes"] not in (3, 4):
        raise SyntheticError(f"n_classes must be 3 or 4, got {args['n_classes']}")
    if args["depth_bits"] not in (8, 16):
        raise SyntheticError(f"depth_bits must be 8 or 16, got {args['depth_bits']}")
    if args["raw_release"] and args["motion_compensation"]:
        raise SyntheticError("--motion_compensation does not apply to --raw_release: the preparation registers "
                             "the frames (scripts/data/prepare_casme3.py --motion_compensation)")
    if args["raw_release"] and args["depth_bits"] != 8:
        raise SyntheticError("--depth_bits does not apply to --raw_release: its depth frames are 16-bit millimetres")
    regime = args["regime"]
    for name, value in [*((n, args[n]) for n in ("apex_equals_onset_share", "label_noise")),
                        *((n, regime[n]) for n in ("low_intensity_share", "blink_rate"))]:
        if not 0.0 <= value <= 1.0:
            raise SyntheticError(f"{name} must be within [0, 1], got {value}")
    negative = [n for n in knob_names() if regime[n] < 0]
    if negative:
        raise SyntheticError(f"{negative[0]} must not be negative, got {regime[negative[0]]}")


def _claim(out: Path, args: dict, overwrite: bool) -> util.RunRecord:
    """The output folder's run record, saved with `complete` false, once what an earlier run of
    the generator wrote there is removed (a folder of other arguments only with `overwrite`)."""
    owns = RAW_ENTRIES if args["raw_release"] else PREPARED_ENTRIES
    record = util.claim_folder(out, TOOL, args, owns, overwrite)
    if not overwrite:  # the same arguments: the same entries (with overwrite, claim_folder lists the old run's)
        record.stale = record.owned_entries()
    record.start()
    return record


def _other_order(rng: np.random.Generator, lines: list[str]) -> list[str]:
    """The same lines in a different order (any order differs once there are two lines)."""
    order = rng.permutation(len(lines))
    if len(lines) > 1 and np.array_equal(order, np.arange(len(lines))):
        order = np.roll(order, 1)
    return [lines[i] for i in order]


def _best_threshold(values: np.ndarray, positive: np.ndarray) -> float:
    """Intensity threshold (keep >= t) with the best balanced accuracy of motion vs noise."""
    if positive.all() or not positive.any():
        return 0.0
    order = np.argsort(values, kind="stable")
    v, p = values[order], positive[order]
    # cut before position i: noise below = cumsum of ~p up to i, motion kept = motion from i on
    noise_below = np.concatenate([[0], np.cumsum(~p)]) / (~p).sum()
    motion_kept = 1.0 - np.concatenate([[0], np.cumsum(p)]) / p.sum()
    cuts = np.concatenate([[v[0] - 1.0], (v[:-1] + v[1:]) / 2, [v[-1] + 1.0]])
    return round(float(cuts[int(np.argmax(noise_below + motion_kept))]), 5)


def _exact_mask(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """(n,) bool with exactly round(share * n) randomly placed True values."""
    mask = np.zeros(n, bool)
    mask[rng.choice(n, int(round(share * n)), replace=False)] = True
    return mask


def _plan(args: dict, rng: np.random.Generator) -> tuple[list[int], list[int], dict[int, list[_Plan]]]:
    """Draw subjects, per-subject counts, labels, file names and AUs.

    Returns all subject numbers, the labeled ones, and each subject's pairs (labeled first).
    """
    n_subjects, seed = args["n_subjects"], args["seed"]
    classes = DEFAULT_CLASS_NAMES[args["n_classes"]]
    drawn = rng.choice(217, n_subjects + args["pool_only_subjects"], replace=False)
    numbers = sorted(int(n) + 1 for n in drawn)
    labeled_numbers = sorted(int(n) for n in rng.choice(numbers, n_subjects, replace=False))

    total = n_subjects * args["samples_per_subject"]
    weights = rng.lognormal(0.0, 0.9, n_subjects)
    per_subject = 1 + rng.multinomial(total - n_subjects, weights / weights.sum())
    shares = np.array([CASME3_TEST_COUNTS[c] for c in classes], float)
    labels = rng.permutation(np.repeat(np.arange(len(classes)), _largest_remainder(total, shares)))
    same = _exact_mask(rng, total, args["apex_equals_onset_share"])
    noisy = _exact_mask(rng, total, args["label_noise"])
    n_pool = args["pool_per_subject"] * len(numbers)
    noise_only = _exact_mask(rng, n_pool, args["regime"]["low_intensity_share"])

    plans: dict[int, list[_Plan]] = {n: [] for n in numbers}
    used: dict[int, set[tuple[str, int, int]]] = {n: set() for n in numbers}
    for i, number in enumerate(np.repeat(labeled_numbers, per_subject)):
        cls = classes[labels[i]]
        video, second, first = _draw_frames(rng, used[number], bool(same[i]))
        key = make_key(number, video, first, second)
        au_rng = np.random.default_rng([seed, 3, i])
        pattern = cls if not noisy[i] else au_rng.choice([c for c in classes if c != cls])
        plans[number].append(_Plan(len(plans[number]), key, *labeled_view_paths(IMAGE_CLASSES, cls, key),
                                   int(labels[i]), _draw_class_aus(au_rng, str(pattern)), bool(same[i]),
                                   video, first, second, str(pattern)))
    for j, number in enumerate(np.repeat(numbers, args["pool_per_subject"])):
        video, second, first = _draw_frames(rng, used[number], False)
        key = make_key(number, video, first, second)
        au_rng = np.random.default_rng([seed, 4, j])
        n_aus = 0 if noise_only[j] else int(au_rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        aus = tuple(sorted(au_rng.choice(AU_NAMES, n_aus, replace=False), key=AU_NAMES.index))
        plans[number].append(_Plan(POOL_INDEX_OFFSET + j, key, *pool_view_paths(number, key), UNLABELED,
                                   aus, False, video, first, second, ""))
    return numbers, labeled_numbers, plans


def generate_dataset(out_dir: str | Path, seed: int = 0, n_subjects: int = 10,
                     samples_per_subject: int = 30, pool_per_subject: int = 50,
                     pool_only_subjects: int = 2, image_size: int = 72, n_classes: int = 4,
                     apex_equals_onset_share: float = 0.05, label_noise: float = 0.1, depth_bits: int = 8,
                     regime: Regime = Regime(), motion_compensation: bool = False,
                     raw_release: bool = False, overwrite: bool = False) -> dict:
    """Write a synthetic CAS(ME)^3-like dataset under ``out_dir`` and return a summary.

    Labeled: ``n_subjects * samples_per_subject`` samples with heavy-tailed per-subject counts (at
    least one each) and CAS(ME)^3 class shares; ``apex_equals_onset_share`` of them have an all-zero
    difference and ``label_noise`` of them carry the AU pattern of another class (noisy
    self-reports). Pool: ``pool_per_subject`` pairs for every labeled subject and for
    ``pool_only_subjects`` unlabeled subjects, ``regime.low_intensity_share`` of them without
    action. Images are ``image_size`` px squares; depth differences are 8- or 16-bit
    (``depth_bits``). ``regime`` sets the nuisances; ``motion_compensation`` registers the two
    frames of every pair before differencing. With ``raw_release`` the same pairs are written as
    the frames and annotation sheet of a raw release instead (`raw_release.write_release`; neither
    ``motion_compensation`` nor ``depth_bits`` 16 applies there). ``overwrite`` lets a folder
    generated with other arguments be generated again (see the module docstring).

    Returns a JSON-able dict: arguments, subjects, labeled counts (total, per class, per subject,
    apex == onset, label noise), pool counts (pairs, with motion, noise only; in the prepared
    layout also the intensity threshold that best separates them and what it keeps, in a raw
    release the pairs per part), the largest AU displacement in pixels, and ``seconds``; the run
    record's details hold the same summary without ``seconds``. Raises ``SyntheticError`` for bad
    arguments, `util.UserError` for a folder the generator may not write into.
    """
    start = time.perf_counter()
    args = dict(seed=seed, n_subjects=n_subjects, samples_per_subject=samples_per_subject,
                pool_per_subject=pool_per_subject, pool_only_subjects=pool_only_subjects,
                image_size=image_size, n_classes=n_classes, apex_equals_onset_share=apex_equals_onset_share,
                label_noise=label_noise, depth_bits=depth_bits, regime=asdict(regime),
                motion_compensation=motion_compensation, raw_release=raw_release)
    _validate(args)
    out = Path(out_dir)
    record = _claim(out, args, overwrite)
    rng = np.random.default_rng([seed, 0])
    numbers, labeled_numbers, plans = _plan(args, rng)
    if raw_release:
        written = write_release(out, args, labeled_numbers, plans)
    else:
        written = _write_prepared(out, args, rng, labeled_numbers, plans)
    summary = {**_summary(args, labeled_numbers, numbers, plans), **written}
    record.finish(**summary)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def _write_prepared(out: Path, args: dict, rng: np.random.Generator, labeled_numbers: list[int],
                    plans: dict[int, list[_Plan]]) -> dict:
    """Render every pair's difference images and write the lists; return the pool counts and the
    largest AU displacement for the summary."""
    seed, regime = args["seed"], Regime(**args["regime"])
    labeled_lines: dict[int, list[tuple[str, str, str]]] = {n: [] for n in labeled_numbers}
    pool_rows: list[_PoolRow] = []
    max_disp = 0.0
    for number, subject_plans in plans.items():
        subj = make_subject(seed, number, args["image_size"])
        for plan in subject_plans:
            rendered = render_pair(subj, plan.index, plan.aus, plan.same_frame, seed, args["depth_bits"], regime,
                                   args["motion_compensation"])
            write_png(out / plan.rgb_path, rendered.rgb)
            write_png(out / plan.depth_path, rendered.depth)
            write_png(out / plan.gray_path, rendered.gray)
            max_disp = max(max_disp, rendered.max_displacement_px)
            if plan.label >= 0:
                labeled_lines[number].append((list_line(plan.rgb_path, plan.label),
                                              list_line(plan.depth_path, plan.label),
                                              list_line(plan.gray_path, plan.label)))
            else:
                intensity = round(rendered.intensity, POOL_DECIMALS)
                pool_rows.append(_PoolRow(plan.key, plan.rgb_path, plan.depth_path, plan.gray_path, intensity,
                                          plan.aus))
    _write_lists(out, rng, DEFAULT_CLASS_NAMES[args["n_classes"]], labeled_lines, pool_rows)
    return {"pool": _pool_summary(pool_rows), "max_au_displacement_px": round(max_disp, 3)}


def _write_lists(out: Path, rng: np.random.Generator, classes: tuple[str, ...],
                 labeled_lines: dict[int, list[tuple[str, str, str]]], pool_rows: list[_PoolRow]) -> None:
    """classes.txt, subName.txt, per-subject LOSO lists and the pool lists + ground truth.

    RGB lists are sorted; depth lists hold the same lines in another order (pairing must go by key);
    grey lists follow the RGB order. The grey lists take nothing from `rng`, so the depth orders,
    and every other file of a seed, do not depend on the grey view.
    """
    data = out / LIST_FOLDER
    write_list(data / CLASS_LIST, classes)
    write_list(data / RGB_LISTS / SUBJECT_LIST, sorted(list_subject(n) for n in labeled_lines))
    rgb_of = {n: [(rgb, gray) for rgb, _, gray in lines] for n, lines in labeled_lines.items()}
    depth_of = {n: [d for _, d, _ in lines] for n, lines in labeled_lines.items()}
    for number in labeled_lines:
        list_name = list_subject(number)
        others = [m for m in labeled_lines if m != number]
        for split, members in (("test", [number]), ("train", others)):
            # sorted by the RGB line, its grey line beside it (RGB lines are unique: the sort never
            # looks at the grey line)
            rgb_gray = sorted(pair for m in members for pair in rgb_of[m])
            depth_lines = _other_order(rng, sorted(line for m in members for line in depth_of[m]))
            write_list(data / RGB_LISTS / split_list(list_name, split), [rgb for rgb, _ in rgb_gray])
            write_list(data / DEPTH_LISTS / split_list(list_name, split), depth_lines)
            write_list(data / GRAY_LISTS / split_list(list_name, split), [gray for _, gray in rgb_gray])
    pool_rows = sorted(pool_rows)
    write_list(data / RGB_LISTS / POOL_LIST,
               [list_line(r.rgb_path, UNLABELED, r.intensity, f".{POOL_DECIMALS}f") for r in pool_rows])
    write_list(data / GRAY_LISTS / POOL_LIST,
               [list_line(r.gray_path, UNLABELED, r.intensity, f".{POOL_DECIMALS}f") for r in pool_rows])
    write_list(data / DEPTH_LISTS / POOL_LIST, _other_order(
        rng, [list_line(r.depth_path, UNLABELED, r.intensity, f".{POOL_DECIMALS}f") for r in pool_rows]))
    write_list(out / POOL_FOLDER / "ground_truth.csv",
                 ["key,subject,has_motion,aus"]
                 + [f"{r.key},{r.key.split('-')[0]},{int(bool(r.aus))},{'+'.join(r.aus)}" for r in pool_rows])


def _summary(args: dict, labeled_numbers: list[int], numbers: list[int], plans: dict[int, list[_Plan]]) -> dict:
    """Arguments, classes, subjects and labeled counts of what was planned (deterministic: no
    paths, no timing)."""
    classes = DEFAULT_CLASS_NAMES[args["n_classes"]]
    labeled = [p for n in labeled_numbers for p in plans[n] if p.label >= 0]
    per_class = Counter(classes[p.label] for p in labeled)
    return {
        "arguments": args,
        "classes": list(classes),
        "subjects": [list_subject(n) for n in labeled_numbers],
        "pool_only_subjects": [list_subject(n) for n in numbers if n not in labeled_numbers],
        "labeled": {
            "total": len(labeled),
            "per_class": {c: per_class[c] for c in classes},
            "per_subject": {list_subject(n): sum(p.label >= 0 for p in plans[n]) for n in labeled_numbers},
            "apex_equals_onset": sum(p.same_frame for p in labeled),
            "label_noise": int(round(args["label_noise"] * len(labeled))),
        },
    }


def _pool_summary(pool_rows: list[_PoolRow]) -> dict:
    """Pool counts of the prepared layout: pairs with and without motion, and what the intensity
    threshold that best separates them keeps and drops."""
    intensity = np.array([row.intensity for row in pool_rows])
    motion = np.array([bool(row.aus) for row in pool_rows], bool)
    threshold = _best_threshold(intensity, motion)
    kept = intensity >= threshold
    return {
        "pairs": len(pool_rows),
        "with_motion": int(motion.sum()),
        "noise_only": int((~motion).sum()),
        "intensity_threshold": threshold,
        "kept": int(kept.sum()),
        "dropped": int((~kept).sum()),
        "noise_dropped": int((~kept & ~motion).sum()),
        "motion_kept": int((kept & motion).sum()),
    }
