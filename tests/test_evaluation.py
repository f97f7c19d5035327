"""Evaluation: metrics, leak-free LOSO and k-fold units, fresh models per unit, checkpoints (ours and
the published layout), frozen encoders, resuming, multi-process aggregation, and clean failures."""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dataset
from evaluation import engine, metrics, runs
from models import MODEL_NAMES, LinearModel, build_model
from models.pretrained import load_encoder_spec
from helpers import fails, loso_args, probe_args, save_checkpoint
from util import REPO_ROOT, UserError
import util

finetune = util.load_script("fine-tune_CVSCL.py")
linear_probe = util.load_script("LinearProbing_CVSCL_10fold.py")

pytestmark = pytest.mark.usefixtures("one_thread")


def run_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if (p / "run.json").is_file()]
    return folder


def unit_records(folder: Path) -> dict[str, dict]:
    """Unit records by 'seed/unit', without their timing."""
    records = {}
    for path in sorted((folder / "units").glob("seed*/*.json")):
        record = json.loads(path.read_text())
        record.pop("seconds")
        records[f"{path.parent.name}/{path.stem}"] = record
    return records


def metrics_of(results: dict) -> dict:
    keys = ("acc", "uf1", "uar", "n_samples", "per_subject", "folds", "confusion", "seeds", "complete")
    return {k: results[k] for k in keys if k in results}


# ---------------------------------------------------------------------------------------------
# Metrics


