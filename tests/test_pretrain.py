"""Pre-training: both encoders learn, checkpoints are safe, resume is exact, bad input fails cleanly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from helpers import pretrain_cli, run_args
from util import UserError
import util

pretrain = util.load_script("pre-train_CVSCL.py")


@pytest.mark.parametrize("loss", ["nce", "softmax"])
def test_one_step_trains_both_encoders(pool: Path, tmp_path: Path, loss: str):
    args = pretrain.parse_option(run_args(pool, tmp_path, "--epochs", "1",
                                          *(["--softmax"] if loss == "softmax" else [])))
    samples = dataset.load_pool(dataset.find_list_folder(pool), pool)
    store = dataset.ImageStore(samples[:8], args.load_size, progress=False)
    device = torch.device("cpu")
    model, contrast, criterion = pretrain.set_model(args, len(store), device)
    optimizer = pretrain.set_optimizer(args, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = pretrain.train(1, store, pretrain.dataset.augment_from_args(args, True), model, contrast, criterion,
                           optimizer, scaler, args, device)
    assert np.isfinite(stats["loss"])
    after = model.state_dict()
    for branch in ("rgb_to_d", "d_to_rgb"):
        for block in ("conv_block_1.0.weight", "conv_block_5.0.weight", "fc8.0.weight"):
            key = f"{branch}.{block}"
            assert not torch.equal(before[key], after[key]), f"{key} did not change"


@pytest.mark.slow
def test_cli_writes_safe_checkpoints_and_logs(pool: Path, tmp_path: Path):
    result = pretrain_cli(*run_args(pool, tmp_path, "--epochs", "2", "--save_freq", "1"))
    assert result.returncode == 0, result.stderr
    [run] = (tmp_path / "models").iterdir()
    assert run.name == "memory_nce_32_alexnet_lr_0.03_decay_0.0001_bsz_8_view_RGB_D_seed0"
    for name in ("ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "last.pth"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        assert set(ckpt) >= {"model", "contrast", "optimizer", "scaler", "epoch", "args", "rng"}
        assert all(not k.startswith("module.") for k in ckpt["model"])
        bank = ckpt["contrast"]["memory_rgb"]
        assert bank.shape == (24, 128)
        assert torch.allclose(bank.norm(dim=1), torch.ones(24), atol=1e-4)
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 2
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert list((tmp_path / "tb" / f"{run.name}_{util.folder_digest(run)}").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("interval, saved_after", [(0, [1, 2, 3, 4, 5]), (1e9, [None, 2, 2, 4, 5])])
def test_last_checkpoint_is_saved_every_interval_and_with_numbered_ones(tmp_path: Path, interval: float,
                                                                        saved_after: list):
    """last.pth after each of 5 epochs (--save_freq 2): every epoch with --last_interval 0; with a
    long interval only with the numbered checkpoints (2, 4) and after the last epoch."""
    args = pretrain.parse_option(["--data_folder", ".", "--model_path", str(tmp_path / "models"), "--tb_path",
                                  str(tmp_path / "tb"), "--epochs", "5", "--save_freq", "2",
                                  "--last_interval", str(interval)])
    recorder = pretrain.Recorder(args, start_epoch=1)
    last = Path(args.model_folder) / "last.pth"
    seen = []
    for epoch in range(1, 6):
        stats = dict.fromkeys(pretrain.STAT_NAMES, 0.0) | {"images_per_s": 1.0}
        recorder.epoch(epoch, stats, {"epoch": epoch})
        seen.append(torch.load(last, weights_only=True)["epoch"] if last.exists() else None)
    recorder.close()
    assert seen == saved_after
    assert sorted(p.name for p in Path(args.model_folder).glob("ckpt_epoch_*.pth")) == [
        "ckpt_epoch_2.pth", "ckpt_epoch_4.pth", "ckpt_epoch_5.pth"]


@pytest.mark.slow
def test_resume_is_exact_and_may_extend_the_epochs(pool: Path, tmp_path: Path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert pretrain_cli(*run_args(pool, straight, "--epochs", "3")).returncode == 0
    assert pretrain_cli(*run_args(pool, stopped, "--epochs", "2")).returncode == 0
    [run] = (stopped / "models").iterdir()
    resumed = pretrain_cli(*run_args(pool, stopped, "--epochs", "3", "--resume", str(run / "last.pth")))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "training to epoch 3 (the run was set to 2)" in resumed.stdout
    record = util.read_record(run)
    assert record.complete and record.settings["epochs"] == 3
    a = torch.load(next((straight / "models").iterdir()) / "last.pth", weights_only=True)
    b = torch.load(run / "last.pth", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["contrast"]:
        assert torch.equal(a["contrast"][key], b["contrast"][key]), key


@pytest.mark.slow
def test_intensity_threshold_filters_pool(pool: Path, tmp_path: Path):
    result = pretrain_cli(*run_args(pool, tmp_path, "--epochs", "1", "--intensity_threshold", "0.5"))
    assert result.returncode == 0, result.stderr
    assert "kept 12 pairs, dropped 12" in result.stdout
    [run] = (tmp_path / "models").iterdir()
    assert run.name.endswith("_int_0.5_seed0")
    assert torch.load(run / "last.pth", weights_only=True)["contrast"]["memory_rgb"].shape[0] == 12


@pytest.mark.parametrize("change, message", [
    (lambda root: root / "missing", "data folder not found"),
    (lambda root: root, "pretrain.txt:1: image not found"),
])
def test_bad_data_fails_with_one_line(pool: Path, tmp_path: Path, change, message: str):
    root = tmp_path / "broken"
    for view in ("v_rgb", "v_depth"):
        (root / "data" / view).mkdir(parents=True)
        (root / "data" / view / "pretrain.txt").write_text("gone.png -1 0\n")
    result = pretrain_cli(*run_args(change(root), tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]


@pytest.mark.slow
def test_wrong_checkpoint_on_resume(pool: Path, tmp_path: Path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    result = pretrain_cli(*run_args(pool, tmp_path, "--epochs", "1", "--resume", str(bad)))
    assert result.returncode == 2 and "bad.pth: not a loadable checkpoint" in result.stderr
    other = tmp_path / "other.pth"
    torch.save({"format": pretrain.CHECKPOINT_FORMAT, "args": {"model": "resnet18v1", "feat_dim": 128}}, other)
    result = pretrain_cli(*run_args(pool, tmp_path, "--epochs", "1", "--resume", str(other)))
    assert result.returncode == 2 and "checkpoint is resnet18v1" in result.stderr


def test_non_finite_loss_stops_and_keeps_last_checkpoint(pool: Path, tmp_path: Path, monkeypatch):
    pretrain.main(run_args(pool, tmp_path, "--epochs", "1"))
    [run] = (tmp_path / "models").iterdir()
    good = torch.load(run / "last.pth", weights_only=True)
    monkeypatch.setattr(pretrain.NCECriterion, "forward", lambda self, x: x.sum() * float("nan"))
    with pytest.raises(UserError, match="non-finite loss .* at epoch 2 step 1"):
        pretrain.main(run_args(pool, tmp_path, "--epochs", "2", "--resume", str(run / "last.pth")))
    kept = torch.load(run / "last.pth", weights_only=True)
    assert kept["epoch"] == 1
    assert all(torch.equal(good["model"][k], kept["model"][k]) for k in good["model"])


def _cpu_run(pool: Path, tmp_path: Path, *extra: str):
    """Flags, the decoded pool (24 pairs: 3 steps of 8), a seeded model, memory, loss and
    optimizer of a CPU run."""
    args = pretrain.parse_option(run_args(pool, tmp_path, "--epochs", "2", *extra))
    samples = dataset.load_pool(dataset.find_list_folder(pool), pool)
    store = dataset.ImageStore(samples, args.load_size, progress=False)
    torch.manual_seed(0)
    model, contrast, criterion = pretrain.set_model(args, len(store), torch.device("cpu"))
    return args, store, model, contrast, criterion, pretrain.set_optimizer(args, model)


def test_reading_the_step_values_back_less_often_changes_nothing(pool: Path, tmp_path: Path):
    """The step values stay tensors between read-backs: read back after every step or only at the
    epoch's end, the epoch means and the weights are the same, bit for bit."""
    runs = []
    for print_freq in ("1", "1000"):
        args, store, model, contrast, criterion, optimizer = _cpu_run(pool, tmp_path, "--print_freq", print_freq)
        stats = pretrain.train(1, store, dataset.augment_from_args(args, True), model, contrast, criterion,
                               optimizer, torch.amp.GradScaler("cpu", enabled=False), args, torch.device("cpu"))
        runs.append(({k: v for k, v in stats.items() if k != "images_per_s"}, model.state_dict()))
    (every_step, weights), (at_the_end, same_weights) = runs
    assert every_step == at_the_end and set(every_step) == set(pretrain.STAT_NAMES)
    assert all(torch.equal(weights[k], same_weights[k]) for k in weights)


