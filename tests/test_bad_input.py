"""Bad flags, bad checkpoints, unwritable folders and interrupted saves, met the way a user meets
them: the entry point run as the CLI runs it (`util.run_cli`), one `error:` line on stderr and exit
code 2, and nothing already written damaged."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import util
from helpers import fails, loso_args, run_args, save_checkpoint

pretrain = util.load_script("pre-train_CVSCL.py")
finetune = util.load_script("fine-tune_CVSCL.py")


@pytest.mark.parametrize("flags, message", [
    (["--nce_k", "0"], "argument --nce_k: 0: must be a whole number > 0"),
    (["--nce_k", "-5"], "argument --nce_k: -5: must be a whole number > 0"),
    (["--nce_t", "0"], "argument --nce_t: 0: must be a number > 0"),
    (["--nce_t", "nan"], "argument --nce_t: nan: must be a number > 0"),
    (["--learning_rate", "-1"], "argument --learning_rate: -1: must be a number > 0"),
    (["--epochs", "0"], "argument --epochs: 0: must be a whole number > 0"),
    (["--epochs", "-1"], "argument --epochs: -1: must be a whole number > 0"),
    (["--nce_m", "1"], "argument --nce_m: 1: must be a number in [0, 1)"),
    (["--device", "gpu0"], "--device gpu0: expected auto, cpu, cuda or cuda:N"),
])
def test_pretrain_refuses_bad_numbers_and_devices(pool: Path, tmp_path: Path, capsys, flags, message) -> None:
    line = fails(pretrain.main, run_args(pool, tmp_path, *flags), capsys)
    assert message in line
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "-1"], "argument --learning_rate: -1: must be a number > 0"),
    (["--learning_rate", "0"], "argument --learning_rate: 0: must be a number > 0"),
    (["--encoder_lr_mult", "-0.1"], "argument --encoder_lr_mult: -0.1: must be a number >= 0"),
    (["--device", "gpu0"], "--device gpu0: expected auto, cpu, cuda or cuda:N"),
])
def test_evaluation_refuses_bad_numbers_and_devices(synthetic_data: Path, tmp_path: Path, capsys, flags,
                                                    message) -> None:
    assert message in fails(finetune.main, loso_args(synthetic_data, tmp_path, *flags), capsys)


def test_nan_checkpoint_is_refused_by_evaluation(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "diverged.pth"
    save_checkpoint(path, "alexnet", published=False)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["rgb_to_d.conv_block_1.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ckpt, path)
    line = fails(finetune.main, loso_args(synthetic_data, tmp_path, "--model_path", str(path), "--freeze_encoder"),
                 capsys)
    assert "diverged.pth: 1 tensor(s) hold NaN or infinite values (e.g. rgb_to_d.conv_block_1.0.weight)" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_model_path(pool: Path, tmp_path: Path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = fails(pretrain.main, run_args(pool, tmp_path, "--epochs", "1") + ["--model_path", str(locked / "m")],
                     capsys)
    finally:
        locked.chmod(0o700)
    assert "cannot write here" in line


def test_unwritable_model_path_as_root(pool: Path, tmp_path: Path, capsys) -> None:
    """A --model_path below a regular file cannot be created, whoever runs it."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = fails(pretrain.main, run_args(pool, tmp_path, "--epochs", "1") + ["--model_path", str(blocker / "m")],
                 capsys)
    assert "cannot write here" in line and "a_file" in line