def test_metrics_hand_computed() -> None:
    m = metrics.compute_metrics([0, 0, 1, 1], [0, 1, 1, 1], n_classes=2)
    assert m["acc"] == pytest.approx(0.75)
    assert m["uf1"] == pytest.approx((2 / 3 + 0.8) / 2)  # F1: class 0 = 2/3, class 1 = 0.8
    assert m["uar"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["confusion"] == [[1, 1], [0, 2]]


def test_metrics_absent_classes() -> None:
    # Classes 2 and 3 never occur in the truth: they do not enter UF1/UAR, but a prediction of
    # class 2 still costs class 0 its recall.
    m = metrics.compute_metrics([0, 0, 1, 1, 1], [0, 2, 1, 1, 0], n_classes=4)
    assert m["classes_present"] == [0, 1]
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["uf1"] == pytest.approx((0.5 + 0.8) / 2)  # class 0: P 1/2, R 1/2; class 1: P 1, R 2/3
    assert m["uar"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["confusion"] == [[1, 0, 1, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # A class present but never predicted counts with F1 = recall = 0.
    m = metrics.compute_metrics([0, 1, 2], [0, 0, 0], n_classes=3)
    assert m["uf1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["uar"] == pytest.approx(1 / 3)


def test_losses() -> None:
    logits, target = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 1, 2])
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert engine.FocalLoss(gamma=0.0)(logits, target) == pytest.approx(ce.item(), rel=1e-5)
    assert engine.FocalLoss(gamma=2.0)(logits, target) < ce
    balanced = engine.make_criterion("balanced", target, n_classes=4)
    assert balanced.weight.tolist() == pytest.approx([6 / (3 * 4), 6 / 3, 6 / 3, 0.0])


def test_schedule_is_per_epoch() -> None:
    args = argparse.Namespace(lr_schedule="step", lr_decay_epochs=[2, 4], lr_decay_rate=0.1)
    assert [engine.lr_factor(e, 6, args) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    args.lr_schedule = "cosine"
    assert engine.lr_factor(0, 6, args) == 1.0 and engine.lr_factor(3, 6, args) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Features and heads


def _expected_width(name: str, layer: int, feat_dim: int) -> int:
    """Concatenated pooled width at 64 px: AlexNet maps are 7x7 (conv1), 3x3 (conv2-4), 1x1 (conv5)
    and keep min(CMC cells, map) cells per side; ResNet maps are averaged to one cell."""
    if name == "alexnet":
        per_view = {1: 48 * 7 * 7, 2: 128 * 3 * 3, 3: 192 * 3 * 3, 4: 192 * 3 * 3, 5: 128, 6: 2048, 7: 2048,
                    8: feat_dim}[layer]
    else:
        base = int(64 * {"v1": 0.5, "v2": 1.0, "v3": 2.0}[name[-2:]])
        expansion = 1 if name.startswith("resnet18") else 4
        per_view = {1: 64, 6: base * 8 * expansion, 7: feat_dim}.get(layer, base * 2 ** (layer - 2) * expansion)
    return 2 * per_view


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_head_width_every_model_and_layer(name: str) -> None:
    """The width measured by a dummy forward (on the meta device: no arithmetic) for every layer."""
    with torch.device("meta"):
        encoder = build_model(name, feat_dim=32)
    widths = [LinearModel.FeatureExtractor(encoder, layer).out_dim(64)
              for layer in range(1, encoder.embedding_layer + 1)]
    assert widths == [_expected_width(name, layer, 32) for layer in range(1, encoder.embedding_layer + 1)]
    if name == "alexnet":  # CMC's linear-evaluation widths at 224 px: conv1 9600, conv5 9216
        assert LinearModel.FeatureExtractor(encoder, 1).out_dim(224) == 9600
        assert LinearModel.FeatureExtractor(encoder, 5).out_dim(224) == 9216


def test_frozen_classifier_trains_head_only() -> None:
    torch.manual_seed(0)
    encoder = build_model("alexnet", feat_dim=16)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    extractor = LinearModel.FeatureExtractor(encoder, 5)
    model = LinearModel.Classifier(torch.nn.Linear(extractor.out_dim(64), 3), extractor, frozen=True)
    args = argparse.Namespace(learning_rate=0.1, encoder_lr_mult=1.0, optimizer="sgd", momentum=0.9,
                              weight_decay=1e-4, lossfunction="crossentropy", focal_gamma=2.0, amp=False)
    optimizer = engine.set_optimizer(args, model, engine.StartingPoint(encoder), FakeInputs(torch.zeros(0)), 3,
                                     2).optimizer
    assert len(optimizer.param_groups) == 1
    head_before = model.head.weight.clone()
    model.train()
    assert not encoder.training
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 4, 64, 64)), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(model.head.weight, head_before)
    engine.assert_unchanged(encoder, before, "test")  # BN running statistics included
    with torch.no_grad():
        encoder.rgb_to_d.conv_block_1[0].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="frozen encoder changed"):
        engine.assert_unchanged(encoder, before, "test")


class FakeInputs:
    """A unit's inputs without a store: `train` (N, ...) served in batches of `batch_size`."""

    def __init__(self, train: torch.Tensor, batch_size: int = 4) -> None:
        self.train, self.batch_size, self.device = train, batch_size, torch.device("cpu")

    def labels(self, which: str) -> torch.Tensor:
        return torch.zeros(len(self.train), dtype=torch.long)

    def plain(self, which: str):
        return iter(self.train.split(self.batch_size))


def test_batch_norm_statistics_are_reestimated_on_the_training_set() -> None:
    torch.manual_seed(0)
    # variance 1e-4 per feature, as a random encoder's features have
    features = 1e-2 * torch.randn(40, 8) + torch.linspace(0.0, 1.0, 8)
    head = LinearModel.make_head(8, 2, batch_norm=True)
    model = LinearModel.Classifier(head).train()
    with torch.no_grad():
        for _ in range(20):  # 20 steps of momentum 0.1 keep 0.9 ** 20 = 12 % of the start at variance 1
            model(features)
    assert head[0].running_var.min() > 0.1
    args = argparse.Namespace(bn_stats="training_set", encoder_bn="train", amp=False, opt_level="O2")
    engine.reestimate_batch_norm(args, model, FakeInputs(features, batch_size=40))
    assert torch.allclose(head[0].running_mean, features.mean(0), atol=1e-6)
    assert torch.allclose(head[0].running_var, features.var(0), rtol=1e-4)
    assert head[0].momentum == 0.1 and not model.training


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "fine-tuned"])
def test_batch_norm_reestimation_leaves_a_frozen_encoder_alone(frozen: bool) -> None:
    torch.manual_seed(0)
    encoder = build_model("alexnet", feat_dim=16)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    extractor = LinearModel.FeatureExtractor(encoder, 5)
    model = LinearModel.Classifier(LinearModel.make_head(extractor.out_dim(64), 3, True), extractor, frozen=frozen)
    images = torch.randn(6, 4, 64, 64)
    args = argparse.Namespace(bn_stats="training_set", encoder_bn="train", amp=False, opt_level="O2")
    engine.reestimate_batch_norm(args, model, FakeInputs(images, batch_size=3))
    assert model.head[0].num_batches_tracked.item() == 2
    if frozen:
        engine.assert_unchanged(encoder, before, "test")
    else:
        norm = encoder.rgb_to_d.conv_block_1[1]
        assert norm.num_batches_tracked.item() == 2 and not torch.equal(norm.running_var, before[
            "rgb_to_d.conv_block_1.1.running_var"])


# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("model", ["alexnet", "resnet18v1"])
@pytest.mark.parametrize("published", [False, True], ids=["ours", "published"])
def test_checkpoint_loads(tmp_path: Path, model: str, published: bool) -> None:
    path = tmp_path / "ckpt.pth"
    state = save_checkpoint(path, model, published)
    spec = load_encoder_spec(str(path))
    assert (spec.name, spec.feat_dim) == (model, 16)
    assert spec.image_size == (None if published else 64)
    loaded = spec.build(seed=123).state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_input_settings_follow_checkpoint(synthetic_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, "alexnet", published=False)
    ckpt = torch.load(path, weights_only=True)
    ckpt["args"].update(image_size=80, rgb_mean=[0.5, 0.5, 0.5], depth_std=0.25)
    torch.save(ckpt, path)
    argv = ["--data_folder", str(synthetic_data), "--model_path", str(path)]
    args, _ = finetune.parse_option(argv)
    assert (args.image_size, args.rgb_mean, args.depth_std) == (80, [0.5, 0.5, 0.5], 0.25)
    assert args.rgb_std == [0.4474, 0.4505, 0.4502] and args.model == "alexnet" and args.feat_dim == 16
    args, _ = finetune.parse_option(argv + ["--image_size", "64", "--depth_std", "0.3"])
    assert (args.image_size, args.depth_std) == (64, 0.3)


def test_published_checkpoint_runs_probe(synthetic_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "ckpt_epoch_3.pth"
    save_checkpoint(path, "alexnet", published=True)
    argv = probe_args(synthetic_data, tmp_path / "out")
    argv[argv.index("--model_path") + 1] = str(path)
    results = linear_probe.main(argv)
    assert results["complete"] and results["args"]["model"] == "alexnet"


def test_checkpoint_errors(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    save_checkpoint(path, "resnet18v1", published=False)
    with pytest.raises(UserError, match=r"resnet\.pth: checkpoint holds a resnet18v1 encoder, but --model is "
                                        r"alexnet"):
        load_encoder_spec(str(path), model="alexnet")
    # No recorded architecture: the keys decide, naming the file.
    ckpt = torch.load(path, weights_only=True)
    torch.save({"model": ckpt["model"]}, path)
    with pytest.raises(UserError, match=r"resnet\.pth: encoder keys do not match alexnet"):
        load_encoder_spec(str(path), model="alexnet")
    # A missing encoder weight is fatal.
    state = save_checkpoint(path, "alexnet", published=True)
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, weights_only=True)
    del ckpt["model"]["encoder.module.d_to_rgb.fc7.0.weight"]
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r"1 missing \(e\.g\. d_to_rgb\.fc7\.0\.weight\)"):
        load_encoder_spec(str(path))
    assert state


# ---------------------------------------------------------------------------------------------
# Units