@pytest.mark.parametrize("first_bad_step, steps", [(1, "steps 1-2"), (3, "step 3")])
def test_non_finite_loss_stops_at_the_first_read_back_after_it(pool: Path, tmp_path: Path, first_bad_step: int,
                                                             steps: str):
    """With --print_freq 2 the 3-step epoch reads its values back after steps 2 and 3: a NaN loss
    from `first_bad_step` on stops it at the first of these after it, with one line naming the
    epoch and the steps since the last read-back."""
    args, store, model, contrast, criterion, optimizer = _cpu_run(pool, tmp_path, "--print_freq", "2")
    calls = []
    forward = criterion.forward

    def poisoned(x: torch.Tensor) -> torch.Tensor:
        calls.append(x)
        step = (len(calls) + 1) // 2  # two calls a step: RGB, then depth
        return forward(x) * (float("nan") if step >= first_bad_step else 1.0)

    criterion.forward = poisoned
    with pytest.raises(UserError) as raised:
        pretrain.train(2, store, dataset.augment_from_args(args, True), model, contrast, criterion, optimizer,
                       torch.amp.GradScaler("cpu", enabled=False), args, torch.device("cpu"))
    message = str(raised.value)
    assert message == f"non-finite loss (nan) at epoch 2 {steps}; no checkpoint of this run was saved yet"
    assert len(calls) == 2 * (2 if first_bad_step <= 2 else 3)


