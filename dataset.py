"""Data layer: list files, path resolution, RGB/depth pairing by sample key, decoded image store.

A list line is `<path> <label> <dbtype> [intensity]`. Relative paths resolve against the data
folder; absolute paths written on another machine (as the published lists are) resolve to the
longest tail of the path that exists under the data folder, or are rewritten with `--path_prefix
OLD=NEW`. RGB and depth samples are paired by sample key (the file stem without `_depth`/`_gray`),
never by line order.

Images are decoded once into a uint8 (RGB) / uint8-or-uint16 (depth) store resized to
`load_size` x `load_size`, optionally backed by memory-mapped cache files named by the source
files' sizes and modification times, which check themselves when reused. Augmentation happens
on whole batches, on the training device (`PairAugment`).
"""
from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import math
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import util
from util import REPO_ROOT, UserError, atomic_write_text, process_only

# ---------------------------------------------------------------------------------------------
# Data format: the one definition of what a data folder holds. The writers (scripts/datatools:
# synthetic data, CAS(ME)^3 preparation) and the readers in this module share it, so a change
# here reaches both sides.

DEFAULT_CLASS_NAMES = {3: ("negative", "positive", "surprise"),
                       4: ("negative", "others", "positive", "surprise")}
DBTYPE_CASME3 = 0
# The third list column: the source database (the MEGC2019 composite numbers SMIC, CASME II, SAMM)
DATABASES = {DBTYPE_CASME3: "CAS(ME)^3", 1: "SMIC-HS", 2: "CASME II", 3: "SAMM"}
UNLABELED = -1  # the label of a pool pair
LIST_FOLDER = "data"
RGB_LISTS, DEPTH_LISTS, GRAY_LISTS = "v_rgb", "v_depth", "v_gray"
# --view: the list folder of the second view beside v_rgb (None: RGB only, for data without one)
SECOND_VIEW_LISTS = {"RGB_D": DEPTH_LISTS, "RGB_gray": GRAY_LISTS, "RGB": None}
VIEW_NAMES = {RGB_LISTS: "RGB", DEPTH_LISTS: "depth", GRAY_LISTS: "grey"}
SUBJECT_LIST = "subName.txt"  # in RGB_LISTS
CLASS_LIST = "classes.txt"
POOL_LIST = "pretrain.txt"
LIST_LINE = "<path> <label> <dbtype> [intensity]"
POOL_FOLDER = "casme3_pool"
DEPTH_SUFFIX, GRAY_SUFFIX = "_depth", "_gray"
VIEW_SUFFIXES = (DEPTH_SUFFIX, GRAY_SUFFIX)
# Difference images are signed around mid-grey (scripts/datatools/common/format.py encodes
# them); default gains per view:
RGB_GAIN = 2.0  # grey levels per 8-bit level, so that +-64 levels fill the range
DEPTH_GAIN = {8: 16.0, 16: 64.0}  # grey levels per mm by PNG bit depth: +-8 mm or +-512 mm fill it
# The grey view (RGB_gray): ITU-R 601 luma of R, G, B, the weights `_gray` gives the RGB view, so
# that the grey images are what turning the RGB view grey would show
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_SUBJECT_IN_NAME = re.compile(r"sp[Nn][Oo]\.?(\d+)")


def file_subject(n: int) -> str:
    """Subject `n` as spelled in file and folder names: `spNO.<n>`."""
    return f"spNO.{n}"


def list_subject(n: int) -> str:
    """Subject `n` as spelled in list names, subName.txt and `Sample.subject`: `spNO<n>`."""
    return f"spNO{n}"


def subject_of(key: str) -> str:
    """`spNO.166-b-837-...` -> `spNO166` (also `spNo166`, `spno.166`); '' when absent."""
    match = _SUBJECT_IN_NAME.match(key)
    return list_subject(int(match.group(1))) if match else ""


def make_key(n: int, video: str, first: int, second: int) -> str:
    """Sample key of frames `first` (onset) and `second` (apex) of subject `n`'s `video`:
    `spNO.<n>-<video>-<second>-spNO.<n>-<video>-<first>_diff` (the published naming)."""
    subject = file_subject(n)
    return f"{subject}-{video}-{second}-{subject}-{video}-{first}_diff"


def sample_key(path: str | Path) -> str:
    """File stem without a trailing view suffix: `a_diff_depth.png` -> `a_diff`."""
    stem = Path(path).stem
    for suffix in VIEW_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def image_folder(n_classes: int) -> str:
    """Top folder of the labeled difference images: `casme3_diff_me<n_classes>`."""
    return f"casme3_diff_me{n_classes}"


def image_view_dirs(n_classes: int) -> tuple[str, str, str]:
    """RGB, depth and grey folders of the labeled images (a subfolder per class), relative to the
    data folder."""
    base = image_folder(n_classes)
    return f"{base}/casme3_diff_imgs_all", f"{base}/casme3_diff_depth_all", f"{base}/casme3_diff_gray_all"


def image_dirs(n_classes: int) -> tuple[str, str]:
    """RGB and depth folders of the labeled images: `image_view_dirs` without the grey one."""
    return image_view_dirs(n_classes)[:2]


def labeled_view_paths(n_classes: int, class_name: str, key: str) -> tuple[str, str, str]:
    """RGB, depth and grey image paths of labeled sample `key`, relative to the data folder."""
    return _view_paths(*(f"{folder}/{class_name}" for folder in image_view_dirs(n_classes)), key)


def labeled_paths(n_classes: int, class_name: str, key: str) -> tuple[str, str]:
    """RGB and depth image paths of labeled sample `key`: `labeled_view_paths` without the grey one."""
    return labeled_view_paths(n_classes, class_name, key)[:2]


def pool_view_paths(n: int, key: str) -> tuple[str, str, str]:
    """RGB, depth and grey image paths of subject `n`'s pool pair `key`, relative to the data folder."""
    subject = file_subject(n)
    return _view_paths(*(f"{POOL_FOLDER}/{view}/{subject}" for view in ("rgb", "depth", "gray")), key)


