"""Small shared helpers: user-facing errors, atomic writes, seeding, checkpoints, meters."""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent
AMP_DTYPES = {"O1": torch.float16, "O2": torch.bfloat16}


class UserError(Exception):
    """Bad input the user can fix. The message is one line naming the file (and line) at fault."""


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the heap instead of returning it to the kernel.

    By default glibc serves every large block (an activation, a gradient) from a fresh mmap and
    unmaps it when freed, so each training step pays page faults to get the same memory back.
    With mmap off and a 2 GiB trim threshold the blocks are reused (the gain is measured by
    `scripts/bench_pretrain.py --compare`, see README.md). Does nothing where the C library
    is not glibc, or when the user set `MALLOC_MMAP_MAX_` or `MALLOC_TRIM_THRESHOLD_` (their
    values win). Returns whether it changed the settings.
    """
    if not sys.platform.startswith("linux") or {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def run_cli(main: Callable[[], Any]) -> None:
    """Run an entry point (after `keep_freed_memory`); a `UserError` becomes one `error: ...` line
    on stderr and exit code 2."""
    keep_freed_memory()
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _atomic_replace(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` that never leaves a half-written file at `path`."""
    _atomic_replace(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temporary file, then rename)."""
    _atomic_replace(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: str | Path, allow_namespace: bool = False) -> dict:
    """Load a checkpoint safely (`weights_only=True`) onto the CPU.

    `allow_namespace` allow-lists `argparse.Namespace`, which the published code pickled under `opt`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    safe = [argparse.Namespace] if allow_namespace else []
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for corrupt or unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a loadable checkpoint ({first})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: checkpoint is a {type(ckpt).__name__}, expected a dict")
    return ckpt


def git_revision() -> str:
    """The repository's commit (with `-dirty` when the tree has changes), or 'unknown'."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random generator's state as plain data (loads with `weights_only=True`)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class AverageMeter:
    """Running average of a scalar."""

    def __init__(self) -> None:
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def step_lr(epoch: int, base_lr: float, decay_epochs: list[int], decay_rate: float) -> float:
    """Step schedule of the original: `base_lr * decay_rate ** (number of decay epochs passed)`."""
    return base_lr * decay_rate ** sum(epoch > e for e in decay_epochs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to `lr` times its own `lr_mult` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def parse_int_list(text: str) -> list[int]:
    """'160,200' -> [160, 200]; '' -> []."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {text!r}") from None


def pick_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when available (respecting CUDA_VISIBLE_DEVICES), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with the fused update kernel where torch has one (CPU and CUDA): one pass over each
    parameter instead of separate weight-decay, momentum and update passes (the same update)."""
    params = list(params)
    devices = {p.device.type for group in params for p in (group["params"] if isinstance(group, dict) else [group])}
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=devices <= {"cpu", "cuda"})


def add_amp_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--amp` and `--opt_level`, shared by the three entry scripts."""
    parser.add_argument("--amp", action="store_true", help="mixed precision with torch.amp")
    parser.add_argument("--opt_level", choices=sorted(AMP_DTYPES), default="O2",
                        help="with --amp: O1 = float16 autocast with a GradScaler (CUDA), O2 = bfloat16 autocast")


def autocast(device_type: str, amp: bool, opt_level: str) -> ContextManager:
    """`torch.autocast` with the dtype of `opt_level` when `amp`, else a no-op context."""
    return torch.autocast(device_type, dtype=AMP_DTYPES[opt_level]) if amp else nullcontext()