def test_resume_loads_a_loss_scale_only_where_both_scalers_work(pool: Path, tmp_path: Path):
    """O1's GradScaler is disabled off CUDA and saves {}: resumed with an enabled scaler (O1 on
    CUDA) the scale starts afresh instead of failing; a saved scale resumed with a disabled scaler
    is dropped; between enabled scalers it carries over. Enabled CPU scalers stand in for CUDA's."""
    args, _, model, contrast, _, optimizer = _cpu_run(pool, tmp_path)

    def saved_with(scaler: torch.amp.GradScaler, name: str) -> str:
        path = tmp_path / name
        torch.save(pretrain.checkpoint_state(model, contrast, optimizer, scaler, 1, {}, args, [util.rng_state()]),
                   path)
        return str(path)

    from_cpu = saved_with(torch.amp.GradScaler("cpu", enabled=False), "disabled.pth")
    from_cuda = saved_with(torch.amp.GradScaler("cpu", init_scale=8.0), "enabled.pth")
    assert torch.load(from_cpu, weights_only=True)["scaler"] == {}
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    pretrain.restore(util.load_checkpoint(from_cpu), model, contrast, optimizer, fresh, args)
    assert fresh.is_enabled() and fresh.get_scale() == 2.0**16
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    pretrain.restore(util.load_checkpoint(from_cuda), model, contrast, optimizer, disabled, args)
    assert not disabled.is_enabled()
    enabled = torch.amp.GradScaler("cpu")
    pretrain.restore(util.load_checkpoint(from_cuda), model, contrast, optimizer, enabled, args)
    assert enabled.get_scale() == 8.0


