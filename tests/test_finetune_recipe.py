"""The fine-tuning recipe's options (warm-up, layer-wise decay, L2-SP, learning rate by weight norm,
frozen encoder batch norms, early stopping on held-out training subjects) and the diagnostics a
unit records (final loss, the encoder's relative weight change)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import util
from evaluation import engine
from models import build_model
from models.LinearModel import Classifier, FeatureExtractor, make_head

finetune = util.load_script("fine-tune_CVSCL.py")


def fine_tune(data: Path, out: Path, *extra: str) -> dict:
    return finetune.main(["--data_folder", str(data), "--model_path", "none", "--save_path", str(out),
                          "--epochs", "2", "--image_size", "64", "--num_workers", "0", "--batch_size", "16",
                          "--no_progress", "--subjects", "spNO59,spNO67", *extra])


def units(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/units/seed0/*.json"))]


def recipe(**flags) -> argparse.Namespace:
    defaults = dict(encoder_lr_mult=0.1, layer_decay=1.0, lr_by_norm=False, l2sp=0.0, weight_decay=1e-4, layer=5,
                    learning_rate=0.01, optimizer="sgd", momentum=0.9, lossfunction="crossentropy", focal_gamma=2.0,
                    amp=False, opt_level="O2", warmup_epochs=0, encoder_bn="train", lr_schedule="none")
    return argparse.Namespace(**{**defaults, **flags})


def classifier(seed: int = 0) -> tuple[Classifier, engine.StartingPoint]:
    torch.manual_seed(seed)
    encoder = build_model("alexnet", feat_dim=16)
    extractor = FeatureExtractor(encoder, 5)
    return Classifier(make_head(extractor.out_dim(64), 3, True), extractor), engine.StartingPoint(encoder)


def test_layer_decay_and_norm_scaling_set_each_encoder_tensors_rate() -> None:
    model, start = classifier()
    groups = engine.encoder_groups(recipe(layer_decay=0.5), model, start)
    names = [name for name, _ in model.extractor.encoder.named_parameters()]
    mults = dict(zip(names, (g["lr_mult"] for g in groups)))
    assert mults["rgb_to_d.conv_block_5.0.weight"] == pytest.approx(0.1)
    assert mults["d_to_rgb.conv_block_3.0.weight"] == pytest.approx(0.1 * 0.25)
    assert mults["rgb_to_d.conv_block_1.0.weight"] == pytest.approx(0.1 * 0.5 ** 4)
    assert mults["rgb_to_d.fc7.0.weight"] == pytest.approx(0.1)  # above --layer: no decay (and no gradient)

    # a random init's norms are a fresh init's: --lr_by_norm leaves its rates alone; a weight grown
    # 3x (as pre-training grows conv1) learns 9x faster, undoing its 1/9 effective rate
    start.fresh_norms = {n: float(p.detach().norm()) for n, p in build_model("alexnet", feat_dim=16).named_parameters()}
    with torch.no_grad():
        model.extractor.encoder.rgb_to_d.conv_block_1[0].weight.mul_(3)
    scaled = dict(zip(names, (g["lr_mult"] for g in engine.encoder_groups(recipe(lr_by_norm=True), model, start))))
    assert scaled["rgb_to_d.conv_block_1.0.weight"] / 0.1 == pytest.approx(9.0, rel=0.05)
    assert scaled["d_to_rgb.conv_block_2.0.weight"] / 0.1 == pytest.approx(1.0, rel=0.05)
    assert scaled["rgb_to_d.conv_block_1.1.weight"] == pytest.approx(0.1)  # batch-norm scales keep theirs


def test_warm_up_l2sp_and_frozen_batch_norm(synthetic_data: Path, tmp_path: Path, monkeypatch) -> None:
    runs = {name: fine_tune(synthetic_data, tmp_path / name, *flags, "--run_name", name) for name, flags in {
        "plain": [], "l2sp": ["--l2sp", "10"]}.items()}
    records = {name: units(tmp_path / name) for name in runs}
    # L2-SP pulls the encoder back to where it started
    assert all(a["encoder_change"]["all"] < b["encoder_change"]["all"]
               for a, b in zip(records["l2sp"], records["plain"]))
    assert runs["plain"]["diagnostics"]["encoder_change"] == pytest.approx(
        np.mean([r["encoder_change"]["all"] for r in records["plain"]]))

    # only the encoder warms up: half its rate in the first of --warmup_epochs 1, the head's unchanged
    rates = []
    real_train = engine.train

    def recording_train(epoch, inputs, model, training, args):
        stats = real_train(epoch, inputs, model, training, args)
        rates.append(sorted({round(group["lr"], 9) for group in training.optimizer.param_groups}))
        return stats

    monkeypatch.setattr(engine, "train", recording_train)
    fine_tune(synthetic_data, tmp_path / "warm", "--warmup_epochs", "1", "--lr_schedule", "none",
              "--subjects", "spNO59")
    assert rates == [[0.0005, 0.01], [0.001, 0.01]]

    model, start = classifier()
    before = {k: v.clone() for k, v in model.extractor.encoder.state_dict().items() if "running" in k}
    engine.set_train_mode(recipe(encoder_bn="frozen"), model)
    with torch.no_grad():
        model(torch.randn(4, 4, 64, 64))
    after = model.extractor.encoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert model.head.training


def test_early_stopping_holds_out_training_subjects_and_keeps_the_best_epoch(synthetic_data: Path,
                                                                             tmp_path: Path) -> None:
    subjects = ["a"] * 3 + ["b"] * 2 + ["c"] * 4 + ["d"] * 1
    train = np.arange(10)
    kept, held = engine.hold_out_subjects(train, subjects, 2, seed=7)
    assert sorted(np.concatenate([kept, held]).tolist()) == train.tolist()
    assert len({subjects[i] for i in held}) == 2 and not {subjects[i] for i in held} & {subjects[i] for i in kept}
    assert (kept == engine.hold_out_subjects(train, subjects, 2, seed=7)[0]).all()
    with pytest.raises(util.UserError, match="--val_subjects 4: a unit trains on 4 subjects; hold out fewer"):
        engine.hold_out_subjects(train, subjects, 4, seed=7)

    fine_tune(synthetic_data, tmp_path, "--val_subjects", "1", "--epochs", "3")
    for record in units(tmp_path):
        val = [epoch["val_uar"] for epoch in record["history"]]
        kept_epochs = [epoch["epoch"] for epoch in record["history"] if epoch.get("kept")]
        assert kept_epochs == [int(np.argmax(val)) + 1]