def test_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    """A save that fails half-way (as on a full disk) leaves the earlier file and no temporary."""
    target = tmp_path / "last.pth"
    util.atomic_save({"epoch": 1}, target)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(util.UserError, match=r"last\.pth: could not be written \(.*file write failed\); any "
                                             r"earlier version of it is intact"):
        util.atomic_save({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


@pytest.mark.slow
def test_resume_removes_stale_temporaries_and_logs_each_epoch_once(pool: Path, tmp_path: Path, capsys) -> None:
    """A run killed inside a save leaves a temporary file; one killed between a checkpoint and its
    log line lacks that line; one killed after logging an epoch whose checkpoint it never saved has
    logged it. The resumed run removes the first, restores the second, drops the third, and
    logs every epoch once."""
    argv = run_args(pool, tmp_path, "--epochs", "3", "--save_freq", "1")
    folder = pretrain.main(argv[:-2] + ["--epochs", "2"])
    log_path = folder / "log.jsonl"
    lines = log_path.read_text().splitlines(keepends=True)
    leftover = folder / ".last.pth.tmp.abc123"
    leftover.write_bytes(b"half a checkpoint")
    log_path.write_text(lines[0] + json.dumps({"epoch": 3, "loss": 0.0}) + "\n")
    pretrain.main([*argv, "--resume", str(folder / "last.pth")])
    assert not leftover.exists()
    assert f"removed {leftover}" in capsys.readouterr().out
    resumed = log_path.read_text().splitlines(keepends=True)
    assert [json.loads(line)["epoch"] for line in resumed] == [1, 2, 3]
    assert resumed[:2] == lines
    assert torch.load(folder / "last.pth", weights_only=True)["epoch"] == 3


def test_evaluation_tensorboard_files_go_to_a_per_run_folder(synthetic_data: Path, tmp_path: Path) -> None:
    tb = tmp_path / "tb"
    for name in ("first", "second"):
        finetune.main(loso_args(synthetic_data, tmp_path, "--tb_path", str(tb), "--run_name", name,
                                "--subjects", "spNO59,spNO67", "--freeze_encoder"))
    folders = {name: tb / f"{name}_{util.folder_digest(tmp_path / name)}" for name in ("first", "second")}
    assert sorted(tb.iterdir()) == sorted(folders.values())
    assert all(any(p.name.startswith("events.out.tfevents") for p in folder.iterdir()) for folder in folders.values())


# ---------------------------------------------------------------------------------------------
# A pre-training run's identity: no run silently overwrites another


@pytest.mark.slow
def test_runs_differing_in_seed_or_exclusion_keep_their_own_folders(pool: Path, tmp_path: Path) -> None:
    base = run_args(pool, tmp_path, "--epochs", "1")
    folders = [pretrain.main([*base, "--seed", "0"]), pretrain.main([*base, "--seed", "1"]),
               pretrain.main([*base, "--exclude_subjects", "spNO1"])]
    assert len({f.name for f in folders}) == 3
    assert folders[0].name.endswith("_seed0") and folders[2].name.endswith("_excl_spNO1_seed0")
    for folder in folders:
        assert torch.load(folder / "last.pth", weights_only=True)["epoch"] == 1
        assert len((folder / "log.jsonl").read_text().splitlines()) == 1
        tb_folder = tmp_path / "tb" / f"{folder.name}_{util.folder_digest(folder)}"
        assert len(list(tb_folder.glob("events.out.tfevents.*"))) == 1
    seed0 = torch.load(folders[0] / "last.pth", weights_only=True)["model"]
    seed1 = torch.load(folders[1] / "last.pth", weights_only=True)["model"]
    assert not all(torch.equal(seed0[k], seed1[k]) for k in seed0)


def test_a_folder_of_other_settings_or_finished_checkpoints_is_refused(pool: Path, tmp_path: Path, capsys) -> None:
    base = run_args(pool, tmp_path, "--epochs", "1", "--run_name", "mine")
    folder = pretrain.main(base)
    before = (folder / "last.pth").read_bytes()
    line = fails(pretrain.main, [*base, "--nce_t", "0.2"], capsys)
    assert "run.json: this folder holds a run of other settings (--nce_t 0.07 there, 0.2 here)" in line
    line = fails(pretrain.main, base, capsys)
    assert "holds checkpoints of a run with these settings (last.pth); pass --resume" in line
    assert (folder / "last.pth").read_bytes() == before
    pretrain.main([*base, "--overwrite"])
    assert "--overwrite: removing 3 file(s) of the earlier run" in capsys.readouterr().out
    assert len((folder / "log.jsonl").read_text().splitlines()) == 1
    assert len(list((tmp_path / "tb" / f"mine_{util.folder_digest(folder)}").glob("events.out.tfevents.*"))) == 1


linear_probe = util.load_script("LinearProbing_CVSCL_10fold.py")


@pytest.mark.parametrize("main, flags, message", [
    (finetune.main, ["--crop_low", "2"], "argument --crop_low: 2: must be a number in (0, 1]"),
    (finetune.main, ["--seed", "-1"], "argument --seed: -1: must be a seed in 0..4294967295"),
    (finetune.main, ["--grayscale_p", "1.5"], "argument --grayscale_p: 1.5: must be a number in [0, 1]"),
    (linear_probe.main, ["--split_seed", "-1"], "argument --split_seed: -1: must be a seed in 0..4294967295"),
    (pretrain.main, ["--seed", "x"], "argument --seed: 'x': expected a seed in 0..4294967295"),
])
def test_ranges_are_declared_with_the_flags(synthetic_data: Path, tmp_path: Path, capsys, main, flags,
                                            message) -> None:
    argv = run_args(synthetic_data, tmp_path, *flags) if main is pretrain.main else loso_args(synthetic_data, tmp_path,
                                                                                             *flags)
    assert message in fails(main, argv, capsys)
    assert not any(tmp_path.iterdir())


def test_an_unwritable_cache_dir_is_one_line(synthetic_data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A read-only file system (simulated: the tests run as root, who may write anywhere)."""
    import numpy as np

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(np.lib.format, "open_memmap", read_only)
    cache = tmp_path / "cache"
    line = fails(finetune.main, loso_args(synthetic_data, tmp_path / "out", "--subjects", "spNO59",
                                          "--freeze_encoder", "--cache_dir", str(cache)), capsys)
    assert line == f"error: --cache_dir {cache}: could not write the decoded images (Read-only file system)"
    assert not list(cache.iterdir())


@pytest.mark.parametrize("content", ["", '{"protocol": "loso", "acc"', "[]", '{"protocol": "loso", "acc": 1}'])
def test_a_damaged_results_json_is_one_line_in_results_table(tmp_path: Path, capsys, content: str) -> None:
    from scripts.experiments import results_table

    (tmp_path / "results.json").write_text(content)
    line = fails(results_table.main, [f"x={tmp_path}"], capsys)
    assert line.startswith(f"error: {tmp_path / 'results.json'}: damaged results")


@pytest.mark.parametrize("failure", [RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64"),
                                     OSError(28, "No space left on device")])
def test_a_failed_write_is_one_line_naming_the_path_and_keeps_the_old_file(tmp_path: Path, monkeypatch,
                                                                           failure: Exception) -> None:
    """A full disk under torch.save (whose message need not say 'write') or under a figure."""
    from evaluation import metrics

    target = tmp_path / "last.pth"
    torch.save({"epoch": 1}, target)

    def failing(*args, **kwargs):
        raise failure

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(util.UserError, match=rf"^{target}: could not be written \(.+\); any earlier version of it is "
                                             "intact$"):
        util.atomic_save({"epoch": 2}, target)
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    monkeypatch.setattr(Path, "write_bytes", failing)
    with pytest.raises(util.UserError, match=r"confusion.png: could not be written"):
        metrics.plot_confusion(np.eye(2, dtype=int), ["a", "b"], tmp_path / "confusion.png", "t")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
