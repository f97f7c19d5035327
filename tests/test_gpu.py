"""The CUDA paths against the CPU (marker `gpu`; `pytest -m gpu`, or `bash scripts/bench/gpu_check.sh`).

Every test here is skipped, with one reason line, where CUDA is unavailable. On a GPU they check:
pre-training steps in fp32, `--amp --opt_level O1` (float16, GradScaler) and `O2` (bfloat16); the
two-bank memory against the CPU on the same inputs and draws; checkpoints moving between CPU and
CUDA; frozen and fine-tuned LOSO against the CPU; `--device cuda:N` and `CUDA_VISIBLE_DEVICES`;
torchrun over NCCL with `--sync_bn`; the decoded-image store and the on-device augmentation.

Tests of behaviour suspected to be wrong on CUDA are marked xfail (not strict) and name the
suspected code: an XPASS means the suspicion was wrong, or the code was fixed.

`GPU_TEST_DEVICE=cpu pytest -m gpu` runs the tests that do not need CUDA itself with the CPU in the
GPU's place: a dry run of the tests' own logic (each device compared with itself), nothing more.

Some checks need a fresh process (the visible devices are fixed when CUDA starts; torchrun starts
its own): this file is then also the child's program, `python tests/test_gpu.py MODE ...`.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import dataset
from models.LinearModel import Classifier
import util
from models import build_model
from NCE import ContrastMemory, NCECriterion, NCESoftmaxLoss
from helpers import run_args
from scripts.bench import bench_gpu
from util import REPO_ROOT

pretrain = util.load_script("pre-train_CVSCL.py")
finetune = util.load_script("fine-tune_CVSCL.py")

DEVICE = torch.device(os.environ.get("GPU_TEST_DEVICE", "cuda"))
NO_CUDA = ("no CUDA device (torch.cuda.is_available() is False): GPU tests run on a GPU machine, "
           "bash scripts/bench/gpu_check.sh")
pytestmark = pytest.mark.gpu
needs_device = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason=NO_CUDA)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)

PRECISIONS = {"fp32": [], "O1": ["--amp", "--opt_level", "O1"], "O2": ["--amp", "--opt_level", "O2"]}
AUTOCAST_DTYPES = {"fp32": torch.float32, "O1": torch.float16, "O2": torch.bfloat16}
CHILD_TIMEOUT = 300

# The memory on both devices, one step from the same state: scores are float32 dot products of
# 128-d unit rows, which the devices sum in another order (a few float32 ulps, about 1e-7), and
# the scores are divided by T = 0.07 before exp, so outputs and the loss agree to 1e-5 relative.
# TF32 (10 mantissa bits, about 1e-3) would fail this on purpose: it must not reach the bank.
# Gradients sum K+1 such terms: 1e-4 relative. The momentum update and renormalisation of unit
# rows keep the 1e-7 level (atol 1e-6); a float16 bank may round one element one float16 ulp
# (2**-11 below 1) the other way.
MEMORY_OUT_TOL = {"rtol": 1e-5, "atol": 1e-5}
MEMORY_GRAD_TOL = {"rtol": 1e-4, "atol": 1e-5}
BANK_ATOL = {torch.float32: 1e-6, torch.float16: 2.0**-11}
# Decoded images: the integer conversion is exact; CUDA divides by the scalar 255 (65535) as a
# multiplication by its reciprocal, one float32 rounding away from the CPU's division.
STORE_TOL = {"rtol": 1.2e-7, "atol": 0.0}
# Augmentation: the random parameters come from the same CPU generator on both devices. Sampling
# coordinates of order S px (S <= 256) carry a float32 rounding of about S * 6e-8 px, which moves
# a bilinear weight, hence a [0, 1] pixel, by at most about 1e-5; normalisation divides by a
# std >= 0.17, so outputs agree to 1e-4.
AUGMENT_TOL = {"rtol": 0.0, "atol": 1e-4}
# LOSO: with TF32 off the devices differ only in summation order, so a frozen encoder's features
# agree to about 1e-6 relative and a prediction can flip only on a near-tie: all must agree.
# With TF32 (cuDNN's default for convolutions: 10-bit products) and with fine-tuning (which
# carries any difference through every later step) at least LOSO_AGREEMENT of the predictions
# must agree, which bounds the change of the pooled accuracy by 1 - LOSO_AGREEMENT.
LOSO_AGREEMENT = 0.9
LOSO_EPOCHS = 5


def gpu() -> str:
    """The device under test as a `--device` value (`cuda`, or `cpu` in a dry run)."""
    return str(DEVICE)


def placed() -> list[str]:
    """Where `--device gpu()` puts a tensor: `cuda` means the current GPU, cuda:0."""
    return [str(torch.device("cuda", 0))] if DEVICE.type == "cuda" and DEVICE.index is None else [str(DEVICE)]


def pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    """The CPU tests' small pre-training flags (`helpers.run_args`) with K below the
    synthetic pool's 24 pairs, then `extra`."""
    return run_args(data, out, "--nce_k", "16", *extra)


