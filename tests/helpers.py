"""Helpers shared by the test modules (the shared fixtures are in conftest.py): small, fast flags and
argument lists for the entry scripts, a pre-training subprocess, a checkpoint writer, a corrupted
JPEG, and `fails`, the one check of "this command fails with this one line". Import them by name
(`from helpers import fails, loso_args`); no test module imports from another."""
from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import util
from models import build_model
from util import REPO_ROOT

# Small, fast pre-training: 64 px, 8 pairs a batch, 32 negatives, no worker processes.
PRETRAIN_FAST = ["--image_size", "64", "--batch_size", "8", "--nce_k", "32", "--num_workers", "0",
                 "--learning_rate", "0.03", "--print_freq", "1"]
# Small, fast evaluation: 64 px, 16 pairs a batch, no worker processes, no progress bar.
EVAL_FAST = ["--image_size", "64", "--num_workers", "0", "--batch_size", "16", "--no_progress"]


def fails(main: Callable[[list[str]], Any], argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run `main(argv)` as its command line does (`util.run_cli`); assert exit code 2 and exactly one
    error line on stderr, the last one (warnings may come before it); return that line.

    The line is ours, `error: ...` (a `util.UserError`), or argparse's usage error,
    `<prog>: error: ... (see <prog> --help)` (`util.ArgumentParser`). Output from before the call
    is dropped first."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        util.run_cli(lambda: main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ") or ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


# ---------------------------------------------------------------------------------------------
# Pre-training (pre-train_CVSCL.py)


def run_args(pool: Path, out: Path, *extra: str) -> list[str]:
    """Pre-training flags: the data `pool`, models and TensorBoard files under `out`,
    PRETRAIN_FAST, then `extra`."""
    return ["--data_folder", str(pool), "--model_path", str(out / "models"), "--tb_path", str(out / "tb"),
            *PRETRAIN_FAST, *extra]


def pretrain_cli(*argv: str) -> subprocess.CompletedProcess:
    """`python pre-train_CVSCL.py ARGV` in a subprocess, its output captured as text."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "pre-train_CVSCL.py"), *argv],
                          capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------------------------------------
# Evaluation (fine-tune_CVSCL.py, LinearProbing_CVSCL_10fold.py)


def loso_args(data: Path, out: Path, *extra: str) -> list[str]:
    """LOSO flags: random init, one epoch, results under `out`, EVAL_FAST, then `extra`."""
    return ["--data_folder", str(data), "--model_path", "none", "--save_path", str(out), "--epochs", "1",
            *EVAL_FAST, *extra]


def probe_args(data: Path, out: Path, *extra: str) -> list[str]:
    """Linear-probe flags: random init, 3 epochs, 3 folds, results under `out`, EVAL_FAST, then `extra`."""
    return ["--data_folder", str(data), "--model_path", "none", "--save_path", str(out), "--epochs", "3",
            "--folds", "3", *EVAL_FAST, *extra]


def save_checkpoint(path: Path, model: str, published: bool) -> dict[str, torch.Tensor]:
    """A checkpoint of a freshly initialised encoder, in our format or the published one
    (`encoder.module.` keys, a pickled Namespace under `opt`). Returns the clean state dict."""
    torch.manual_seed(1)
    state = build_model(model, feat_dim=16).state_dict()
    if published:
        ckpt = {"model": {f"encoder.module.{k}": v for k, v in state.items()}, "epoch": 3,
                "opt": argparse.Namespace(model=model, feat_dim=16, nce_k=16, softmax=True),
                "contrast": {"params": torch.tensor([16.0, 0.07, -1.0, 0.5])}}
    else:
        ckpt = {"format": "dvscl-pretrain-1", "model": state, "epoch": 3,
                "args": {"model": model, "feat_dim": 16, "image_size": 64}}
    torch.save(ckpt, path)
    return state


# ---------------------------------------------------------------------------------------------
# Data tools


def corrupt_middle(data: bytes) -> bytes:
    """A JPEG's bytes with 16 in the middle of its entropy-coded data overwritten by restart markers:
    as long as before, its end marker kept, but its data corrupt (libjpeg warns and decodes it)."""
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    return data[:middle] + b"\xff\xd0" * 8 + data[middle + 16:]


def run_megc2019_prepare(releases, out: Path, *extra: str) -> tuple[Path, dict, str, str]:
    """(out folder, summary, stdout, stderr) of prepare_megc2019.py on the fake `releases`
    (`scripts.datatools.megc2019.fake.FakeReleases`) at 64 px with the flags `extra`."""
    from scripts.data import prepare_megc2019

    argv = ["--smic", str(releases.smic), "--casme2", str(releases.casme2), "--samm", str(releases.samm),
            "--out", str(out), "--image_size", "64", *extra]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        summary = prepare_megc2019.main(argv)
    return out, summary, stdout.getvalue(), stderr.getvalue()