def test_loso_units_leak_free(synthetic_data: Path, tmp_path: Path) -> None:
    args, _ = finetune.parse_option(loso_args(synthetic_data, tmp_path))
    protocol = finetune.loso_protocol(args)
    subjects = dataset.subject_names(synthetic_data / "data")
    assert [u.name for u in protocol.units] == subjects
    tested = np.concatenate([u.test for u in protocol.units])
    assert sorted(tested.tolist()) == list(range(len(protocol.samples)))  # every sample tested once
    for unit in protocol.units:
        assert {protocol.samples[i].subject for i in unit.test} == {unit.name}
        assert unit.name not in {protocol.samples[i].subject for i in unit.train}
        assert len(unit.train) + len(unit.test) == len(protocol.samples)


def test_folds_subject_disjoint_and_stratified() -> None:
    # 12 subjects with the same label mix: subject-grouped folds can be exactly stratified.
    groups = np.repeat([f"spNO{i}" for i in range(12)], 4)
    labels = np.tile([0, 0, 1, 2], 12)
    folds = linear_probe.make_folds(labels, groups, folds=4, split="subject", seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(48))
    fold_groups = [set(groups[f]) for f in folds]
    assert all(not (a & b) for i, a in enumerate(fold_groups) for b in fold_groups[i + 1:])
    for fold in folds:
        assert np.bincount(labels[fold], minlength=3).tolist() == [6, 3, 3]
    again = linear_probe.make_folds(labels, groups, 4, "subject", 0)
    assert [f.tolist() for f in folds] == [f.tolist() for f in again]  # fixed seed, same folds
    sample_folds = linear_probe.make_folds(labels, groups, folds=4, split="sample", seed=0)
    assert sorted(np.concatenate(sample_folds).tolist()) == list(range(48))
    assert any(set(groups[a]) & set(groups[b]) for a in sample_folds for b in sample_folds if a is not b)
    with pytest.raises(UserError, match="only 12 subjects"):
        linear_probe.make_folds(labels, groups, folds=13, split="subject", seed=0)


# ---------------------------------------------------------------------------------------------
# Runs