def pool_samples(data: Path) -> list[dataset.Sample]:
    """The pre-training pool of a synthetic data folder."""
    return dataset.load_pool(dataset.find_list_folder(data), data)


def bare_devices(module: nn.Module) -> list[str]:
    """Sorted distinct devices of `module`'s parameters and buffers."""
    return sorted({str(t.device) for t in [*module.parameters(), *module.buffers()]})


def state_devices(optimizer: torch.optim.Optimizer) -> list[str]:
    """Sorted distinct devices of the optimizer's state tensors (momentum buffers)."""
    return sorted({str(v.device) for state in optimizer.state.values() for v in state.values()
                   if isinstance(v, Tensor)})


def load(path: Path) -> dict:
    """A checkpoint, the safe way, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def epoch_losses(folder: Path) -> list[float]:
    """The `loss` of every line of a run's log.jsonl."""
    return [json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def no_launcher(monkeypatch) -> None:
    """In-process entry points run as a plain `python` launch, whatever the environment says."""
    for name in util.LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def strict_fp32() -> Iterator[None]:
    """TF32 off for cuDNN and cuBLAS, deterministic cuDNN algorithms; restored afterwards."""
    backends = torch.backends
    saved = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32, backends.cudnn.deterministic,
             backends.cudnn.benchmark)
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    backends.cudnn.deterministic, backends.cudnn.benchmark = True, False
    yield
    (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32, backends.cudnn.deterministic,
     backends.cudnn.benchmark) = saved


# ---------------------------------------------------------------------------------------------
# Pre-training steps in every precision


def record_training(monkeypatch) -> dict:
    """Wrap `pretrain.train`: keep the initial weights, the autocast dtype of each branch's first
    convolution, the model, memory, optimizer and scaler it ran with."""
    record: dict = {"conv_dtypes": set()}
    train = pretrain.train

    def recording(epoch, store, transform, model, contrast, criterion, optimizer, scaler, args, device):
        bare = util.unwrap_model(model)
        if "before" not in record:
            record["before"] = {k: v.detach().clone() for k, v in bare.state_dict().items()}
            for branch in (bare.rgb_to_d, bare.d_to_rgb):
                conv = next(m for m in branch.modules() if isinstance(m, nn.Conv2d))
                conv.register_forward_hook(lambda m, i, out: record["conv_dtypes"].add(out.dtype))
        record.update(model=bare, contrast=contrast, optimizer=optimizer, scaler=scaler)
        return train(epoch, store, transform, model, contrast, criterion, optimizer, scaler, args, device)

    monkeypatch.setattr(pretrain, "train", recording)
    return record