def pool_paths(n: int, key: str) -> tuple[str, str]:
    """RGB and depth image paths of a pool pair: `pool_view_paths` without the grey one."""
    return pool_view_paths(n, key)[:2]


def _view_paths(rgb_dir: str, depth_dir: str, gray_dir: str, key: str) -> tuple[str, str, str]:
    return f"{rgb_dir}/{key}.png", f"{depth_dir}/{key}{DEPTH_SUFFIX}.png", f"{gray_dir}/{key}{GRAY_SUFFIX}.png"


def split_list(subject: str, split: str) -> str:
    """File name of a subject's LOSO list (`subject` as `list_subject` spells it, split 'train' or
    'test')."""
    return f"{subject}_{split}.txt"


def read_lines(path: str | Path) -> list[str]:
    """The lines of a text file of the data format (a list, subName.txt, classes.txt), read as
    UTF-8. A leading byte-order mark is dropped, because Windows editors add it and it would stick
    invisibly to the first name; a byte that is not UTF-8 is an error naming the file and line."""
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: byte 0x{data[err.start]:02x} is not UTF-8 (save the file as UTF-8)") from None
    return text.replace("\r\n", "\n").split("\n")


@dataclass(frozen=True)
class ListEntry:
    """One parsed list line. `source` is `file:line` for error messages."""
    path: Path
    label: int
    dbtype: int
    intensity: float | None
    source: str


@dataclass(frozen=True)
class Sample:
    """One RGB/depth (or RGB/grey) pair. `subject` is the `spNO<n>` name; label -1 means unlabeled;
    `depth_path` is the second view's image, None for RGB-only data (`--view RGB`)."""
    key: str
    rgb_path: Path
    depth_path: Path | None
    label: int
    dbtype: int
    subject: str
    intensity: float | None
    rgb_source: str
    depth_source: str



def parse_prefixes(pairs: Sequence[str] | None) -> list[tuple[str, str]]:
    """`['OLD=NEW', ...]` -> `[('OLD', 'NEW'), ...]`."""
    out = []
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--path_prefix {pair!r}: expected OLD=NEW")
        old, new = pair.split("=", 1)
        out.append((old, new))
    return out


def resolve_path(raw: str, data_folder: Path, prefixes: Sequence[tuple[str, str]] = ()) -> Path | None:
    """The existing file a list path refers to, or None.

    Order: explicit prefix rewrites; relative paths under `data_folder`; an absolute path as is;
    else the longest tail of the absolute path that exists under `data_folder`.
    """
    for old, new in prefixes:
        if raw.startswith(old):
            raw = new + raw[len(old):]
            break
    path = Path(raw)
    if not path.is_absolute():
        path = data_folder / path
        return path if path.is_file() else None
    if path.is_file():
        return path
    parts = path.parts[1:]
    for start in range(len(parts)):
        candidate = data_folder.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    return None


