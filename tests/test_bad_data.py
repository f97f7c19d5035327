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
from helpers import fails, loso_args, run_args

pretrain = util.load_script("pre-train_CVSCL.py")
finetune = util.load_script("fine-tune_CVSCL.py")

pytestmark = pytest.mark.usefixtures("one_thread")


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


# ---------------------------------------------------------------------------------------------
# Labels outside the classes (the synthetic data has 4 classes, labels 0..3, and a classes.txt)


def relabel(root: Path, key: str, label: int) -> tuple[Path, int]:
    """Give sample `key` label `label` in every list of both views; its test list and line number."""
    found = None
    for path in sorted(lists(root).glob("v_*/*.txt")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            fields = line.split()
            if fields and dataset.sample_key(fields[0]) == key:
                lines[i] = " ".join([fields[0], str(label), *fields[2:]])
                if path.parent.name == "v_rgb" and path.name.endswith("_test.txt"):
                    found = (path, i + 1)
        path.write_text("\n".join(lines) + "\n")
    assert found is not None
    return found


def some_key(root: Path) -> str:
    test_list = lists(root) / "v_rgb" / f"{first_subject(root)}_test.txt"
    return dataset.sample_key(test_list.read_text().split()[0])


@pytest.mark.parametrize("label, classes_txt, flags, message", [
    (7, True, [], "label 7 out of range 0..3 ({classes} names 4 classes)"),
    (7, False, [], "label 7 leaves class(es) 4..6 without a sample (labels used: 0, 1, 2, 3, 7); number the "
                   "classes 0..K-1, or name them in a classes.txt"),
    (7, False, ["--n_label", "4"], "label 7 out of range 0..3"),
    (5, False, ["--n_label", "8"], "label 5 leaves class(es) 4 without a sample"),
    (-1, True, [], "label -1 is negative"),
])
def test_label_outside_the_classes(data: Path, tmp_path: Path, capsys, label: int, classes_txt: bool,
                                   flags: list[str], message: str) -> None:
    if not classes_txt:
        (lists(data) / "classes.txt").unlink()
    test_list, line_no = relabel(data, some_key(data), label)
    line = fails(finetune.main, frozen(data, tmp_path / "out", *flags), capsys)
    assert line.startswith(f"error: {test_list}:{line_no}: " + message.format(classes=lists(data) / "classes.txt"))
    assert not (tmp_path / "out").exists()


def test_classes_named_in_classes_txt_may_be_empty(data: Path, tmp_path: Path) -> None:
    """classes.txt declares the classes: a class it names may have no sample (here class 4)."""
    (lists(data) / "classes.txt").write_text("negative\nothers\npositive\nsurprise\nrepression\nfear\n")
    relabel(data, some_key(data), 5)
    results = finetune.main(frozen(data, tmp_path / "out"))
    assert results["class_names"] == ["negative", "others", "positive", "surprise", "repression", "fear"]


# ---------------------------------------------------------------------------------------------
# Pre-training: an excluded subject that matches nothing


@pytest.mark.parametrize("flag, unknown", [("spNO9", "spNO9"), ("spNO.9,spNO.1", "spNO9"), ("sp9", "sp9")])
def test_unknown_excluded_subject(pool: Path, tmp_path: Path, capsys, flag: str, unknown: str) -> None:
    line = fails(pretrain.main, run_args(pool, tmp_path, "--exclude_subjects", flag), capsys)
    assert line == (f"error: {pool / 'data' / 'v_rgb' / 'pretrain.txt'}: --exclude_subjects {unknown}: no such "
                    f"subject (known: spNO1, spNO2, spNO3)")
    assert not (tmp_path / "models").exists()


def test_excluded_subject_without_pool_pairs_is_no_error(data: Path, capsys) -> None:
    """A subject of subName.txt whose pool pairs were all filtered out has nothing to leave out."""
    subject = first_subject(data)
    for view in ("v_rgb", "v_depth"):
        pool_list = lists(data) / view / "pretrain.txt"
        keep = [line for line in pool_list.read_text().splitlines()
                if dataset.subject_of(Path(line.split()[0]).name) != subject]
        pool_list.write_text("\n".join(keep) + "\n")
    samples = dataset.load_pool(lists(data), data, exclude_subjects=[subject.replace("NO", "NO.")])
    assert len(samples) == len(keep) and subject not in {s.subject for s in samples}
    assert f"excluded subjects {subject}: 0 pairs left out" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# A damaged --cache_dir rebuilds itself with one warning


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, np.uint8).tobytes())