@needs_device
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_pretraining_steps_learn_in_every_precision(synthetic_data: Path, tmp_path: Path, monkeypatch, no_launcher,
                                                    record_property, precision: str):
    """8 epochs of 3 steps: finite, falling loss (the CPU test's criterion), every weight matrix of
    both encoders updated, everything on the device, autocast in the precision's dtype, and for
    O1 on CUDA a GradScaler at work."""
    record = record_training(monkeypatch)
    folder = pretrain.main(pretrain_args(synthetic_data, tmp_path, "--epochs", "8", "--softmax", "--device", gpu(),
                                         *PRECISIONS[precision]))
    losses = epoch_losses(folder)
    record_property("epoch_losses", losses)
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses))), losses
    # epoch 1 scores against the random initial banks; from then on the loss must fall
    assert losses[-1] < min(losses[:2]) - 0.1, losses
    after = record["model"].state_dict()
    for branch in ("rgb_to_d", "d_to_rgb"):
        unchanged = [k for k, v in after.items() if k.startswith(branch) and v.dim() >= 2
                     and torch.equal(v.cpu(), record["before"][k].cpu())]
        assert not unchanged, f"{precision}: {len(unchanged)} weights of {branch} did not change, e.g. {unchanged[0]}"
    assert bare_devices(record["model"]) == bare_devices(record["contrast"]) == placed()
    assert state_devices(record["optimizer"]) == placed()
    assert record["conv_dtypes"] == {AUTOCAST_DTYPES[precision]}
    scaler = record["scaler"]
    assert scaler.is_enabled() == (precision == "O1" and DEVICE.type == "cuda")
    if scaler.is_enabled():
        assert 0 < scaler.get_scale() < float("inf")
        assert load(folder / "last.pth")["scaler"], "an enabled scaler's state belongs in the checkpoint"


# ---------------------------------------------------------------------------------------------
# The two-bank memory against the CPU


@needs_device
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_data", [60, 2000], ids=["dense", "gathered"])
@pytest.mark.parametrize("softmax", [False, True], ids=["nce", "softmax"])
def test_contrast_memory_matches_cpu(monkeypatch, record_property, softmax: bool, n_data: int,
                                     bank_dtype: torch.dtype):
    """Three steps, each from the same state on both devices (the GPU copy reloads the CPU's), with
    the same features, anchors (one repeated) and drawn negatives: outputs, Z, loss, gradients and
    updated banks agree within the tolerances above."""
    batch, nce_k, dim = 16, 32, 128
    torch.manual_seed(0)
    cpu = ContrastMemory(dim, n_data, nce_k, 0.07, 0.5, softmax=softmax, bank_dtype=bank_dtype)
    device_memory = copy.deepcopy(cpu).to(DEVICE)
    drawn: list[Tensor] = []
    monkeypatch.setattr(ContrastMemory, "draw_indices", lambda self, index: drawn[-1].to(self.memory_rgb.device))
    criterion = NCESoftmaxLoss() if softmax else NCECriterion(n_data)
    generator = torch.Generator().manual_seed(1)
    largest = {"out": 0.0, "bank": 0.0}
    for step in range(3):
        index = torch.randperm(n_data, generator=generator)[:batch]
        index[-1] = index[0]  # the same sample twice: the bank keeps the later feature on every device
        drawn.append(torch.cat([index[:, None], torch.randint(n_data, (batch, nce_k), generator=generator)], dim=1))
        feats = F.normalize(torch.randn(2, batch, dim, generator=generator), dim=2)
        device_memory.load_state_dict(cpu.state_dict())
        results = []
        for memory in (cpu, device_memory):
            where = memory.memory_rgb.device
            feat_rgb, feat_depth = (f.to(where, copy=True).requires_grad_() for f in feats)
            out = memory(feat_rgb, feat_depth, index.to(where))
            loss = criterion(out[0]) + criterion(out[1])
            loss.backward()
            results.append({"out": torch.stack(out).detach().cpu(), "loss": loss.detach().cpu(),
                            "grad": torch.stack((feat_rgb.grad, feat_depth.grad)).cpu(), "z": memory.z.cpu(),
                            "banks": torch.stack((memory.memory_rgb, memory.memory_depth)).float().cpu()})
        ref, got = results
        msg = f"step {step}"
        torch.testing.assert_close(got["out"], ref["out"], **MEMORY_OUT_TOL, msg=msg)
        torch.testing.assert_close(got["z"], ref["z"], **MEMORY_OUT_TOL, msg=msg)
        torch.testing.assert_close(got["loss"], ref["loss"], **MEMORY_OUT_TOL, msg=msg)
        torch.testing.assert_close(got["grad"], ref["grad"], **MEMORY_GRAD_TOL, msg=msg)
        torch.testing.assert_close(got["banks"], ref["banks"], rtol=0, atol=BANK_ATOL[bank_dtype], msg=msg)
        relative = (got["out"] - ref["out"]).abs() / ref["out"].abs().clamp_min(1e-30)
        largest["out"] = max(largest["out"], float(relative.max()))
        largest["bank"] = max(largest["bank"], float((got["banks"] - ref["banks"]).abs().max()))
    record_property("largest_relative_output_difference", largest["out"])
    record_property("largest_bank_difference", largest["bank"])


