"""The run record (util.claim_folder): every writer of a folder checks through it that the folder
is its own, and a pre-training resume checks what it continues."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import util
from helpers import fails, loso_args, run_args

pretrain = util.load_script("pre-train_CVSCL.py")
finetune = util.load_script("fine-tune_CVSCL.py")


def claimed(folder: Path, settings: dict, tool: str = "tool-a", owns: tuple[str, ...] = ("out*",)) -> util.RunRecord:
    record = util.claim_folder(folder, tool, settings, owns)
    record.save()
    return record


def test_a_folder_of_another_tool_or_other_settings_is_refused_naming_what_differs(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    claimed(folder, {"seed": 0, "data_folder": "/d"})
    (folder / "out.txt").write_text("mine")
    with pytest.raises(util.UserError, match=r"run.json: this folder was made by tool-a, not tool-b"):
        util.claim_folder(folder, "tool-b", {"seed": 0, "data_folder": "/d"}, ())
    with pytest.raises(util.UserError, match=r"other settings \(--seed 0 there, 1 here\)"):
        util.claim_folder(folder, "tool-a", {"seed": 1, "data_folder": "/d"}, ())
    again = util.claim_folder(folder, "tool-a", {"seed": 0, "data_folder": "/d"}, ("out*",))
    assert again.stale == [] and (folder / "out.txt").read_text() == "mine"


def test_overwrite_removes_only_what_the_record_owns(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    claimed(folder, {"seed": 0}, owns=("out*", "logs"))
    (folder / "out.txt").write_text("old")
    (folder / "logs").mkdir()
    (folder / "logs" / "a.log").write_text("old")
    (folder / "notes.md").write_text("the user's own")
    record = util.claim_folder(folder, "tool-a", {"seed": 1}, ("out*", "logs"), overwrite=True)
    assert (folder / "out.txt").exists()  # nothing is removed before save: every check passes first
    record.save()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.md", "run.json"]
    assert util.read_record(folder).settings == {"seed": 1}


@pytest.mark.parametrize("content", [b"", b"{\"tool\": \"x\", ", b"[]", b"null", b"\x80\x81\xfe", b"{}"])
def test_a_damaged_record_is_one_line_also_with_overwrite(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_bytes(content)
    for overwrite in (False, True):
        with pytest.raises(util.UserError, match=r"run.json: damaged run record") as error:
            util.claim_folder(folder, "tool-a", {}, (), overwrite=overwrite)
        assert "\n" not in str(error.value)
    assert (folder / "run.json").read_bytes() == content


def test_unrecorded_files_a_file_path_and_another_tools_entry_are_refused(tmp_path: Path) -> None:
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "x.txt").write_text("x")
    with pytest.raises(util.UserError, match=r"stranger: holds files that no run record accounts for \(e.g. x.txt\)"):
        util.claim_folder(tmp_path / "stranger", "tool-a", {}, ())
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(util.UserError, match=r"a-file: not a folder"):
        util.claim_folder(tmp_path / "a-file", "tool-a", {}, ())
    claimed(tmp_path / "dataset", {}, tool="prepare", owns=("data", "images"))
    with pytest.raises(util.UserError, match=r"lies in .*dataset/data, which prepare wrote"):
        util.claim_folder(tmp_path / "dataset" / "data", "make_published_split.py", {}, ())
    util.claim_folder(tmp_path / "dataset" / "eval", "fine-tune_CVSCL.py", {}, ())  # not an owned entry


@pytest.mark.slow
def test_resume_of_another_runs_checkpoint_is_refused_and_nothing_is_rewritten(pool: Path, tmp_path: Path,
                                                                               capsys) -> None:
    base = run_args(pool, tmp_path, "--epochs", "1")
    seed0, seed1 = pretrain.main([*base, "--seed", "0"]), pretrain.main([*base, "--seed", "1"])
    before = {p: p.read_bytes() for folder in (seed0, seed1) for p in folder.iterdir()}
    line = fails(pretrain.main, [*base, "--seed", "1", "--resume", str(seed0 / "last.pth")], capsys)
    assert line == (f"error: {seed0 / 'last.pth'}: a checkpoint of a run of other settings (--seed 0 there, 1 here); "
                    "to start a new run from it, name the new run with --run_name")
    copy = tmp_path / "copy"
    shutil.copytree(pool, copy)
    other_data = [copy if arg == str(pool) else arg for arg in base]
    line = fails(pretrain.main, [*map(str, other_data), "--resume", str(seed0 / "last.pth")], capsys)
    assert f"--data_folder '{pool.resolve()}' there, '{copy.resolve()}' here" in line
    assert {p: p.read_bytes() for folder in (seed0, seed1) for p in folder.iterdir()} == before
    # the same command still runs: the refusal rewrote no record
    pretrain.main([*base, "--seed", "1", "--epochs", "2", "--resume", str(seed1 / "last.pth")])

    seeded = pretrain.main([*base, "--seed", "1", "--epochs", "2", "--run_name", "from_seed0",
                            "--resume", str(seed0 / "last.pth")])
    record = util.read_record(seeded)
    assert record.complete and record.details["seeded_from"] == str((seed0 / "last.pth").resolve())
    assert [json.loads(line)["epoch"] for line in (seeded / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_two_data_folders_keep_their_tensorboard_files_apart(pool: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other_data"
    shutil.copytree(pool, other)
    runs = [pretrain.main(["--data_folder", str(data), "--model_path", str(tmp_path / models),
                           "--tb_path", str(tmp_path / "tb"), *run_args(pool, tmp_path)[6:], "--epochs", "1"])
            for data, models in ((pool, "models_a"), (other, "models_b"))]
    tb_folders = sorted((tmp_path / "tb").iterdir())
    assert len(tb_folders) == 2 and runs[0].name == runs[1].name
    assert all(len(list(folder.glob("events.out.tfevents.*"))) == 1 for folder in tb_folders)
    kept = {p: p.read_bytes() for p in [*tb_folders[0].parent.rglob("*")] if p.is_file()}
    pretrain.main(["--data_folder", str(pool), "--model_path", str(tmp_path / "models_a"),
                   "--tb_path", str(tmp_path / "tb"), *run_args(pool, tmp_path)[6:], "--epochs", "1", "--overwrite"])
    mine = tmp_path / "tb" / f"{runs[0].name}_{util.folder_digest(runs[0])}"
    assert {p: b for p, b in kept.items() if mine not in p.parents} == \
        {p: p.read_bytes() for p in (tmp_path / "tb").rglob("*") if p.is_file() and mine not in p.parents}


@pytest.mark.parametrize("content", ["{}", "", "[1, 2]"])
def test_a_damaged_unit_file_is_one_line(synthetic_data: Path, tmp_path: Path, capsys, content: str) -> None:
    argv = loso_args(synthetic_data, tmp_path, "--freeze_encoder", "--subjects", "spNO59", "--run_name", "run")
    finetune.main(argv)
    unit = tmp_path / "run" / "units" / "seed0" / "spNO59.json"
    unit.write_text(content)
    line = fails(finetune.main, [*argv, "--aggregate_only"], capsys)
    assert line.startswith(f"error: {unit}: damaged unit result")
