"""`--view`: RGB + depth (default), RGB + grey (the published ablation) and RGB alone (MEGC2019,
whose databases have no depth), in pre-training and both evaluation scripts."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import dataset
import util
from helpers import fails, loso_args, save_checkpoint

finetune = util.load_script("fine-tune_CVSCL.py")
probe = util.load_script("LinearProbing_CVSCL_10fold.py")
pretrain = util.load_script("pre-train_CVSCL.py")


def test_rgb_only_loso_on_megc2019_reports_each_database(megc2019_prepared, tmp_path: Path) -> None:
    """The composite lists carry dbtypes 1/2/3 and no second view: LOSO with --view RGB uses the
    RGB half of a dual-view checkpoint and adds per-database figures beside the composite ones."""
    out = megc2019_prepared[0]
    checkpoint = tmp_path / "dual.pth"
    save_checkpoint(checkpoint, "alexnet", published=False)
    results = finetune.main(["--data_folder", str(out), "--model_path", str(checkpoint), "--view", "RGB",
                             "--save_path", str(tmp_path / "eval"), "--epochs", "1", "--image_size", "64",
                             "--num_workers", "0", "--batch_size", "4", "--no_progress", "--freeze_encoder"])
    assert results["n_samples"] == 17
    assert set(results["per_database"]) == {"SMIC-HS", "CASME II", "SAMM"}
    assert {db["n_samples"] for db in results["per_database"].values()} == {5, 6}
    assert sum(db["n_samples"] for db in results["per_database"].values()) == 17
    assert [db["dbtype"] for db in results["per_database"].values()] == [1, 2, 3]
    run = next((tmp_path / "eval").iterdir())
    assert run.name.endswith("_viewRGB_crossentropy_lr0.01_ep1_seed0") or "_viewRGB_" in run.name
    header = (run / "predictions.csv").read_text().splitlines()[0]
    assert header == "seed,unit,subject,sample,label,prediction,dbtype"
    from scripts.experiments import results_table
    table = results_table.format_table(results_table.table_rows(results_table.parse_row(f"megc={run}")))
    assert "  SMIC-HS" in table and "  SAMM" in table


def test_second_view_lists_are_required_by_their_view(megc2019_prepared, tmp_path: Path, capsys) -> None:
    out = megc2019_prepared[0]
    line = fails(finetune.main, ["--data_folder", str(out), "--model_path", "none", "--save_path",
                                 str(tmp_path), "--image_size", "64"], capsys)
    assert "megc2019/data: has v_rgb/ but no v_depth/ for this --view; its lists serve --view RGB" in line


def gray_copy(synthetic_data: Path, tmp_path: Path) -> Path:
    """The synthetic data with a v_gray/ view: its own grey lists when the generator writes them,
    else the depth lists and images under grey names (enough to test the plumbing)."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    lists = data / "data"
    if not (lists / dataset.GRAY_LISTS).is_dir():
        shutil.copytree(lists / dataset.DEPTH_LISTS, lists / dataset.GRAY_LISTS)
    return data


def test_rgb_gray_pretraining_and_loso(synthetic_data: Path, tmp_path: Path) -> None:
    data = gray_copy(synthetic_data, tmp_path)
    folder = pretrain.main(["--data_folder", str(data), "--model_path", str(tmp_path / "models"),
                            "--tb_path", str(tmp_path / "tb"), "--view", "RGB_gray", "--epochs", "1",
                            "--image_size", "64", "--batch_size", "8", "--nce_k", "16", "--num_workers", "0"])
    assert "_view_RGB_gray_" in folder.name
    settings = util.read_record(folder).settings
    assert settings["view"] == "RGB_gray" and settings["depth_mean"] == pytest.approx(0.4471)
    results = finetune.main(loso_args(data, tmp_path / "eval", "--model_path", str(folder / "last.pth"),
                                      "--view", "RGB_gray", "--freeze_encoder"))
    assert results["n_samples"] > 0 and "per_database" not in results
    assert results["args"]["second_view"] == "v_gray"


def test_view_mismatch_is_warned(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    data = gray_copy(synthetic_data, tmp_path)
    folder = pretrain.main(["--data_folder", str(data), "--model_path", str(tmp_path / "models"),
                            "--tb_path", str(tmp_path / "tb"), "--view", "RGB_gray", "--epochs", "1",
                            "--image_size", "64", "--batch_size", "8", "--nce_k", "16", "--num_workers", "0"])
    capsys.readouterr()
    finetune.parse_option(loso_args(data, tmp_path / "eval", "--model_path", str(folder / "last.pth")))
    assert "was pre-trained with --view RGB_gray, evaluated with --view RGB_D" in capsys.readouterr().err


def test_unknown_view_is_one_argparse_line(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    line = fails(pretrain.parse_option, ["--data_folder", str(synthetic_data), "--model_path", "m", "--tb_path", "t",
                                         "--view", "RGB"], capsys)
    assert line == ("pre-train_CVSCL.py: error: argument --view: invalid choice: 'RGB' (choose from 'RGB_D', "
                    "'RGB_gray') (see pre-train_CVSCL.py --help)")