# ---------------------------------------------------------------------------------------------
# Checkpoints between CPU and CUDA


@needs_device
@pytest.mark.parametrize("first, second, precision", [
    (gpu(), "cpu", "fp32"), ("cpu", gpu(), "fp32"), (gpu(), "cpu", "O1"), ("cpu", gpu(), "O1")])
def test_checkpoint_resumes_on_the_other_device(synthetic_data: Path, tmp_path: Path, no_launcher, first: str,
                                                second: str, precision: str):
    """One epoch on `first`, then `--resume` of its last.pth for a second epoch on `second`: the run
    continues (log of epochs 1 and 2, last.pth at epoch 2), weights change and stay finite, the
    banks stay unit rows."""
    argv = pretrain_args(synthetic_data, tmp_path, *PRECISIONS[precision])
    folder = pretrain.main([*argv, "--epochs", "1", "--device", first])
    pretrain.main([*argv, "--epochs", "2", "--device", second, "--resume", str(folder / "last.pth")])
    assert [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()] == [1, 2]
    one, two = load(folder / "ckpt_epoch_1.pth"), load(folder / "last.pth")
    assert two["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in two["model"].values() if v.is_floating_point())
    assert any(not torch.equal(v, one["model"][k]) for k, v in two["model"].items())
    for name in ("memory_rgb", "memory_depth"):
        norms = two["contrast"][name].float().norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-4)


@needs_cuda
def test_checkpoint_from_a_machine_with_more_gpus_resumes(synthetic_data: Path, tmp_path: Path, no_launcher):
    """A checkpoint holds the CUDA generator state of its process's device only; one written before,
    with a list of one state per GPU of a larger node (one more than this machine has), resumes
    here."""
    argv = pretrain_args(synthetic_data, tmp_path)
    folder = pretrain.main([*argv, "--epochs", "1", "--device", "cuda"])
    ckpt = load(folder / "last.pth")
    state = ckpt["rng"][0]["cuda"]
    assert isinstance(state, Tensor), "one device's state"
    ckpt["rng"][0]["cuda"] = [state.clone() for _ in range(torch.cuda.device_count() + 1)]
    # In the run folder: resuming from a checkpoint elsewhere would be a new run in a folder it does not own.
    torch.save(ckpt, folder / "larger_node.pth")
    pretrain.main([*argv, "--epochs", "2", "--device", "cuda", "--resume", str(folder / "larger_node.pth")])
    assert load(folder / "last.pth")["epoch"] == 2


# ---------------------------------------------------------------------------------------------
# Host synchronisations in the training step


