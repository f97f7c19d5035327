"""A CAS(ME)^3 release part on disk: subject and video folders, frame files, OpenFace AU tables."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset import file_subject
from scripts.datatools.casme3.annotations import parse_subject
from scripts.datatools.common.frames import frame_index
from scripts.datatools.common.report import Report
from scripts.datatools.common.sheets import column_key, filled, read_sheet
from util import UserError

_AU_COLUMN = re.compile(r"au\d+_r")


@dataclass(frozen=True)
class VideoFrames:
    """Frame files of one video: index -> path, per view."""
    rgb: dict[int, Path]
    depth: dict[int, Path]


def _child_dir(folder: Path, name: str) -> Path:
    """`folder/name`, matched case-insensitively; UserError naming the expected path."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    raise UserError(f"{exact}: folder not found")


class SourceTree:
    """One release part: `RGB/<Subject>/<video>/color/` and `depth/<Subject>/<video>[/depth]/`.

    Subject folders are matched by number (`spNO.1`, `spNo.1` and `spNO1` are subject 1) and video
    folders case-insensitively; unusual spellings are reported once.
    """

    def __init__(self, root: Path, part: str, report: Report) -> None:
        self.root, self.part, self.report = root, part, report
        self.rgb_top = _child_dir(root, "RGB")
        self.depth_top = _child_dir(root, "depth")
        self.rgb_subjects = self._subjects(self.rgb_top)
        self.depth_subjects = self._subjects(self.depth_top)
        self._frames: dict[tuple[int, str], VideoFrames] = {}

    def _subjects(self, top: Path) -> dict[int, Path]:
        found: dict[int, Path] = {}
        for folder in sorted(p for p in top.iterdir() if p.is_dir()):
            n = parse_subject(folder.name)
            if n is None:
                self.report.add("anomaly", "unknown_folder", str(folder),
                                "not a spNO.<n> subject folder: ignored")
            elif n in found:
                self.report.add("anomaly", "duplicate_folder", str(folder),
                                f"subject {file_subject(n)} also in {found[n]}: ignored")
            else:
                found[n] = folder
                if folder.name != file_subject(n):
                    self.report.add("anomaly", "folder_spelling", str(folder),
                                    f"folder {folder.name!r} used for {file_subject(n)}")
        return found

    def subjects(self) -> list[int]:
        """Subject numbers with an RGB folder, ascending."""
        return sorted(self.rgb_subjects)

    def videos(self, n: int) -> list[str]:
        """Lower-case video names of subject `n` (RGB side)."""
        return sorted({p.name.lower() for p in self.rgb_subjects[n].iterdir() if p.is_dir()})

    def frames(self, n: int, video: str) -> VideoFrames | str:
        """The video's frames, or a reason naming what is missing."""
        if (n, video) in self._frames:
            return self._frames[(n, video)]
        folders = []
        for view, subjects, top, inner in (("RGB", self.rgb_subjects, self.rgb_top, "color"),
                                            ("depth", self.depth_subjects, self.depth_top, "depth")):
            if n not in subjects:
                return f"no {view} folder for {file_subject(n)} in {top}"
            video_dir = next((p for p in sorted(subjects[n].iterdir())
                              if p.is_dir() and p.name.lower() == video), None)
            if video_dir is None:
                return f"no {view} video folder {video!r} in {subjects[n]}"
            if video_dir.name != video:
                self.report.add("anomaly", "uppercase_task", str(video_dir), f"video folder read as {video!r}")
            frame_dir = video_dir / inner
            if not frame_dir.is_dir():
                frame_dir = video_dir
                self.report.count(f"no_inner_{inner}_folder", f"{video_dir}: no {inner}/ folder, frames "
                                                              f"read from the video folder")
            folders.append(frame_dir)
        found = VideoFrames(frame_index(folders[0], (".jpg",)), frame_index(folders[1], (".png",)))
        self._frames[(n, video)] = found
        return found

    def frame_paths(self, n: int, video: str, first: int, second: int) -> tuple[Path, Path, Path, Path] | str:
        """RGB and depth paths of two frames, or a reason naming the missing folder or frame."""
        found = self.frames(n, video)
        if isinstance(found, str):
            return found
        for view, index in (("RGB", found.rgb), ("depth", found.depth)):
            for frame in (first, second):
                if frame not in index:
                    folder = f"{self.part} {view} {file_subject(n)}/{video}"
                    return f"{view} frame {frame} missing in {folder} ({len(index)} frames" + (
                        f", {min(index)}-{max(index)})" if index else ")")
        return found.rgb[first], found.rgb[second], found.depth[first], found.depth[second]


def read_au_csv(path: Path) -> dict[int, np.ndarray]:
    """OpenFace-style CSV: `frame` -> vector of the `AUxx_r` columns (rows with success 0 left out)."""
    table = read_sheet(path, ("frame",))
    au_columns = [key for key in map(column_key, table.headers) if _AU_COLUMN.fullmatch(key)]
    if not au_columns:
        raise UserError(f"{path}: no AUxx_r intensity columns")
    rows = {}
    for row_no, cells in table.rows:
        try:
            if filled(cells.get("success")) and float(cells["success"]) == 0:
                continue
            rows[int(float(cells["frame"]))] = np.array([float(cells[key]) for key in au_columns])
        except (ValueError, TypeError):
            raise UserError(f"{path}:{row_no}: expected numbers in frame and AU columns") from None
    return rows


class AuTables:
    """AU intensity change between frames, from `<au_dir>/<Subject>/<Filename>.csv`."""

    def __init__(self, au_dir: Path) -> None:
        self.files: dict[tuple[int, str], Path] = {}
        for folder in sorted(p for p in au_dir.iterdir() if p.is_dir()):
            n = parse_subject(folder.name)
            if n is not None:
                for path in sorted(folder.glob("*.csv")):
                    self.files[(n, path.stem.lower())] = path
        self._tables: dict[tuple[int, str], dict[int, np.ndarray]] = {}

    def change(self, n: int, video: str, first: int, second: int) -> float | None:
        """max over AUs of |AU(second) - AU(first)|; None without a CSV or without both frames."""
        if (n, video) not in self.files:
            return None
        if (n, video) not in self._tables:
            self._tables[(n, video)] = read_au_csv(self.files[(n, video)])
        table = self._tables[(n, video)]
        if first not in table or second not in table:
            return None
        return float(np.max(np.abs(table[second] - table[first])))