def _garbage_after_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(range(64))
    path.write_bytes(bytes(data))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _appended(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"\0" * 100)


@pytest.mark.parametrize("suffix, damage, reason", [
    ("_rgb.npy", _truncate, ""),
    ("_depth.npy", _truncate, ""),
    ("_rgb.npy", _appended, "bytes, its header implies"),
    ("_rgb.npy", _garbage, ""),
    ("_depth.npy", _garbage_after_header, "content differs from what was written"),
    ("_rgb.npy", _empty, ""),
    (".json", _garbage, ""),
])
def test_damaged_cache_is_rebuilt(data: Path, tmp_path: Path, capsys, suffix, damage, reason) -> None:
    cache = tmp_path / "cache"
    first = finetune.main(frozen(data, tmp_path / "a", "--cache_dir", str(cache)))
    (target,) = cache.glob(f"store_*{suffix}")
    damage(target)
    capsys.readouterr()
    again = finetune.main(frozen(data, tmp_path / "b", "--cache_dir", str(cache)))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "cache" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {target}: damaged decoded-image cache (")
    assert reason in warnings[0] and warnings[0].endswith("); decoding the images again")
    assert again["acc"] == first["acc"]
    finetune.main(frozen(data, tmp_path / "c", "--cache_dir", str(cache)))
    assert "cache" not in capsys.readouterr().err  # the rebuilt cache is whole
    assert not list(cache.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# A non-finite loss blames the learning rate only when the inputs are finite


@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "1e30"], "its inputs are finite, so the weights diverged: lower --learning_rate (1e+30) "
                                  "or check the encoder checkpoint"),
    (["--rgb_std", "0", "0", "0"], "its inputs already hold NaN or infinite values (check --rgb_std/--depth_std "
                                   "and the encoder checkpoint; a lower --learning_rate will not help)"),
])
def test_non_finite_loss_names_its_cause(synthetic_data: Path, tmp_path: Path, capsys, flags, message) -> None:
    line = fails(finetune.main, frozen(synthetic_data, tmp_path, *flags), capsys)
    assert line == f"error: seed0/{first_subject(synthetic_data)}: non-finite loss at epoch 1; {message}"


# ---------------------------------------------------------------------------------------------
# scripts/cluster/sweep_subjects.sh validates its own flags


@pytest.mark.parametrize("argv, message", [
    (["--workers", "abc", "--data_folder", "x"], "--workers abc: expected a whole number >= 1"),
    (["--workers", "0", "--data_folder", "x"], "--workers 0: expected a whole number >= 1"),
    (["--workers", "-2", "--data_folder", "x"], "--workers -2: expected a whole number >= 1"),
    (["--nodes", "x", "--data_folder", "x"], "--nodes x: expected a whole number >= 1"),
    (["--node_rank", "1.5", "--data_folder", "x"], "--node_rank 1.5: expected a whole number >= 0"),
    (["--nodes", "2", "--node_rank", "2", "--data_folder", "x"], "--node_rank 2 --nodes 2: need 0 <= K < M"),
    (["--workers", "--data_folder", "x"], "--workers: missing value (expected a whole number)"),
    (["--nodes"], "--nodes: missing value (expected a whole number)"),
])
def test_sweep_script_refuses_bad_flags(argv: list[str], message: str) -> None:
    done = subprocess.run(["bash", str(util.REPO_ROOT / "scripts" / "cluster" / "sweep_subjects.sh"), *argv],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr.splitlines(), done.stdout) == (2, [f"error: {message}"], "")