def counted_syncs(fn: Callable[[], object]) -> Counter:
    """Synchronising CUDA calls of `fn()` by source line, as scripts/bench/bench_gpu.py counts them; none
    in a CPU dry run (only `fn()` runs)."""
    if DEVICE.type == "cuda":
        return bench_gpu.count_syncs(fn)
    fn()
    return Counter()


@needs_device
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("loss", ["nce", "softmax"])
def test_training_steps_never_wait_for_the_device(synthetic_data: Path, tmp_path: Path, precision: str, loss: str):
    """`pretrain.train` epochs of 2 and 5 steps (batch 4) after a warm-up epoch, under
    `torch.cuda.set_sync_debug_mode("warn")`: with one read-back, at the epoch's end, every line
    synchronises as often in both, so no step does. With a read-back every 2 steps (1 and 3 of
    them) only `train`'s own lines count more, and they do (the counting works)."""
    flags = ["--batch_size", "4", "--device", gpu(), *(["--softmax"] if loss == "softmax" else []),
             *PRECISIONS[precision]]
    args = pretrain.parse_option(pretrain_args(synthetic_data, tmp_path, *flags))
    samples = pool_samples(synthetic_data)
    stores = {steps: dataset.ImageStore(samples[:4 * steps], args.load_size, workers=0, progress=False)
              for steps in (2, 5)}
    util.set_seed(0)
    model, contrast, criterion = pretrain.set_model(args, len(samples), DEVICE)
    optimizer = pretrain.set_optimizer(args, model)
    scaler = torch.amp.GradScaler(DEVICE.type, enabled=precision == "O1" and DEVICE.type == "cuda")
    augment = dataset.augment_from_args(args, train=True)

    def epoch(steps: int, print_freq: int) -> Counter:
        args.print_freq = print_freq
        return counted_syncs(lambda: pretrain.train(1, stores[steps], augment, model, contrast, criterion,
                                                    optimizer, scaler, args, DEVICE))

    epoch(2, 1000)  # warm-up: cuDNN's algorithm search, Z's estimate, the caching allocators
    short, long = epoch(2, 1000), epoch(5, 1000)
    per_step = {line: long[line] - short[line] for line in short | long if long[line] != short[line]}
    assert not per_step, f"synchronisations added by 3 more steps, by line: {per_step}"
    short, long = epoch(2, 2), epoch(5, 2)
    added = {line: long[line] - short[line] for line in short | long if long[line] != short[line]}
    assert all(line.startswith("pre-train_CVSCL.py:") for line in added), added
    assert DEVICE.type != "cuda" or sum(added.values()) > 0, "no read-back was counted"


# ---------------------------------------------------------------------------------------------
# LOSO on the device against the CPU


