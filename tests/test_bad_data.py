"""Bad data, met the way a user meets it: list files with odd bytes, labels outside the classes, an
excluded subject that does not exist, a damaged image cache, a diverging fine-tuning and bad flags of
the sweep script. Each ends in one `error:` line naming the file and line (or flag) and exit code 2,
or is handled and said in one line; nothing already written is damaged."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dataset
import util
from test_bad_input import fails
from test_evaluation import loso_args, one_thread  # noqa: F401  (one_thread: an autouse fixture)
from test_pretrain import pool, run_args  # noqa: F401  (pool is a fixture)

pretrain = util.load_script("pre-train_CVSCL.py")
finetune = util.load_script("fine-tune_CVSCL.py")


@pytest.fixture
def data(synthetic_data: Path, tmp_path: Path) -> Path:
    """A copy of the synthetic data set that a test may change."""
    return Path(shutil.copytree(synthetic_data, tmp_path / "data"))


def lists(root: Path) -> Path:
    return root / "data"


def first_subject(root: Path) -> str:
    return dataset.subject_names(lists(root))[0]


def frozen(root: Path, out: Path, *extra: str) -> list[str]:
    """The quickest evaluation: one subject, frozen random encoder (features extracted once)."""
    return loso_args(root, out, "--subjects", first_subject(root), "--freeze_encoder", *extra)


# ---------------------------------------------------------------------------------------------
# List files: encoding, byte-order mark, subjects listed twice


def test_non_utf8_byte_names_the_list_and_line(data: Path, tmp_path: Path, capsys) -> None:
    test_list = lists(data) / "v_rgb" / f"{first_subject(data)}_test.txt"
    lines = test_list.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b".png", b"\xe9.png")  # a Latin-1 'é' in a path
    test_list.write_bytes(b"\n".join(lines))
    line = fails(finetune.main, frozen(data, tmp_path / "out"), capsys)
    assert line == f"error: {test_list}:2: byte 0xe9 is not UTF-8 (save the file as UTF-8)"


def test_byte_order_mark_is_accepted(data: Path, tmp_path: Path) -> None:
    """Windows editors start a UTF-8 file with a byte-order mark; lists and subName.txt read as without."""
    subject = first_subject(data)
    for path in (lists(data) / "v_rgb" / "subName.txt", lists(data) / "v_rgb" / f"{subject}_test.txt",
                 lists(data) / "v_depth" / f"{subject}_train.txt", lists(data) / "classes.txt"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert dataset.subject_names(lists(data))[0] == subject
    results = finetune.main(frozen(data, tmp_path / "out"))
    assert results["class_names"] == ["negative", "others", "positive", "surprise"]
    test_lines = (lists(data) / "v_rgb" / f"{subject}_test.txt").read_text().split()
    assert results["per_subject"] == {subject: {"acc": results["acc"], "n": len(test_lines) // 3}}


def test_subject_listed_twice(data: Path, tmp_path: Path, capsys) -> None:
    names = lists(data) / "v_rgb" / "subName.txt"
    subjects = names.read_text().split()
    names.write_text("\n".join([*subjects, subjects[1]]) + "\n")
    line = fails(finetune.main, loso_args(data, tmp_path / "out", "--freeze_encoder"), capsys)
    assert line == f"error: {names}:{len(subjects) + 1}: subject {subjects[1]} is listed twice (first at line 2)"