def read_list(list_file: str | Path, data_folder: str | Path,
              prefixes: Sequence[tuple[str, str]] = (), labeled: bool = True) -> list[ListEntry]:
    """Parse a list file. Every bad line raises `UserError` naming `file:line`.

    `labeled=False` (pre-training pool) accepts any integer label, including -1.
    """
    list_file, data_folder = Path(list_file), Path(data_folder)
    if not list_file.is_file():
        raise UserError(f"{list_file}: list file not found")
    entries = []
    for line_no, line in enumerate(read_lines(list_file), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        source = f"{list_file}:{line_no}"
        fields = text.split()
        if len(fields) not in (3, 4):
            raise UserError(f"{source}: expected '{LIST_LINE}', got {text!r}")
        raw, label_text, dbtype_text = fields[:3]
        label = _parse_int(label_text, "label", source)
        if labeled and label < 0:
            raise UserError(f"{source}: label {label} is negative")
        dbtype = _parse_int(dbtype_text, "dbtype", source)
        intensity = None
        if len(fields) == 4:
            try:
                intensity = float(fields[3])
            except ValueError:
                raise UserError(f"{source}: intensity {fields[3]!r} is not a number") from None
            if not np.isfinite(intensity):
                raise UserError(f"{source}: intensity {fields[3]!r} is not finite")
        path = resolve_path(raw, data_folder, prefixes)
        if path is None:
            raise UserError(f"{source}: image not found: {raw} (data folder {data_folder})")
        entries.append(ListEntry(path, label, dbtype, intensity, source))
    if not entries:
        raise UserError(f"{list_file}: list is empty")
    return entries


def _parse_int(text: str, what: str, source: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{source}: {what} {text!r} is not an integer") from None


def pair_views(rgb: Sequence[ListEntry], depth: Sequence[ListEntry] | None, subject: str = "",
               strict: bool = False) -> list[Sample]:
    """Join RGB and second-view (depth or grey) entries by sample key, in RGB list order; with
    `depth` None (RGB-only data) every RGB entry is a sample without a second image.

    Keys present in one view only are counted, the first few named on stderr, and left out;
    `strict=True` makes them an error. Duplicate keys and disagreeing labels are errors.
    """
    rgb_by_key = _index_by_key(rgb)
    if depth is None:
        return [Sample(key, r.path, None, r.label, r.dbtype, subject or subject_of(key), r.intensity,
                       r.source, "") for key, r in rgb_by_key.items()]
    depth_by_key = _index_by_key(depth)
    only_rgb = [k for k in rgb_by_key if k not in depth_by_key]
    only_depth = [k for k in depth_by_key if k not in rgb_by_key]
    second = VIEW_NAMES.get(Path(depth[0].source.rsplit(":", 1)[0]).parent.name, "second-view")
    for keys, view, other, source in ((only_rgb, "RGB", second, rgb), (only_depth, second, "RGB", depth)):
        if keys:
            list_file = source[0].source.rsplit(":", 1)[0]
            message = f"{list_file}: {len(keys)} {view} sample(s) without a matching {other} sample, e.g. " \
                      f"{', '.join(keys[:3])}"
            if strict:
                raise UserError(message)
            print(f"warning: {message}; left out", file=sys.stderr)
    samples = []
    for key, r in rgb_by_key.items():
        d = depth_by_key.get(key)
        if d is None:
            continue
        if r.label != d.label:
            raise UserError(f"{d.source}: label {d.label} disagrees with {r.source} (label {r.label}) "
                            f"for sample {key}")
        intensity = r.intensity if r.intensity is not None else d.intensity
        samples.append(Sample(key, r.path, d.path, r.label, r.dbtype, subject or subject_of(key),
                              intensity, r.source, d.source))
    if not samples:
        raise UserError(f"{rgb[0].source.rsplit(':', 1)[0]}: no sample pairs with "
                        f"{depth[0].source.rsplit(':', 1)[0]}")
    return samples


def _index_by_key(entries: Sequence[ListEntry]) -> dict[str, ListEntry]:
    index: dict[str, ListEntry] = {}
    for entry in entries:
        key = sample_key(entry.path)
        if key in index:
            raise UserError(f"{entry.source}: duplicate sample {key} (first at {index[key].source})")
        index[key] = entry
    return index


# ---------------------------------------------------------------------------------------------
# The list folder: v_rgb/ and v_depth/ with per-subject lists, subName.txt, classes.txt, pretrain.txt


def find_list_folder(data_folder: str | Path, list_folder: str | Path | None = None,
                     second: str | None = DEPTH_LISTS) -> Path:
    """The folder holding `v_rgb/` and the second view's lists (`second`: `v_depth/`, `v_gray/`, or
    None for RGB-only data): `list_folder`, else `<data_folder>/data`, else the repository's `data/`.

    A candidate with `v_rgb/` but without the second view's folder is an error, not a reason to
    look further: the data's own lists must not be replaced by the repository's without a word.
    """
    candidates = [Path(list_folder)] if list_folder else [Path(data_folder) / LIST_FOLDER, REPO_ROOT / LIST_FOLDER]
    for folder in candidates:
        if not (folder / RGB_LISTS).is_dir():
            continue
        if second and not (folder / second).is_dir():
            views = [v for v, lists in SECOND_VIEW_LISTS.items() if lists is None or (folder / lists).is_dir()]
            raise UserError(f"{folder}: has {RGB_LISTS}/ but no {second}/ for this --view; its lists serve "
                            f"--view {' or '.join(views)}")
        return folder
    needed = " and ".join(f"{n}/" for n in (RGB_LISTS, second) if n)
    raise UserError(f"{' or '.join(str(c) for c in candidates)}: no {needed} list folders found (set --list_folder)")


def subject_names(list_folder: Path) -> list[str]:
    """Subjects listed in `v_rgb/subName.txt`, one per line."""
    path = list_folder / RGB_LISTS / SUBJECT_LIST
    if not path.is_file():
        raise UserError(f"{path}: subject list not found")
    names: dict[str, int] = {}
    for line_no, line in enumerate(read_lines(path), start=1):
        name = line.strip()
        if not name:
            continue
        # a subject listed twice would be tested twice and counted twice in the pooled metrics
        if name in names:
            raise UserError(f"{path}:{line_no}: subject {name} is listed twice (first at line {names[name]})")
        names[name] = line_no
    if not names:
        raise UserError(f"{path}: subject list is empty")
    return list(names)


def load_split(list_folder: Path, data_folder: Path, subject: str, split: str,
               prefixes: Sequence[tuple[str, str]] = (), strict_pairs: bool = False,
               second: str | None = DEPTH_LISTS) -> list[Sample]:
    """Samples of `<subject>_<split>.txt` (split 'train' or 'test'), paired by key with the list of
    the same name in the `second` view's folder (none for RGB-only data)."""
    if split == "train" and not has_train_list(list_folder, subject, second):
        return derived_train(list_folder, data_folder, subject, prefixes, strict_pairs, second)
    rgb = read_list(list_folder / RGB_LISTS / split_list(subject, split), data_folder, prefixes)
    depth = read_list(list_folder / second / split_list(subject, split), data_folder, prefixes) if second else None
    return pair_views(rgb, depth, subject if split == "test" else "", strict_pairs)


def has_train_list(list_folder: Path, subject: str, second: str | None = DEPTH_LISTS) -> bool:
    """Whether `<subject>_train.txt` exists in `v_rgb/` or the second view's folder."""
    name = split_list(subject, "train")
    return any((list_folder / view / name).is_file() for view in (RGB_LISTS, second) if view)


def derived_train(list_folder: Path, data_folder: Path, subject: str,
                  prefixes: Sequence[tuple[str, str]] = (), strict_pairs: bool = False,
                  second: str | None = DEPTH_LISTS) -> list[Sample]:
    """LOSO training samples of a subject without `<subject>_train.txt` in either view: the test
    samples of every other subject of `subName.txt`, in its order, each with its own list's subject.

    A train list is the union of the other subjects' test lists, so a list folder may ship test
    lists only (the repository's `data/` does: 95 train lists would repeat every line 94 times).
    """
    samples = [sample for other in subject_names(list_folder) if other != subject
               for sample in load_split(list_folder, data_folder, other, "test", prefixes, strict_pairs, second)]
    if not samples:
        raise UserError(f"{list_folder / RGB_LISTS / SUBJECT_LIST}: no subject besides {subject} to train on "
                        f"(and no {split_list(subject, 'train')})")
    return samples


def load_labeled(list_folder: Path, data_folder: Path, subjects: Sequence[str],
                 prefixes: Sequence[tuple[str, str]] = (), strict_pairs: bool = False,
                 second: str | None = DEPTH_LISTS) -> list[Sample]:
    """Every labeled sample once: the union of the subjects' test lists, subject from the list."""
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    for subject in subjects:
        for sample in load_split(list_folder, data_folder, subject, "test", prefixes, strict_pairs, second):
            if sample.key in seen:
                raise UserError(f"{sample.rgb_source}: sample {sample.key} is also in the test list "
                                f"of {seen[sample.key]}")
            seen[sample.key] = subject
            samples.append(sample)
    return samples


def load_pool(list_folder: Path, data_folder: Path, prefixes: Sequence[tuple[str, str]] = (),
              strict_pairs: bool = False, intensity_threshold: float | None = None,
              intensity_csv: str | Path | None = None,
              exclude_subjects: Sequence[str] = (), second: str = DEPTH_LISTS) -> list[Sample]:
    """The unlabeled pre-training pool, labels ignored.

    Reads `v_rgb/pretrain.txt` and the second view's (`second`: `v_depth/` or `v_gray/`)
    `pretrain.txt`; without them, falls back to every
    subject's test list (all labeled samples, labels ignored). Intensity comes from a 4th list
    column or from `intensity_csv` (columns `key,intensity`). With `intensity_threshold` T only
    pairs with intensity >= T are kept (intensity perception) and the counts are printed.
    """
    rgb_list, depth_list = list_folder / RGB_LISTS / POOL_LIST, list_folder / second / POOL_LIST
    if rgb_list.is_file() or depth_list.is_file():
        samples = pair_views(read_list(rgb_list, data_folder, prefixes, labeled=False),
                             read_list(depth_list, data_folder, prefixes, labeled=False),
                             strict=strict_pairs)
        print(f"pre-training pool: {len(samples)} pairs from {rgb_list} and {depth_list}")
    else:
        samples = load_labeled(list_folder, data_folder, subject_names(list_folder), prefixes,
                               strict_pairs, second)
        print(f"pre-training pool: no {POOL_LIST} in {list_folder}/v_rgb, using the "
              f"{len(samples)} labeled samples of the subjects' test lists (labels ignored)")
    if intensity_csv:
        samples = _with_csv_intensity(samples, Path(intensity_csv))
    if exclude_subjects:
        excluded = {subject_name(name) for name in exclude_subjects}
        _check_excluded(excluded, samples, list_folder, rgb_list if rgb_list.is_file() else None)
        before = len(samples)
        samples = [s for s in samples if s.subject not in excluded]
        print(f"excluded subjects {','.join(sorted(excluded))}: {before - len(samples)} pairs left out")
    if intensity_threshold is not None:
        missing = [s.key for s in samples if s.intensity is None]
        if missing:
            raise UserError(f"--intensity_threshold needs an intensity for every pair; {len(missing)} "
                            f"have none, e.g. {missing[0]} (add a 4th list column or --intensity_csv)")
        kept = [s for s in samples if s.intensity >= intensity_threshold]
        print(f"intensity threshold {intensity_threshold:g}: kept {len(kept)} pairs, "
              f"dropped {len(samples) - len(kept)}")
        samples = kept
    if not samples:
        raise UserError(f"{rgb_list}: no pre-training pairs left")
    return samples


def subject_name(name: str) -> str:
    """A subject as the user spells it (`spNO.1`, `spNO1`, `spno1`) in the `list_subject` spelling."""
    match = _SUBJECT_IN_NAME.fullmatch(name.strip())
    return list_subject(int(match.group(1))) if match else name.strip()


def _check_excluded(excluded: set[str], samples: Sequence[Sample], list_folder: Path, pool_list: Path | None) -> None:
    """Every excluded subject exists in the pool or in subName.txt, else an error: a misspelt
    subject would leave its pairs in the pool and the run would look leak-free while it is not.
    A subject of subName.txt without pool pairs is fine (nothing to leave out)."""
    known = {s.subject for s in samples}
    names_file = list_folder / RGB_LISTS / SUBJECT_LIST
    if names_file.is_file():
        known |= set(subject_names(list_folder))
    unknown = sorted(excluded - known)
    if unknown:
        where = " and ".join(str(p) for p in (pool_list, names_file) if p is not None and p.is_file()) \
            or str(list_folder)
        raise UserError(f"{where}: --exclude_subjects {','.join(unknown)}: no such subject "
                        f"(known: {_some(sorted(known, key=_subject_order))})")


def _subject_order(name: str) -> tuple[int, str]:
    match = _SUBJECT_IN_NAME.fullmatch(name)
    return (int(match.group(1)), "") if match else (1 << 30, name)


def _some(names: Sequence[str], shown: int = 5) -> str:
    """`a, b, c` or `a, b, c, ... (12 in all)`: a name list short enough for one line."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])}, ... ({len(names)} in all)"


def _with_csv_intensity(samples: list[Sample], csv_path: Path) -> list[Sample]:
    import csv
    from dataclasses import replace

    if not csv_path.is_file():
        raise UserError(f"{csv_path}: intensity CSV not found")
    reader = csv.DictReader(read_lines(csv_path))
    if not reader.fieldnames or not {"key", "intensity"} <= set(reader.fieldnames):
        raise UserError(f"{csv_path}:1: expected columns 'key,intensity'")
    table = {}
    for line_no, row in enumerate(reader, start=2):
        try:
            table[sample_key(row["key"])] = float(row["intensity"])
        except (TypeError, ValueError):
            raise UserError(f"{csv_path}:{line_no}: intensity {row['intensity']!r} is not a number") from None
    return [replace(s, intensity=table.get(s.key, s.intensity)) for s in samples]


def class_file(list_folder: Path) -> Path | None:
    """`classes.txt` beside the lists (or in `v_rgb/`), if there is one."""
    return next((p for p in (list_folder / CLASS_LIST, list_folder / RGB_LISTS / CLASS_LIST) if p.is_file()), None)


def _read_class_names(path: Path) -> list[str]:
    return [line.strip() for line in read_lines(path) if line.strip()]


def class_names(list_folder: Path, n_classes: int) -> list[str]:
    """Names from `classes.txt` beside the lists (or in `v_rgb/`), else the CAS(ME)^3 defaults."""
    path = class_file(list_folder)
    if path is not None:
        names = _read_class_names(path)
        if len(names) < n_classes:
            raise UserError(f"{path}: {len(names)} class names for {n_classes} classes")
        return names[:n_classes]
    return list(DEFAULT_CLASS_NAMES.get(n_classes, [str(i) for i in range(n_classes)]))


def check_labels(samples: Sequence[Sample], n_classes: int) -> None:
    """Labels are class numbers 0..K-1, else an error naming the list file and line.

    K is `n_classes` and, when `classes.txt` exists, at most its number of names. Without
    `classes.txt` every class below the largest label must have a sample: a gap (labels 0, 1, 7)
    is a mistyped label far more often than a class without samples, and it would silently add
    empty classes to the classifier. `classes.txt` declares the classes, so a class it names
    may have no sample.
    """
    if not samples:
        return
    # lists live in <list folder>/v_rgb/, so the list folder is the one above the samples' list
    names_file = class_file(Path(samples[0].rgb_source.rsplit(":", 1)[0]).parent.parent)
    n_names = len(_read_class_names(names_file)) if names_file else None
    for s in samples:
        if s.label < 0 or s.label >= n_classes:
            raise UserError(f"{s.rgb_source}: label {s.label} out of range 0..{n_classes - 1}")
        if n_names is not None and s.label >= n_names:
            raise UserError(f"{s.rgb_source}: label {s.label} out of range 0..{n_names - 1} "
                            f"({names_file} names {n_names} classes)")
    if n_names is not None:
        return
    used = sorted({s.label for s in samples})
    gap = next(c for c in range(used[-1] + 1) if c not in used) if len(used) <= used[-1] else None
    if gap is not None:
        above = min(c for c in used if c > gap)
        odd = next(s for s in samples if s.label == above)
        span = f"{gap}..{above - 1}" if above - gap > 1 else str(gap)
        raise UserError(f"{odd.rgb_source}: label {odd.label} leaves class(es) {span} without a sample "
                        f"(labels used: {', '.join(map(str, used))}); number the classes 0..K-1, or name "
                        f"them in a {CLASS_LIST}")


# ---------------------------------------------------------------------------------------------
# Decoded image store


_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I")  # Pillow's modes of a 16-bit grey PNG


def decode_rgb(path: Path, size: int, source: str) -> np.ndarray:
    """(3, size, size) uint8. A 16-bit grey image is scaled to 8 bits (/ 257) and repeated in the
    three channels, because Pillow's own conversion clips it to white."""
    def read(im: Image.Image) -> np.ndarray:
        if im.mode in _WIDE_GREY:
            grey = np.asarray(im).astype(np.float32) / 257.0
            return np.repeat(grey[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))

    array = _open(path, source, read)
    return _resize(array.transpose(2, 0, 1), size).round().clip(0, 255).astype(np.uint8)


def decode_depth(path: Path, size: int, source: str) -> np.ndarray:
    """(1, size, size) uint16 scaled to 0..65535: 8-bit images x 257, 16-bit as stored."""
    def read(im: Image.Image) -> np.ndarray:
        if im.mode in _WIDE_GREY:
            return np.asarray(im).astype(np.float32)
        if im.mode in ("L", "P", "LA"):
            return np.asarray(im.convert("L")).astype(np.float32) * 257.0
        return np.asarray(im.convert("RGB"))[..., 0].astype(np.float32) * 257.0

    array = _open(path, source, read)
    return _resize(array[None], size).round().clip(0, 65535).astype(np.uint16)


def _open(path: Path, source: str, read) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return read(im)
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"{source}: cannot read image {path} ({err})") from None


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (C, size, size) float32, bilinear with antialiasing."""
    if array.shape[1:] == (size, size):
        return array.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0].numpy()


def _sampled_sha1(path: Path, blocks: int = 16, block: int = 1 << 16) -> str:
    """SHA-1 of a file's size and of `blocks` evenly spaced blocks (the whole file when small):
    a cache can be as large as the data, so hashing all of it would cost a full read per run."""
    size = path.stat().st_size
    digest = hashlib.sha1(str(size).encode())
    with path.open("rb") as handle:
        if size <= blocks * block:
            digest.update(handle.read())
        else:
            for k in range(blocks):
                handle.seek((size - block) * k // (blocks - 1))
                digest.update(handle.read(block))
    return digest.hexdigest()


def _open_cache(manifest: Path, files: dict[str, tuple[Path, np.dtype, tuple[int, ...]]]
                ) -> tuple[dict[str, np.ndarray], str | None]:
    """The cached arrays by view, memory-mapped, or a line naming the damaged file and why.

    A file must parse as `.npy` with the expected dtype and shape, have exactly the size its
    header implies, and match the size and sampled SHA-1 the manifest recorded (manifests of
    older versions record none: they get the other checks).
    """
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        return {}, _damaged(manifest, _one_line(err))
    saved = record.get("files", {}) if isinstance(record, dict) else None
    if not isinstance(saved, dict):
        return {}, _damaged(manifest, "not a cache manifest")
    arrays = {}
    for view, (path, dtype, shape) in files.items():
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            return {}, _damaged(path, _one_line(err))
        if array.dtype != dtype or array.shape != shape:
            return {}, _damaged(path, f"holds {array.dtype} {array.shape}, expected {dtype} {shape}")
        size, expected = path.stat().st_size, array.offset + array.nbytes
        if size != expected:
            return {}, _damaged(path, f"{size} bytes, its header implies {expected}")
        entry = saved.get(view)
        if entry is not None and (entry.get("bytes") != size or entry.get("sha1") != _sampled_sha1(path)):
            return {}, _damaged(path, "content differs from what was written")
        arrays[view] = array
    return arrays, None


def _damaged(path: Path, reason: str) -> str:
    return f"{path}: damaged decoded-image cache ({reason})"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class ImageStore:
    """All samples decoded once: `rgb` (N, 3, S, S) uint8 and `depth` (N, 1, S, S) uint16 (the
    second view: depth or grey; zero for RGB-only samples).

    With `cache_dir`, the arrays live in memory-mapped `.npy` files named by a hash of the
    sources (paths, sizes, modification times) and `load_size`, reused while they match. The
    manifest, written last, records each file's size and sampled SHA-1; a cache that fails these
    checks is decoded again with one warning, so that a damaged file never needs removing by hand.
    """

    def __init__(self, samples: Sequence[Sample], load_size: int, cache_dir: str | Path | None = None,
                 workers: int = 0, progress: bool = True) -> None:
        self.samples = list(samples)
        self.load_size = load_size
        n, s = len(self.samples), load_size
        rgb_shape, depth_shape = (n, 3, s, s), (n, 1, s, s)
        if cache_dir is None:
            self.rgb = np.empty(rgb_shape, np.uint8)
            self.depth = np.empty(depth_shape, np.uint16)
            self._decode(range(n), workers, progress)
            return
        cache_dir = Path(cache_dir)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--cache_dir {cache_dir}: cannot create it ({err.strerror})") from None
        if not os.access(cache_dir, os.W_OK):
            raise UserError(f"--cache_dir {cache_dir}: not writable")
        stem = cache_dir / f"store_{self._fingerprint()}"
        manifest = stem.with_suffix(".json")
        files = {"rgb": (Path(f"{stem}_rgb.npy"), np.dtype(np.uint8), rgb_shape),
                 "depth": (Path(f"{stem}_depth.npy"), np.dtype(np.uint16), depth_shape)}
        if manifest.is_file():
            arrays, problem = _open_cache(manifest, files)
            if problem is None:
                self.rgb, self.depth = arrays["rgb"], arrays["depth"]
                return
            print(f"warning: {problem}; decoding the images again", file=sys.stderr)
        manifest.unlink(missing_ok=True)
        # Written under temporary names, renamed into place, then the manifest last: a cache file
        # is whole or absent, and a process still reading an older copy keeps it.
        tmp = {view: path.with_name(f".{path.name}.{os.getpid()}.tmp") for view, (path, _, _) in files.items()}
        try:
            self.rgb = np.lib.format.open_memmap(tmp["rgb"], "w+", np.uint8, rgb_shape)
            self.depth = np.lib.format.open_memmap(tmp["depth"], "w+", np.uint16, depth_shape)
            self._decode(range(n), workers, progress)
            self.rgb.flush()
            self.depth.flush()
            record = {}
            for view, (path, _, _) in files.items():
                record[view] = {"bytes": tmp[view].stat().st_size, "sha1": _sampled_sha1(tmp[view])}
                os.replace(tmp[view], path)
        except BaseException as err:
            for path in tmp.values():
                path.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise UserError(f"--cache_dir {cache_dir}: could not write the decoded images ({err.strerror})"
                                ) from None
            raise
        atomic_write_text(manifest, json.dumps({"n": n, "load_size": s, "first": str(self.samples[0].rgb_path),
                                                "files": record}) + "\n")

    def _fingerprint(self) -> str:
        digest = hashlib.sha1(str(self.load_size).encode())
        for sample in self.samples:
            for path in (sample.rgb_path, sample.depth_path):
                if path is None:
                    continue
                stat = path.stat()
                digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def _decode(self, indices: range, workers: int, progress: bool) -> None:
        def one(i: int) -> None:
            sample = self.samples[i]
            self.rgb[i] = decode_rgb(sample.rgb_path, self.load_size, sample.rgb_source)
            # RGB-only data: the second view is zero, and an RGB-only evaluation never reads it
            self.depth[i] = (0 if sample.depth_path is None else
                             decode_depth(sample.depth_path, self.load_size, sample.depth_source))

        bar = tqdm(total=len(indices), desc="decoding images", unit="pair", disable=not progress,
                   leave=False)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for _ in pool.map(one, indices):
                bar.update()
        bar.close()

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images of `index` (B,) on `device` as float in [0, 1]: RGB (B,3,S,S), depth (B,1,S,S)."""
        order = index.cpu().numpy()
        rgb = torch.from_numpy(np.ascontiguousarray(self.rgb[order]))
        depth = torch.from_numpy(np.ascontiguousarray(self.depth[order]).view(np.int16))
        device = torch.device(device)
        if device.type == "cuda":
            rgb, depth = rgb.pin_memory(), depth.pin_memory()
        rgb = rgb.to(device, non_blocking=True).float().div_(255.0)
        depth = depth.to(device, non_blocking=True).int().bitwise_and_(0xFFFF).float().div_(65535.0)
        return rgb, depth


def iterate_batches(n: int, batch_size: int, shuffle: bool, drop_last: bool,
                    generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index batches (B,) over range(n); a permutation from `generator` when shuffling."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        if drop_last and len(batch) < batch_size:
            return
        yield batch


# ---------------------------------------------------------------------------------------------
# Batched paired augmentation on the training device.
#
# One geometric draw per sample (a random resized crop and a horizontal flip) is applied to both
# views through a single sampling grid, so the RGB and depth images of a pair stay aligned.
# Photometric jitter is drawn per view and respects what a difference image encodes: a signed
# change around mid-grey (0.5). Its "contrast" scales the change around mid-grey (a stronger or
# weaker movement); for RGB, saturation mixes each channel's change towards the grey change, and
# random grayscale drops colour. There is no brightness jitter: an offset would claim that every
# pixel changed, and on the synthetic data the original's multiplicative brightness jitter (which
# moves mid-grey itself) stopped pre-training from learning at all. Depth gets the contrast jitter
# only (saturation, hue and grayscale mean nothing on one channel). Hue jitter is not offered:
# rotating the hue of a difference has no physical meaning. Evaluation uses a deterministic centre
# crop, identical for both views.

_CROP_TRIES = 10


@dataclass
class PairAugment:
    """Turns decoded batches into network input.

    `__call__(rgb (B,3,S,S), depth (B,1,S,S))`, both float in [0, 1] on any device, returns
    x (B,4,H,W) normalised, H = W = `image_size`: channels 0-2 RGB, channel 3 depth.
    Random parameters are drawn from torch's global CPU generator (or `generator`), so the
    result does not depend on the device.
    """
    image_size: int
    train: bool
    rgb_mean: tuple[float, float, float]
    rgb_std: tuple[float, float, float]
    depth_mean: float
    depth_std: float
    crop_low: float = 0.2
    flip: bool = True
    jitter: float = 0.0
    grayscale_p: float = 0.0

    def __post_init__(self) -> None:
        # Constant tensors by device and values: made once, as a tensor made from Python numbers
        # on a GPU is a blocking copy from the host.
        self._constants: dict = {}

    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        batch, load_size = rgb.shape[0], rgb.shape[-1]
        jitter = self.train and self.jitter > 0
        theta, *factors = self._draw(batch, load_size, jitter, generator, rgb.device)
        grid = F.affine_grid(theta, [batch, 1, self.image_size, self.image_size], align_corners=False)
        rgb = F.grid_sample(rgb, grid, mode="bilinear", padding_mode="border", align_corners=False)
        depth = F.grid_sample(depth, grid, mode="bilinear", padding_mode="border", align_corners=False)
        shift, scale, luma = self._device_constants(rgb.device)
        if jitter:
            rgb_amplitude, saturation, grayscale, depth_amplitude = factors
            self._jitter_rgb_(rgb, rgb_amplitude, saturation, grayscale, luma)
            _amplitude_(depth, depth_amplitude)
        # Normalised straight into the (B,4,H,W) output: one pass per view, no concatenation.
        x = torch.empty(batch, 4, self.image_size, self.image_size, device=rgb.device)
        torch.addcmul(shift[:, :3], rgb, scale[:, :3], out=x[:, :3])
        torch.addcmul(shift[:, 3:], depth, scale[:, 3:], out=x[:, 3:])
        return x

    def _draw(self, batch: int, load_size: int, jitter: bool, generator: torch.Generator | None,
              device: torch.device) -> list[torch.Tensor]:
        """The step's random parameters on `device`: theta (B,2,3), then with `jitter` the RGB
        amplitude, saturation, grayscale (1 = turn gray) and depth amplitude factors (B,1,1,1).

        Drawn on the CPU in this order (the result does not depend on the device), packed in one
        tensor and copied once, without waiting, from pinned memory on CUDA.
        """
        parts = [self.crop_theta(batch, load_size, generator).view(-1)]
        if jitter:
            parts += [self._factors(batch, generator), self._factors(batch, generator)]
            parts.append((torch.rand(batch, generator=generator) < self.grayscale_p).float()
                         if self.grayscale_p > 0 else torch.zeros(batch))
            parts.append(self._factors(batch, generator))
        sizes = [part.numel() for part in parts]
        if device.type == "cuda":
            packed = torch.cat(parts, out=torch.empty(sum(sizes), pin_memory=True))
            packed = packed.to(device, non_blocking=True)
        else:
            packed = torch.cat(parts)
        theta, *factors = packed.split(sizes)
        return [theta.view(batch, 2, 3), *(factor.view(-1, 1, 1, 1) for factor in factors)]

    def _device_constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1,4,1,1) normalisation shift -mean/std and scale 1/std (RGB, depth) and the (1,3,1,1)
        luma weights, on `device`."""
        key = (device, tuple(self.rgb_mean), tuple(self.rgb_std), self.depth_mean, self.depth_std)
        if key not in self._constants:
            std = torch.tensor([*self.rgb_std, self.depth_std]).view(1, 4, 1, 1)
            mean = torch.tensor([*self.rgb_mean, self.depth_mean]).view(1, 4, 1, 1)
            self._constants[key] = tuple(t.to(device) for t in (-mean / std, 1 / std, LUMA.view(1, 3, 1, 1)))
        return self._constants[key]

    def crop_theta(self, batch: int, load_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Affine matrices (B, 2, 3) mapping output to input coordinates in [-1, 1].

        Training: torchvision's RandomResizedCrop rule (area fraction in [crop_low, 1], aspect
        ratio log-uniform in [3/4, 4/3], up to 10 tries, then the centre crop) and a flip with
        probability 0.5. Evaluation: the centre `image_size` square of the `load_size` image.
        """
        if not self.train:
            frac = self.image_size / load_size
            theta = torch.zeros(batch, 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = frac
            return theta
        area = torch.empty(batch, _CROP_TRIES).uniform_(self.crop_low, 1.0, generator=generator)
        log_ratio = torch.empty(batch, _CROP_TRIES).uniform_(math.log(3 / 4), math.log(4 / 3),
                                                             generator=generator)
        ratio = log_ratio.exp()
        width, height = (area * ratio).sqrt(), (area / ratio).sqrt()
        valid = (width <= 1) & (height <= 1)
        first = valid.float().argmax(dim=1, keepdim=True)
        has_valid = valid.any(dim=1)
        width = torch.where(has_valid, width.gather(1, first)[:, 0], torch.ones(batch))
        height = torch.where(has_valid, height.gather(1, first)[:, 0], torch.ones(batch))
        # Crop centre uniform over positions that keep the box inside the image.
        cx = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - width)
        cy = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - height)
        sign = torch.ones(batch)
        if self.flip:
            sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0] = width * sign
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = height
        theta[:, 1, 2] = cy
        return theta

    def _factors(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """Per-sample factors (B,) uniform in [1 - jitter, 1 + jitter], on the CPU."""
        lo = max(0.0, 1 - self.jitter)
        return torch.empty(batch).uniform_(lo, 1 + self.jitter, generator=generator)

    def _jitter_rgb_(self, rgb: torch.Tensor, amplitude: torch.Tensor, saturation: torch.Tensor,
                     grayscale: torch.Tensor, luma: torch.Tensor) -> None:
        """In place on rgb (B,3,H,W), with factors (B,1,1,1): amplitude, then saturation (each
        channel mixed with the grey change: rgb * s + grey (1 - s), clamped), then grayscale
        where `grayscale` is 1. `luma` (1,3,1,1) weights the grey change."""
        _amplitude_(rgb, amplitude)
        gray = _gray(rgb, luma)
        rgb.mul_(saturation).add_(gray.mul_(1 - saturation)).clamp_(0, 1)
        if self.grayscale_p > 0:
            # A selection over the batch, not a copy of the chosen samples: their indices would
            # have to be read back to the host.
            torch.where(grayscale > 0, _gray(rgb, luma), rgb, out=rgb)


LUMA = torch.tensor(LUMA_WEIGHTS)


def _amplitude_(x: torch.Tensor, factor: torch.Tensor) -> None:
    """In place on x (B,C,H,W): scale each sample's change around mid-grey by its factor (B,1,1,1),
    i.e. x * f + 0.5 (1 - f), clamped to [0, 1]."""
    torch.addcmul(0.5 * (1 - factor), x, factor, out=x).clamp_(0, 1)


def _gray(rgb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Luma (B,1,H,W) of rgb (B,3,H,W) with `weights` (1,3,1,1) on its device."""
    return (rgb * weights).sum(1, keepdim=True)


def add_augment_args(parser: argparse.ArgumentParser, crop_low: float, jitter: float,
                     grayscale_p: float) -> None:
    """Training-augmentation flags; defaults differ between pre-training and fine-tuning."""
    group = parser.add_argument_group("augmentation")
    group.add_argument("--crop_low", type=util.SHARE, default=crop_low,
                       help="smallest crop area fraction of the random resized crop (1 = whole image)")
    group.add_argument("--no_flip", action="store_true", help="no random horizontal flips")
    group.add_argument("--jitter", type=util.NON_NEGATIVE, default=jitter,
                       help="strength of the per-view jitter of the change around mid-grey (and RGB saturation), "
                            "0 = off")
    group.add_argument("--grayscale_p", type=util.PROBABILITY, default=grayscale_p,
                       help="probability of turning the RGB view gray")


def augment_from_args(args: argparse.Namespace, train: bool) -> PairAugment:
    """The augmentation the flags describe; `train=False` gives the deterministic test transform."""
    return PairAugment(image_size=args.image_size, train=train, rgb_mean=tuple(args.rgb_mean),
                       rgb_std=tuple(args.rgb_std), depth_mean=args.depth_mean,
                       depth_std=args.depth_std, crop_low=args.crop_low, flip=not args.no_flip, jitter=args.jitter,
                       grayscale_p=args.grayscale_p)


# ---------------------------------------------------------------------------------------------
# Command-line flags shared by the three entry scripts


# Normalisation of the second view when not given: the depth defaults for depth; for grey the
# luma (ITU-R 601) weighting of the RGB defaults, as a grey difference is the luma of an RGB one;
# RGB-only data has a zero second view that nothing reads.
SECOND_VIEW_STATS = {"RGB_D": (0.0423, 0.1761), "RGB_gray": (0.4471, 0.4495), "RGB": (0.0, 1.0)}


# The RGB view's normalisation when neither the flags nor a checkpoint give it.
RGB_STATS = {"rgb_mean": [0.4454, 0.4474, 0.4504], "rgb_std": [0.4474, 0.4505, 0.4502]}


def add_data_args(parser: argparse.ArgumentParser, views: Sequence[str] = ("RGB_D", "RGB_gray"),
                  from_checkpoint: bool = False) -> None:
    """Data flags common to pre-training, probing and fine-tuning; `views` are the `--view`
    choices (the first is the default). With `from_checkpoint` (the evaluations) `--image_size`
    and the normalisation default to None: the checkpoint's values, resolved by the caller."""
    group = parser.add_argument_group("data")
    group.add_argument("--data_folder", type=str, required=True,
                       help="dataset root; list paths are relative to it; lists are looked for in "
                            "DATA_FOLDER/data/v_rgb and the second view's folder")
    group.add_argument("--view", choices=views, default=views[0],
                       help="RGB_D: RGB + depth difference images (v_depth lists); RGB_gray: RGB + grey "
                            "difference (v_gray lists, the published ablation)"
                            + ("; RGB: the RGB view alone (v_rgb lists only, e.g. MEGC2019), through the RGB "
                               "half of a dual-view encoder" if "RGB" in views else ""))
    group.add_argument("--list_folder", type=str, default=None,
                       help="folder holding v_rgb/ and the second view's lists (default: DATA_FOLDER/data, then "
                            "the repo's data/)")
    process_only(group.add_argument("--path_prefix", action="append", default=[], metavar="OLD=NEW",
                                    help="rewrite list paths starting with OLD to start with NEW (repeatable)"))
    group.add_argument("--strict_pairs", action="store_true",
                       help="a sample present in only one view is an error instead of a warning")
    group.add_argument("--image_size", type=util.POSITIVE_INT, default=None if from_checkpoint else 224,
                       help="network input size (>= 64)" + ("; default: the checkpoint's, else 224" if from_checkpoint
                                                           else ""))
    group.add_argument("--load_size", type=util.POSITIVE_INT, default=None,
                       help="size images are decoded to before cropping (default image_size*8/7)")
    process_only(group.add_argument("--num_workers", type=util.NON_NEGATIVE_INT, default=2, help="threads decoding images"))
    process_only(group.add_argument("--cache_dir", type=str, default=None,
                                    help="keep decoded images in memory-mapped files here (reused across runs)"))
    for key, value in RGB_STATS.items():
        group.add_argument(f"--{key}", type=float, nargs=3, default=None if from_checkpoint else value,
                           help=f"{key.replace('_', ' ')} of the RGB view" + (
                               f"; default: the checkpoint's, else {value}" if from_checkpoint else ""))
    group.add_argument("--depth_mean", type=float, default=None,
                       help="mean of the second view; default 0.0423 for depth, 0.4471 for grey")
    group.add_argument("--depth_std", type=float, default=None,
                       help="std of the second view; default 0.1761 for depth, 0.4495 for grey")


def finish_data_args(args: argparse.Namespace) -> None:
    """Validate data flags and fill derived values (in place)."""
    if args.image_size < 64:
        raise UserError(f"--image_size {args.image_size}: must be at least 64")
    if args.load_size is None:
        args.load_size = round(args.image_size * 8 / 7)
    if args.load_size < args.image_size:
        raise UserError(f"--load_size {args.load_size} is smaller than --image_size {args.image_size}")
    if not Path(args.data_folder).is_dir():
        raise UserError(f"{args.data_folder}: data folder not found")
    args.prefixes = parse_prefixes(args.path_prefix)
    args.second_view = SECOND_VIEW_LISTS[args.view]
    mean, std = SECOND_VIEW_STATS[args.view]
    args.depth_mean = mean if args.depth_mean is None else args.depth_mean
    args.depth_std = std if args.depth_std is None else args.depth_std