def loso_predictions(data: Path, out: Path, device: str, frozen: bool) -> dict[str, int]:
    """Prediction per sample of a small LOSO run (random alexnet, 64 px, LOSO_EPOCHS epochs)."""
    argv = ["--data_folder", str(data), "--model_path", "none", "--model", "alexnet", "--image_size", "64",
            "--epochs", str(LOSO_EPOCHS), "--batch_size", "16", "--num_workers", "0", "--no_progress",
            "--device", device, "--save_path", str(out), "--run_name", "loso",
            *(["--freeze_encoder"] if frozen else [])]
    finetune.main(argv)
    with (out / "loso" / "predictions.csv").open(newline="") as f:
        return {row["sample"]: int(row["prediction"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def cpu_loso(synthetic_data: Path, tmp_path_factory) -> Callable[[bool], dict[str, int]]:
    """The CPU's LOSO predictions, frozen or fine-tuned, computed once per module."""
    cache: dict[bool, dict[str, int]] = {}

    def predictions(frozen: bool) -> dict[str, int]:
        if frozen not in cache:
            cache[frozen] = loso_predictions(synthetic_data, tmp_path_factory.mktemp("loso_cpu"), "cpu", frozen)
        return cache[frozen]

    return predictions


@needs_device
@pytest.mark.parametrize("tf32", ["off", "on"])
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "fine-tuned"])
def test_loso_on_the_device_predicts_what_the_cpu_predicts(synthetic_data: Path, tmp_path: Path, request,
                                                           record_property, cpu_loso, frozen: bool, tf32: str):
    """Same seeds, same flags, CPU against the device: frozen with TF32 off every prediction agrees;
    otherwise (TF32 on: the process's settings, cuDNN's default) at least LOSO_AGREEMENT of them.
    The measured share is recorded (`agreement` in the JUnit XML)."""
    if tf32 == "off":
        request.getfixturevalue("strict_fp32")
    reference = cpu_loso(frozen)
    got = loso_predictions(synthetic_data, tmp_path, gpu(), frozen)
    assert got.keys() == reference.keys()
    agreement = sum(got[k] == reference[k] for k in got) / len(got)
    record_property("agreement", agreement)
    if frozen and tf32 == "off":
        assert agreement == 1.0, f"{sum(got[k] != reference[k] for k in got)} of {len(got)} predictions differ"
    else:
        assert agreement >= LOSO_AGREEMENT


# ---------------------------------------------------------------------------------------------
# Device selection: --device cuda:N and CUDA_VISIBLE_DEVICES (a child process each)


def child_environment() -> dict[str, str]:
    """This process's environment with the repository importable (a child runs this file by path)."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def run_child(mode: str, out: Path, data: Path, arg: str, env: dict[str, str] | None = None) -> dict:
    """`python tests/test_gpu.py MODE OUT DATA ARG` with the repository importable; its JSON record."""
    out.mkdir(parents=True, exist_ok=True)
    child_env = {**child_environment(), **(env or {})}
    for name in util.LAUNCH_VARIABLES:
        child_env.pop(name, None)
    result = subprocess.run([sys.executable, __file__, mode, str(out), str(data), arg], env=child_env,
                            capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "record.json").read_text())


@needs_cuda
def test_device_flag_and_visible_devices_are_honoured(synthetic_data: Path, tmp_path: Path):
    """Pre-training and LOSO in a child process put the model, banks, optimizer state, inputs and
    the classifier on the device asked for, and neither memory nor a CUDA context on the other
    GPUs: the last GPU by `--device cuda:N`, and the same physical GPU as cuda:0 (by `--device
    cuda:0` and by `auto`) when `CUDA_VISIBLE_DEVICES` shows only it."""
    last = torch.cuda.device_count() - 1
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",")[last] if visible else str(last)
    want_uuid = str(torch.cuda.get_device_properties(last).uuid)
    cases = {"flag": ({}, f"cuda:{last}", last), "visible": ({"CUDA_VISIBLE_DEVICES": physical}, "cuda:0", 0),
             "auto": ({"CUDA_VISIBLE_DEVICES": physical}, "auto", 0)}
    for name, (env, flag, index) in cases.items():
        record = run_child("devices", tmp_path / name, synthetic_data, flag, env)
        expected = [f"cuda:{index}"]
        for key in ("params", "banks", "optimizer", "store", "input", "eval_params", "eval_input"):
            assert record[key] == expected, f"{name}: {key} on {record[key]}, expected {expected}"
        assert record["uuid"] == want_uuid, f"{name}: ran on another physical GPU"
        assert record["device_count"] == (1 if env else last + 1)
        assert not [i for i, size in enumerate(record["allocated"]) if size and i != index], name
        if record["contexts"] is not None:
            assert [i for i, active in enumerate(record["contexts"]) if active] == [index], name


@needs_cuda
def test_device_past_the_last_gpu_is_a_one_line_error(synthetic_data: Path, tmp_path: Path):
    """`--device cuda:N` with N past the last visible GPU stops with one `error:` line naming it."""
    absent = f"cuda:{torch.cuda.device_count()}"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "pre-train_CVSCL.py"),
                             *pretrain_args(synthetic_data, tmp_path, "--epochs", "1", "--device", absent)],
                            capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and absent in last_line


def _child_devices(out: Path, data: Path, device: str) -> None:
    """Child: one pre-training epoch and one LOSO subject on `device`; records where things live."""
    seen: dict = {}
    train, forward = pretrain.train, Classifier.forward

    def recording(epoch, store, transform, model, contrast, criterion, optimizer, scaler, args, dev):
        def watched(rgb: Tensor, depth: Tensor, generator: torch.Generator | None = None) -> Tensor:
            x = transform(rgb, depth, generator)
            seen.setdefault("store", sorted({str(rgb.device), str(depth.device)}))
            seen.setdefault("input", [str(x.device)])
            return x

        stats = train(epoch, store, watched, model, contrast, criterion, optimizer, scaler, args, dev)
        bare = util.unwrap_model(model)
        seen.update(params=bare_devices(bare), banks=bare_devices(contrast), optimizer=state_devices(optimizer),
                    uuid=str(torch.cuda.get_device_properties(next(bare.parameters()).device).uuid))
        return stats

    def forward_recording(self: Classifier, x: Tensor) -> Tensor:
        if self.training:
            seen.setdefault("eval_params", bare_devices(self))
            seen.setdefault("eval_input", [str(x.device)])
        return forward(self, x)

    pretrain.train = recording
    Classifier.forward = forward_recording
    pretrain.main(pretrain_args(data, out, "--epochs", "1", "--device", device))
    subject = (data / "data" / "v_rgb" / "subName.txt").read_text().split()[0]
    finetune.main(["--data_folder", str(data), "--model_path", "none", "--image_size", "64", "--epochs", "1",
                   "--num_workers", "0", "--no_progress", "--device", device, "--subjects", subject,
                   "--save_path", str(out / "eval")])
    seen["device_count"] = torch.cuda.device_count()
    # A CUDA context (hundreds of MB outside the caching allocator) on another GPU is a leak too;
    # read before the allocator's statistics, so that no query of this child's could create one.
    has_context = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    seen["contexts"] = [bool(has_context(i)) for i in range(torch.cuda.device_count())] if has_context else None
    seen["allocated"] = [torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())]
    (out / "record.json").write_text(json.dumps(seen))


# ---------------------------------------------------------------------------------------------
# torchrun over NCCL with --sync_bn


@needs_cuda
def test_torchrun_nccl_with_sync_bn(synthetic_data: Path, tmp_path: Path):
    """`torchrun --nproc_per_node=<visible GPUs>` of pre-training with `--sync_bn`: every rank joins
    NCCL on cuda:<rank>, trains a DDP model whose batch norms are all SyncBatchNorm, the banks are
    bit-identical across ranks after each epoch, and the checkpoint loads into a plain model."""
    world = torch.cuda.device_count()
    batch = len(pool_samples(synthetic_data)) // world
    if batch < 2:
        pytest.skip(f"the synthetic pool is too small for {world} ranks of at least 2 pairs")
    env = {**child_environment(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                             __file__, "torchrun", str(tmp_path), str(synthetic_data), str(batch)],
                            env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    for epoch in (1, 2):
        ranks = [json.loads((tmp_path / f"rank{r}_epoch{epoch}.json").read_text()) for r in range(world)]
        for rank, record in enumerate(ranks):
            assert record["backend"] == "nccl" and record["world"] == world and record["ddp"]
            assert record["device"] == f"cuda:{rank}" and record["params"] == [f"cuda:{rank}"]
            assert record["sync_bn"] > 0 and record["plain_bn"] == 0
        assert len({r["banks"] for r in ranks}) == 1, f"epoch {epoch}: the ranks' banks differ"
    [folder] = (tmp_path / "models").iterdir()
    ckpt = load(folder / "last.pth")
    assert ckpt["epoch"] == 2 and ckpt["args"]["world_size"] == world and len(ckpt["rng"]) == world
    build_model("alexnet").load_state_dict(ckpt["model"])


def _child_torchrun(out: Path, data: Path, batch: str) -> None:
    """Child, one rank under torchrun: two epochs with --sync_bn; records each rank's set-up."""
    train = pretrain.train

    def recording(epoch, store, transform, model, contrast, criterion, optimizer, scaler, args, device):
        stats = train(epoch, store, transform, model, contrast, criterion, optimizer, scaler, args, device)
        bare = util.unwrap_model(model)
        banks = hashlib.sha1(b"".join(b.cpu().numpy().tobytes() for b in (contrast.memory_rgb, contrast.memory_depth)))
        record = {"backend": dist.get_backend(), "world": util.world_size(), "device": str(device),
                  "ddp": model is not bare, "params": bare_devices(bare), "banks": banks.hexdigest(),
                  "sync_bn": sum(isinstance(m, nn.SyncBatchNorm) for m in bare.modules()),
                  "plain_bn": sum(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in bare.modules())}
        (out / f"rank{util.rank()}_epoch{epoch}.json").write_text(json.dumps(record))
        return stats

    pretrain.train = recording
    pretrain.main(pretrain_args(data, out, "--epochs", "2", "--batch_size", batch, "--sync_bn", "--device", "cuda"))


# ---------------------------------------------------------------------------------------------
# The decoded-image store and the on-device augmentation


@needs_device
@pytest.mark.parametrize("cached", [False, True], ids=["in-memory", "memory-mapped"])
def test_store_batch_on_the_device_matches_cpu(synthetic_data: Path, tmp_path: Path, cached: bool):
    """`ImageStore.batch(index, device)` (pinned, asynchronous copy on CUDA) gives the CPU's float
    images, repeated and unordered indices included."""
    store = dataset.ImageStore(pool_samples(synthetic_data), 73, tmp_path / "cache" if cached else None,
                               workers=0, progress=False)
    index = torch.tensor([5, 0, 3, 3, len(store) - 1])
    for ref, got in zip(store.batch(index, "cpu"), store.batch(index, DEVICE)):
        assert got.device.type == DEVICE.type and got.dtype == ref.dtype == torch.float32 and got.shape == ref.shape
        torch.testing.assert_close(got.cpu(), ref, **STORE_TOL)


@needs_device
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_pair_augment_on_the_device_matches_cpu(synthetic_data: Path, tmp_path: Path, train: bool):
    """The pre-training augmentation (crop down to 0.3 of the area, flips, jitter, grayscale on half
    of the batch) and the test transform, on the same batch and generator seed: the device's
    network input equals the CPU's within AUGMENT_TOL."""
    args = pretrain.parse_option(pretrain_args(synthetic_data, tmp_path, "--crop_low", "0.3", "--grayscale_p", "0.5"))
    augment = dataset.augment_from_args(args, train=train)
    store = dataset.ImageStore(pool_samples(synthetic_data), args.load_size, workers=0, progress=False)
    index = torch.arange(len(store))
    outputs = [augment(*store.batch(index, device), generator=torch.Generator().manual_seed(3))
               for device in ("cpu", DEVICE)]
    ref, got = outputs
    assert got.device.type == DEVICE.type and got.shape == ref.shape == (len(store), 4, 64, 64)
    torch.testing.assert_close(got.cpu(), ref, **AUGMENT_TOL)


# ---------------------------------------------------------------------------------------------
# Child-process entry


CHILDREN = {"devices": _child_devices, "torchrun": _child_torchrun}

if __name__ == "__main__":
    mode, out_dir, data_dir, argument = sys.argv[1:5]
    CHILDREN[mode](Path(out_dir), Path(data_dir), argument)