@pytest.mark.slow
def test_cli_loss_falls_on_synthetic_data(synthetic_data: Path, tmp_path: Path):
    result = pretrain_cli("--data_folder", str(synthetic_data), "--model_path", str(tmp_path / "models"),
                          "--tb_path", str(tmp_path / "tb"), "--image_size", "64", "--batch_size", "8",
                          "--nce_k", "16", "--softmax", "--learning_rate", "0.03", "--num_workers", "0",
                          "--epochs", "8")
    assert result.returncode == 0, result.stderr
    [run] = (tmp_path / "models").iterdir()
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 8
    # epoch 1 scores against the random initial banks; from then on the loss must fall
    assert losses[-1] < min(losses[:2]) - 0.1, losses


class PerSampleStore:
    """The plain path: each batch read from the image files sample by sample with PIL and turned
    into normalised tensors with torchvision's transforms, every time it is asked for."""

    def __init__(self, samples: list[dataset.Sample], args) -> None:
        from torchvision import transforms as T

        self.samples = samples
        self.rgb = T.Compose([T.ToTensor(), T.CenterCrop(args.image_size), T.Normalize(args.rgb_mean, args.rgb_std)])
        self.depth = T.Compose([T.ToTensor(), T.CenterCrop(args.image_size),
                                T.Normalize([args.depth_mean], [args.depth_std])])

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = [self.rgb(Image.open(self.samples[i].rgb_path).convert("RGB")) for i in index.tolist()]
        depth = [self.depth(Image.open(self.samples[i].depth_path).convert("L")) for i in index.tolist()]
        return torch.stack(rgb).to(device), torch.stack(depth).to(device)


def test_fast_path_loss_curve_matches_plain_path(pool: Path, tmp_path: Path):
    """Images decoded once into the uint8 store, transformed in batches and trained channels-last
    train as images read and transformed one by one every step: the same loss curve on a fixed
    seed, much closer to it than a run with another seed. bfloat16 autocast (--amp) moves the
    curve less than another seed does."""
    args = pretrain.parse_option(run_args(pool, tmp_path, "--epochs", "3", "--load_size", "72"))
    samples = dataset.load_pool(dataset.find_list_folder(pool), pool)
    device = torch.device("cpu")
    fast_store = dataset.ImageStore(samples, args.load_size, progress=False)
    fast_transform = pretrain.dataset.augment_from_args(args, train=False)

    def curve(store, transform, seed: int, amp: bool = False) -> np.ndarray:
        args.amp = amp
        torch.manual_seed(seed)
        model, contrast, criterion = pretrain.set_model(args, len(store), device)
        optimizer = pretrain.set_optimizer(args, model)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        return np.array([pretrain.train(epoch, store, transform, model, contrast, criterion, optimizer, scaler,
                                        args, device)["loss"] for epoch in (1, 2, 3)])

    fast = curve(fast_store, fast_transform, 0)
    plain = curve(PerSampleStore(samples, args), lambda rgb, depth: torch.cat([rgb, depth], dim=1), 0)
    other_seed = curve(fast_store, fast_transform, 1)
    amp = curve(fast_store, fast_transform, 0, amp=True)
    assert fast[-1] < fast[0]
    # The inputs agree to 4e-5 (bilinear sampling at pixel centres against plain slicing), which
    # training amplifies only slowly; another seed moves the curve far more.
    gap, seed_gap, amp_gap = (np.abs(other / fast - 1).max() for other in (plain, other_seed, amp))
    assert gap < 1e-2 and seed_gap > 5 * gap
    assert amp_gap < 5e-2 and amp_gap < seed_gap