def test_probe_end_to_end(synthetic_data: Path, tmp_path: Path) -> None:
    results = linear_probe.main(probe_args(synthetic_data, tmp_path, "--seeds", "2"))
    folder = run_folder(tmp_path)
    assert results["complete"] and set(results["seeds"]) == {"0", "1"}
    assert {"acc", "uf1", "uar", "acc_std", "uf1_std", "uar_std"} <= results.keys()
    assert results["class_names"] == ["negative", "others", "positive", "surprise"]
    subjects = [set(f["subjects"]) for f in results["folds"].values()]
    assert all(not (a & b) for i, a in enumerate(subjects) for b in subjects[i + 1:])
    assert len(list((folder / "models").glob("seed*_fold*.pth"))) == 6
    head = torch.load(folder / "models" / "seed0_fold01.pth", weights_only=True)
    assert head["model"]["1.weight"].shape[0] == 4  # BatchNorm (no affine), then the linear layer
    with (folder / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    n_labeled = len(dataset.load_labeled(synthetic_data / "data", synthetic_data,
                                         dataset.subject_names(synthetic_data / "data")))
    assert len(rows) == 2 * n_labeled
    assert sum(f["n"] for f in results["folds"].values()) == results["n_samples"] == n_labeled
    assert all(len({r["sample"] for r in rows if r["seed"] == s}) == n_labeled for s in ("0", "1"))
    assert (folder / "confusion.png").stat().st_size > 0 and (folder / "log.txt").is_file()
    assert list((folder / "tb").glob("events.out.tfevents.*"))


def test_fresh_head_and_optimizer_per_unit(synthetic_data: Path, tmp_path: Path) -> None:
    """A unit's result must not depend on the units trained before it in the process: a head,
    optimizer, scheduler or encoder carried over from an earlier fold would change it."""
    args, spec = linear_probe.parse_option(probe_args(synthetic_data, tmp_path, "--augment"))
    protocol = linear_probe.kfold_protocol(args)
    for order, units in (("all", protocol.units), ("last", protocol.units[-1:])):
        args.save_path = str(tmp_path / order)
        with engine.EvaluationRun(args, spec, engine.Protocol(**{**vars(protocol), "units": units})) as run:
            for seed, fold in run.units():
                run.save(seed, fold, *linear_probe.probe(args, run, seed, fold))
    last = protocol.units[-1].name
    alone = unit_records(run_folder(tmp_path / "last"))
    after_others = unit_records(run_folder(tmp_path / "all"))
    assert alone[f"seed0/{last}"] == after_others[f"seed0/{last}"]


def test_loso_finetune_split_and_resume(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    subjects = dataset.subject_names(synthetic_data / "data")
    single = finetune.main(loso_args(synthetic_data, tmp_path / "single"))
    assert single["complete"] and set(single["per_subject"]) == set(subjects)
    folder = run_folder(tmp_path / "single")
    history = unit_records(folder)[f"seed0/{subjects[0]}"]["history"]
    assert history[0]["lr"] == pytest.approx(0.01)

    # Two processes, each on its share of subjects, then the aggregate step.
    split = tmp_path / "split"
    first = finetune.main(loso_args(synthetic_data, split, "--subjects", ",".join(subjects[:2])))
    assert not first["complete"] and len(first["missing"]) == len(subjects) - 2
    finetune.main(loso_args(synthetic_data, split, "--subjects", ",".join(subjects[2:])))
    merged = finetune.main(loso_args(synthetic_data, split, "--aggregate_only"))
    assert metrics_of(merged) == metrics_of(single)
    assert (run_folder(split) / "predictions.csv").read_text() == (folder / "predictions.csv").read_text()

    # Killed in the third subject, then the same command again.
    killed = tmp_path / "killed"
    calls = {"n": 0}
    real_fine_tune = finetune.fine_tune

    def dying_fine_tune(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_fine_tune(*args)

    monkeypatch.setattr(finetune, "fine_tune", dying_fine_tune)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(loso_args(synthetic_data, killed))
    monkeypatch.setattr(finetune, "fine_tune", real_fine_tune)
    assert len(unit_records(run_folder(killed))) == 2
    assert metrics_of(finetune.main(loso_args(synthetic_data, killed))) == metrics_of(single)

    # Re-running a finished run trains and decodes nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in (folder / "units").rglob("*.json")}
    monkeypatch.setattr(dataset, "ImageStore", None)
    again = finetune.main(loso_args(synthetic_data, tmp_path / "single"))
    assert metrics_of(again) == metrics_of(single)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert "0 units to run, 5 already done" in (folder / "log.txt").read_text()


# ---------------------------------------------------------------------------------------------
# Sharding: subjects spread over processes, then the aggregate step


def test_shard_assignment(monkeypatch) -> None:
    """Shards are disjoint and cover every unit; `auto` reads torchrun's variables, else SLURM's,
    and puts the process on cuda:<local rank> modulo the visible GPUs."""
    units = [f"spNO{i}" for i in range(1, 12)]
    for count in (1, 2, 3, 5, 11, 13):
        shares = [runs.shard_of(units, runs.Shard(index, count)) for index in range(count)]
        assert sum(map(len, shares)) == len(set().union(*shares)) == len(units)
    assert runs.shard_of(units, runs.Shard(1, 3)) == ["spNO2", "spNO5", "spNO8", "spNO11"]
    assert runs.shard_of(units, None) == units

    def resolved(text: str, **env: str) -> runs.Shard | None:
        for names in runs.SHARD_ENVIRONMENTS:
            for name in names:
                monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runs.parse_shard(text)

    def device(shard: runs.Shard | None, flag: str = "auto") -> str:
        return str(runs.eval_device(argparse.Namespace(shard=shard, device=flag)))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolved("") is None
    assert resolved("1/3") == (1, 3, None)
    assert resolved("auto", RANK="1", WORLD_SIZE="2", SLURM_PROCID="5", SLURM_NTASKS="8")[:2] == (1, 2)
    assert resolved("auto", SLURM_PROCID="5", SLURM_NTASKS="8")[:2] == (5, 8)
    for bad in ("2/2", "1", "-1/2", "a/b"):
        with pytest.raises(UserError, match=f"--shard {bad}: expected I/N with 0 <= I < N"):
            resolved(bad)
    with pytest.raises(UserError, match="--shard auto: neither RANK/WORLD_SIZE"):
        resolved("auto")
    assert device(resolved("auto", RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device(resolved("auto", RANK="3", WORLD_SIZE="4", LOCAL_RANK="3")) == "cuda:1"
    assert device(resolved("auto", SLURM_PROCID="2", SLURM_NTASKS="4", SLURM_LOCALID="0")) == "cuda:0"
    assert device(resolved("auto", RANK="1", WORLD_SIZE="2", LOCAL_RANK="1"), "cpu") == "cpu"
    assert device(resolved("1/2", RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")) == "cuda"


@pytest.mark.slow
def test_sharded_loso_matches_one_process(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    """Two processes launched as torchrun would (`--shard auto`, RANK/WORLD_SIZE), then the
    aggregate step, give the single-process metrics and predictions; a missing subject is refused."""
    subjects = dataset.subject_names(synthetic_data / "data")
    single = finetune.main(loso_args(synthetic_data, tmp_path / "single"))
    sharded = tmp_path / "sharded"
    argv = [sys.executable, str(REPO_ROOT / "fine-tune_CVSCL.py"),
            *loso_args(synthetic_data, sharded, "--shard", "auto")]
    workers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                                     "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
               for rank in range(2)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    folder = run_folder(sharded)
    assert not (folder / "results.json").exists()  # shards write only their unit files
    log = (folder / "log.txt").read_text()
    assert all(f"shard {i}/2: {', '.join(subjects[i::2])}" in log for i in range(2))

    # A lost subject: the aggregate names it and writes nothing, unless the subset is deliberate.
    lost = folder / "units" / "seed0" / f"{subjects[1]}.json"
    record = lost.read_text()
    lost.unlink()
    line = fails(finetune.main, loso_args(synthetic_data, sharded, "--aggregate_only"), capsys)
    assert line.endswith(f"1 of {len(subjects)} subject(s) not finished ({subjects[1]}); run their shards again "
                         "(finished units are skipped) before aggregating")
    assert not (folder / "results.json").exists()
    rest = [s for s in subjects if s != subjects[1]]
    subset = finetune.main(loso_args(synthetic_data, sharded, "--aggregate_only", "--subjects", ",".join(rest)))
    assert not subset["complete"] and subset["missing"] == [f"seed0/{subjects[1]}"]
    assert set(subset["per_subject"]) == set(rest)

    lost.write_text(record)
    merged = finetune.main(loso_args(synthetic_data, sharded, "--aggregate_only"))
    assert metrics_of(merged) == metrics_of(single)
    assert (folder / "predictions.csv").read_text() == (run_folder(tmp_path / "single") / "predictions.csv").read_text()


def test_frozen_loso_keeps_encoder(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    """Frozen protocol with augmentation: the encoder runs every epoch, and must stay unchanged
    (checked inside every unit); without augmentation features are extracted once."""
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, "alexnet", published=False)
    subject = dataset.subject_names(synthetic_data / "data")[0]
    argv = loso_args(synthetic_data, tmp_path / "aug", "--freeze_encoder", "--augment", "--subjects", subject)
    argv[argv.index("--model_path") + 1] = str(path)
    checked = []
    real_check = engine.assert_unchanged
    monkeypatch.setattr(engine, "assert_unchanged", lambda *a: (checked.append(a[2]), real_check(*a)))
    finetune.main(argv)
    finetune.main([a if a != "--augment" else "--no_augment" for a in argv])
    assert checked == [f"unit {subject}", "feature extraction"]
    logs = {p.parent.name: p.read_text() for p in (tmp_path / "aug").glob("*/log.txt")}
    assert {"_frozen_aug_" in name: "extracted" in log for name, log in logs.items()} == {True: False, False: True}


def test_features_once_equal_per_epoch_extraction(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The frozen fast path (features extracted once per run) learns what re-running the frozen
    encoder on every batch of every epoch learns: same losses, same predictions."""
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, "alexnet", published=False)
    argv = loso_args(synthetic_data, tmp_path, "--freeze_encoder", "--epochs", "3", "--model_path", str(path))
    finetune.main([*argv, "--run_name", "once"])
    monkeypatch.setattr(engine, "uses_cached_features", lambda args: False)
    finetune.main([*argv, "--run_name", "every_epoch"])
    once, every_epoch = unit_records(tmp_path / "once"), unit_records(tmp_path / "every_epoch")
    assert "extracted" in (tmp_path / "once" / "log.txt").read_text()
    assert "extracted" not in (tmp_path / "every_epoch" / "log.txt").read_text()
    assert once.keys() == every_epoch.keys() and len(once) == 5
    for unit, record in once.items():
        assert record["predictions"] == every_epoch[unit]["predictions"]
        for fast, plain in zip(record["history"], every_epoch[unit]["history"], strict=True):
            assert fast["loss"] == pytest.approx(plain["loss"], rel=1e-4)


def test_loso_decodes_each_image_once(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    """Full fine-tuning over every subject decodes each labeled pair once per run, not per subject."""
    decoded = []
    real_decode = dataset.decode_rgb
    monkeypatch.setattr(dataset, "decode_rgb", lambda path, *a: (decoded.append(path), real_decode(path, *a))[1])
    results = finetune.main(loso_args(synthetic_data, tmp_path))
    assert len(results["per_subject"]) == 5
    assert len(decoded) == len(set(decoded)) == results["n_samples"]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2


def test_bad_inputs(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    subject = dataset.subject_names(synthetic_data / "data")[0]
    line = fails(finetune.main, loso_args(synthetic_data, out, "--subjects", f"{subject},spNO999"), capsys)
    assert "subName.txt: unknown subject(s) spNO999" in line
    line = fails(finetune.main, loso_args(synthetic_data, out, "--layer", "9"), capsys)
    assert line == "error: --layer 9: alexnet has layers 1..8"
    resnet = tmp_path / "resnet.pth"
    save_checkpoint(resnet, "resnet18v1", published=True)
    argv = loso_args(synthetic_data, out, "--model", "alexnet")
    argv[argv.index("--model_path") + 1] = str(resnet)
    assert "resnet.pth: checkpoint holds a resnet18v1 encoder" in fails(finetune.main, argv, capsys)
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_data, broken)
    subject = dataset.subject_names(broken / "data")[1]
    (broken / "data" / "v_depth" / f"{subject}_test.txt").unlink()
    line = fails(finetune.main, loso_args(broken, out), capsys)
    assert line.endswith(f"v_depth/{subject}_test.txt: list file not found")
    leaky = tmp_path / "leaky"
    shutil.copytree(synthetic_data, leaky)
    key = dataset.sample_key((leaky / "data" / "v_rgb" / f"{subject}_test.txt").read_text().split()[0])
    for view in ("v_rgb", "v_depth"):
        lists = leaky / "data" / view
        own = [line for line in (lists / f"{subject}_test.txt").read_text().splitlines()
               if dataset.sample_key(line.split()[0]) == key]
        with (lists / f"{subject}_train.txt").open("a") as f:
            f.write(own[0] + "\n")
    line = fails(finetune.main, loso_args(leaky, out), capsys)
    assert f"1 training sample(s) of the test subject {subject}" in line
    line = fails(linear_probe.main, probe_args(synthetic_data, out, "--folds", "9"), capsys)
    assert "only 5 subjects" in line


@pytest.mark.slow
def test_entry_scripts_from_any_directory(synthetic_data: Path, tmp_path: Path) -> None:
    for script in ("fine-tune_CVSCL.py", "LinearProbing_CVSCL_10fold.py"):
        done = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "--batchsize" in done.stdout
    done = subprocess.run([sys.executable, str(REPO_ROOT / "fine-tune_CVSCL.py"),
                           *loso_args(synthetic_data, tmp_path, "--subjects", "nobody")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: ")
    assert len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The published fine-tuning options: --lossfunction cosine and --attention att


def test_cosine_loss_is_one_minus_the_cosine_with_the_one_hot_label() -> None:
    logits = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, -2.0]])
    target = torch.tensor([1, 2])
    loss = engine.make_criterion("cosine", target, n_classes=3)(logits, target)
    assert loss.item() == pytest.approx(((1 - 4 / 5) + (1 - (-1))) / 2)
    perfect = torch.tensor([[0.0, 7.0, 0.0]])
    assert engine.CosineLoss()(perfect, torch.tensor([1])).item() == pytest.approx(0.0)


def test_attention_head_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    encoder = build_model("resnet18v1", feat_dim=16)
    extractor = LinearModel.FeatureExtractor(encoder, 5, maps=True)
    channels = extractor.out_dim(64)
    assert 2 * channels == LinearModel.FeatureExtractor(encoder, 5).out_dim(64)  # pooled: both views
    head = LinearModel.AttentionHead(channels, views=2, n_classes=4, batch_norm=True)
    model = LinearModel.Classifier(head, extractor, frozen=True)
    model.train()
    logits = model(torch.randn(3, 4, 64, 64))
    assert logits.shape == (3, 4)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    assert all(p.grad is None for p in encoder.parameters())


def test_loso_with_attention_and_cosine_loss(synthetic_data: Path, tmp_path: Path) -> None:
    results = finetune.main(loso_args(synthetic_data, tmp_path, "--model", "resnet18v1", "--attention", "att",
                                      "--lossfunction", "cosine", "--subjects", "spNO59,spNO67"))
    assert results["n_samples"] > 0 and 0 <= results["uar"] <= 1
    assert "_att_cosine_" in run_folder(tmp_path).name


def test_attention_is_refused_where_it_cannot_apply(synthetic_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--attention att --layer 5: attention needs a ResNet conv map "
                                        r"\(--layer 1\.\.5\); alexnet layer 5 has none"):
        finetune.parse_option(loso_args(synthetic_data, tmp_path, "--attention", "att"))
    with pytest.raises(UserError, match="resnet18v1 layer 6 has none"):
        finetune.parse_option(loso_args(synthetic_data, tmp_path, "--model", "resnet18v1", "--layer", "6",
                                        "--attention", "att"))


def test_lp_ft_trains_the_head_alone_first(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    phases = []
    real_set_optimizer = engine.set_optimizer

    def recording_set_optimizer(args, model, start, inputs, n_classes, epochs):
        encoder = model.extractor.encoder
        phases.append((model.frozen, epochs, {k: v.clone() for k, v in encoder.state_dict().items()}))
        return real_set_optimizer(args, model, start, inputs, n_classes, epochs)

    monkeypatch.setattr(engine, "set_optimizer", recording_set_optimizer)
    finetune.main(loso_args(synthetic_data, tmp_path, "--lp_epochs", "2", "--subjects", "spNO59"))
    assert [(frozen, epochs) for frozen, epochs, _ in phases] == [(True, 2), (False, 1)]
    after_head_phase = phases[1][2]
    assert all(torch.equal(v, after_head_phase[k]) for k, v in phases[0][2].items())  # the encoder waited
    (record,) = unit_records(run_folder(tmp_path)).values()
    assert [epoch["epoch"] for epoch in record["history"]] == [1, 2, 3]
