"""Small shared helpers: user-facing errors, atomic writes, the run record, checkpoints, seeding,
flags, process groups."""
from __future__ import annotations

import argparse
import ctypes
import fnmatch
import hashlib
import importlib.util
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ContextManager, Iterator, NoReturn, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from NCE.collectives import all_reduce_mean, is_distributed, world_size  # noqa: F401  (re-exported)

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
    `scripts/bench/bench_pretrain.py --compare`, see docs/benchmarks.md). Does nothing where the C library
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, like every other error of the suite
    (the full usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_cli(main: Callable[[], Any]) -> None:
    """Run an entry point; a `UserError` becomes one `error: ...` line on stderr and exit code 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def load_script(file_name: str) -> ModuleType:
    """The entry script `file_name` (e.g. 'pre-train_CVSCL.py') of the repository as a module.

    The scripts' hyphenated names cannot be imported by name. The module is registered in
    `sys.modules` under its file stem, so every caller of one process shares it; a spawned child
    process calls this again to rebuild it.
    """
    path = REPO_ROOT / file_name
    name = path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


_TEMPORARY_MARK = ".tmp."  # atomic writes go through `.<name>.tmp.<random>` beside the target


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}{_TEMPORARY_MARK}"


def _atomic_replace(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename over `path`.

    A failed write (a full disk, a read-only folder) is a `UserError` naming `path`; the file
    already at `path`, if any, is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
    except OSError as err:
        raise UserError(f"{path}: cannot write here ({err.strerror or err})") from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # torch.save reports a failed write (a full disk) as a RuntimeError of its stream writer,
        # whose message need not say so.
        if isinstance(err, (OSError, RuntimeError)):
            reason = (err.strerror if isinstance(err, OSError) else None) or _last_line(err)
            raise UserError(f"{path}: could not be written ({reason}); any earlier version of it is intact") from None
        raise


def _last_line(err: BaseException) -> str:
    """The last line of an exception's message, or its type's name when it has none."""
    return (str(err).strip().splitlines() or [type(err).__name__])[-1]


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in `folder` (a process killed
    mid-save cannot remove its own); returns what was removed. Call it only where no other process
    writes into `folder`."""
    folder = Path(folder)
    stale = sorted(folder.glob(f".*{_TEMPORARY_MARK}*")) if folder.is_dir() else []
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` that never leaves a half-written file at `path`. It writes through a file
    object, so the archive inside is named `archive` rather than after the temporary file, and
    equal states give equal bytes (and equal checkpoint digests) whatever the file is called."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    _atomic_replace(Path(path), write)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temporary file, then rename)."""
    _atomic_replace(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a binary file atomically (temporary file, then rename)."""
    _atomic_replace(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """The JSON value in `path`; an unreadable or damaged file is a `UserError` naming it and `what`
    it should be."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path}: damaged {what} ({type(err).__name__}: {str(err).splitlines()[0][:80]})"
                        ) from None


# ---------------------------------------------------------------------------------------------
# The run record: `<folder>/run.json` says which tool made a folder, with which settings, which of
# its entries that tool owns and whether the run finished. Every tool that writes a folder claims
# it through `claim_folder`, so no tool writes into, or deletes from, another's folder.

RECORD_FILE = "run.json"
RECORD_FORMAT = "dvscl-run-2"


@dataclass
class RunRecord:
    """One folder's record. `owns` holds names or glob patterns relative to `folder`: what
    `--overwrite` removes. `details` is what the tool adds (an evaluation's units, a dataset's
    counts); it is not compared between runs. `stale` lists what `save` removes first (an
    overwritten run's entries)."""
    folder: Path
    tool: str
    settings: dict
    owns: list[str]
    complete: bool = False
    details: dict = field(default_factory=dict)
    stale: list[Path] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / RECORD_FILE

    def save(self) -> None:
        """Remove the entries of an overwritten run, then write the record through a rename."""
        for entry in self.stale:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
        self.stale = []
        atomic_write_json(self.path, {"format": RECORD_FORMAT, "tool": self.tool, "settings": self.settings,
                                      "owns": self.owns, "complete": self.complete, "details": self.details})

    def start(self) -> None:
        """Mark the run under way (not complete) and save the record: what a writer does once every
        check has passed, before it writes anything else."""
        self.complete = False
        self.save()

    def finish(self, **details: Any) -> None:
        """Mark the run complete (adding `details`) and save the record."""
        self.complete = True
        self.details.update(details)
        self.save()

    def owned_entries(self) -> list[Path]:
        """The entries of `folder` that `owns` names, the record file left out."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir()
                      if p.name != RECORD_FILE and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in self.owns))


def read_record(folder: str | Path) -> RunRecord | None:
    """The record of `folder`, None when it has none; a damaged one is a `UserError`."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    data = read_json(path, "run record")
    kinds = {"format": str, "tool": str, "settings": dict, "owns": list, "complete": bool, "details": dict}
    if not isinstance(data, dict) or any(not isinstance(data.get(k), kind) for k, kind in kinds.items()):
        raise UserError(f"{path}: damaged run record (expected an object with {', '.join(kinds)}); it alone says "
                        "what made this folder: restore it, or delete the folder")
    if data["format"] != RECORD_FORMAT:
        raise UserError(f"{path}: run record of format {data['format']!r}, this version reads {RECORD_FORMAT!r}")
    return RunRecord(Path(folder), data["tool"], data["settings"], data["owns"], data["complete"], data["details"])


def settings_difference(there: dict, here: dict, ignore: Sequence[str] = (), shown: int = 4) -> str:
    """'' when equal (the settings of `ignore` aside), else the first `shown` differing settings as
    '--seed 0 there, 1 here; ...'."""
    differ = sorted(k for k in set(there) | set(here) if k not in ignore and there.get(k) != here.get(k))
    text = "; ".join(f"--{k} {there.get(k)!r} there, {here.get(k)!r} here" for k in differ[:shown])
    return text + (f"; and {len(differ) - shown} more" if len(differ) > shown else "")


def claim_folder(folder: str | Path, tool: str, settings: dict, owns: Sequence[str], overwrite: bool | None = False,
                 details: dict | None = None, may_change: Sequence[str] = ()) -> RunRecord:
    """Check that `folder` may hold this run, and return its record, not yet saved: call `save`
    once every other check has passed, so that a refused command leaves the folder as it was.

    Refused with one line: a path that is not a folder; a folder inside an entry that another
    record owns; a folder made by another tool; a folder of other settings (unless `overwrite`);
    a non-empty folder without a record. With `overwrite`, `save` first removes what the old
    record owns. A folder of the same settings keeps its record's `complete` and `details`.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    _check_not_owned_by_another(folder)
    old = read_record(folder)
    record = RunRecord(folder, tool, settings, list(owns), details=dict(details or {}))
    if old is None:
        # another process's record being written (a temporary) is not a stranger's file
        entries = sorted(p.name for p in folder.iterdir() if _TEMPORARY_MARK not in p.name) if folder.is_dir() else []
        if entries:
            first = entries[0]
            raise UserError(f"{folder}: holds files that no run record accounts for (e.g. {first}); "
                            "pass a new or empty folder")
        return record
    if old.tool != tool:
        raise UserError(f"{old.path}: this folder was made by {old.tool}, not {tool}; pass another folder")
    differ = settings_difference(old.settings, settings, ignore=may_change)
    if overwrite:
        record.stale = old.owned_entries()
    elif differ:
        raise UserError(f"{old.path}: this folder holds a run of other settings ({differ}); pass another "
                        "folder" + ("" if overwrite is None else ", or --overwrite to replace it"))
    else:
        record.complete, record.details = old.complete, {**old.details, **record.details}
    return record


def _check_not_owned_by_another(folder: Path) -> None:
    """A `UserError` when an ancestor's record owns the entry `folder` lies in."""
    target = folder.resolve()
    for ancestor in target.parents:
        record = read_record(ancestor)
        if record is None:
            continue
        entry = target.relative_to(ancestor).parts[0]
        if any(fnmatch.fnmatchcase(entry, pattern) for pattern in record.owns):
            raise UserError(f"{folder}: lies in {ancestor / entry}, which {record.tool} wrote ({record.path}); "
                            "pass a folder of its own")


def folder_digest(folder: str | Path) -> str:
    """8 hex digits naming the resolved `folder`: what a side folder of a run (its TensorBoard
    files) adds to the run's name, so that two runs never share one."""
    return hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:8]


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
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            reason = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines() or [type(err).__name__]
            raise UserError(f"{path}: not a loadable checkpoint (damaged: {reason[0][:120]})") from None
        raise UserError(f"{path}: not loaded: it holds Python objects other than tensors and plain data, which "
                        "could run code when unpickled (a DVSCL, CMC or published checkpoint holds none)") from None
    except Exception as err:  # torch raises many kinds for corrupt files
        raise UserError(f"{path}: not a loadable checkpoint ({type(err).__name__}: "
                        f"{_last_line(err)[:120]})") from None
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
    """This process's random generators' states as plain data (loads with `weights_only=True`).

    On CUDA only the current device's generator: the one a process draws from (each torchrun
    rank has its own device), and a checkpoint then resumes on a machine with fewer GPUs.
    """
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


_warned_cuda_rng = False


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved. A CUDA state goes to the current device. Checkpoints
    written before hold a list, one state per GPU of the writer: the current device's entry is
    used; without one the CUDA generator is left as it is, with one warning per process."""
    global _warned_cuda_rng
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    device = torch.cuda.current_device()
    if isinstance(cuda, (list, tuple)):
        if device >= len(cuda):
            if not _warned_cuda_rng:
                _warned_cuda_rng = True
                print(f"warning: the checkpoint holds the CUDA random states of {len(cuda)} GPU(s), none for "
                      f"cuda:{device}: its CUDA generator is not restored (the run continues, but not bit for "
                      "bit)", file=sys.stderr)
            return
        cuda = cuda[device]
    torch.cuda.set_rng_state(cuda, device)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


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
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine shows {torch.cuda.device_count()} GPU(s) "
                        "(CUDA_VISIBLE_DEVICES renumbers them from 0)")
    return device


def _ranged(convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse `type` that converts a flag's text and checks its range; a bad value is argparse's
    one-line usage error naming the flag and `what` it must be."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text}: must be {what}")
        return value

    parse.__name__ = what
    return parse


# Ranges of numeric flags, declared where each flag is defined (`type=util.POSITIVE_INT`, ...).
POSITIVE_INT = _ranged(int, lambda v: v > 0, "a whole number > 0")
NON_NEGATIVE_INT = _ranged(int, lambda v: v >= 0, "a whole number >= 0")
POSITIVE = _ranged(float, lambda v: 0 < v < float("inf"), "a number > 0")
NON_NEGATIVE = _ranged(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
FRACTION = _ranged(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
PROBABILITY = _ranged(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
SHARE = _ranged(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
SEED = _ranged(int, lambda v: 0 <= v < 2**32, "a seed in 0..4294967295")
# a batch (batch norm needs two samples) or a class count
AT_LEAST_TWO = _ranged(int, lambda v: v >= 2, "a whole number >= 2")


def sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with the fused update kernel where torch has one (CPU and CUDA): one pass over each
    parameter instead of separate weight-decay, momentum and update passes (the same update)."""
    params = list(params)
    devices = {p.device.type for group in params for p in (group["params"] if isinstance(group, dict) else [group])}
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=devices <= {"cpu", "cuda"})


# Destinations of the flags declared with `process_only`, across every parser of the process.
PROCESS_ONLY: set[str] = set()


def process_only(action: argparse.Action) -> argparse.Action:
    """Declare the flag of `action` (what `add_argument` returns) as one that changes how a run is
    carried out (where it writes, how many workers, which device) but not its result, so that
    `run_identity` leaves it out. Returns `action`."""
    PROCESS_ONLY.add(action.dest)
    return action


# Flags naming files or folders: a run's identity holds them resolved, so `DATA/` and its absolute
# path are the same data.
PATH_FLAGS = ("data_folder", "list_folder", "intensity_csv", "model_path")


def run_identity(args: argparse.Namespace, exclude: set[str] = frozenset()) -> dict:
    """The settings that determine a run's result, as plain data: every value of `args` except the
    `process_only` flags and the names in `exclude` (values derived from such flags), with the
    paths of `PATH_FLAGS` resolved."""
    kept = {k: v for k, v in sorted(vars(args).items()) if k not in PROCESS_ONLY | set(exclude)}
    for name in PATH_FLAGS:
        if isinstance(kept.get(name), str) and kept[name] and kept[name].lower() != "none":
            kept[name] = str(Path(kept[name]).resolve())
    return json.loads(json.dumps(kept, default=str))


def add_amp_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--amp` and `--opt_level`, shared by the three entry scripts."""
    parser.add_argument("--amp", action="store_true", help="mixed precision with torch.amp")
    parser.add_argument("--opt_level", choices=sorted(AMP_DTYPES), default="O2",
                        help="with --amp: O1 = float16 autocast with a GradScaler (CUDA), O2 = bfloat16 autocast")


def grad_scaler(args: argparse.Namespace, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler of `--amp --opt_level O1` on CUDA (float16 needs it); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=args.amp and args.opt_level == "O1" and device.type == "cuda")


def autocast(device_type: str, amp: bool, opt_level: str) -> ContextManager:
    """`torch.autocast` with the dtype of `opt_level` when `amp`, else a no-op context."""
    return torch.autocast(device_type, dtype=AMP_DTYPES[opt_level]) if amp else nullcontext()


# ---------------------------------------------------------------------------------------------
# Process groups. One code path serves a CPU run, a single GPU and `torchrun`: without a process
# group every helper returns its input or does nothing, so callers never branch on the launch mode.

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def init_distributed_mode(args: argparse.Namespace) -> torch.device:
    """Join the process group when launched by ``torchrun``; return this process's device.

    Without ``WORLD_SIZE`` in the environment (a plain ``python`` launch) nothing is initialised and
    the device is ``pick_device(args.device)``. Under ``torchrun`` (which sets ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) the process joins an env://
    group: NCCL on ``cuda:LOCAL_RANK`` when ``args.device`` is ``auto`` (and CUDA is available) or
    ``cuda``, gloo on the CPU when it is ``cpu`` or CUDA is unavailable. Sets ``args.world_size``;
    a CUDA device becomes the current device in either launch.
    """
    args.world_size = 1
    if "WORLD_SIZE" not in os.environ:
        device = pick_device(args.device)
        if device.type == "cuda" and device.index is not None:
            # The current device, as under torchrun: `rng_state` saves its generator.
            torch.cuda.set_device(device)
        return device
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun")
    local = int(os.environ["LOCAL_RANK"])
    if args.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {args.device}: under torchrun every process uses cuda:LOCAL_RANK; "
                             "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        visible = torch.cuda.device_count()
        if local >= visible:
            raise UserError(f"LOCAL_RANK {local} needs a GPU, but this node shows {visible}: "
                                 "--nproc_per_node must not exceed the GPUs per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method="env://", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", init_method="env://")
    args.world_size = dist.get_world_size()
    return device


def destroy() -> None:
    """Leave the process group, if one was joined."""
    if is_distributed():
        dist.destroy_process_group()


def rank() -> int:
    """This process's global rank; 0 in a single process."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``); 0 in a single process."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, the only rank that writes checkpoints and logs."""
    return rank() == 0


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order; ``[obj]`` in one process.

    ``obj`` is plain data and tensors, what ``torch.load(weights_only=True)`` accepts (it travels
    through ``torch.save``).
    """
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj, weights_only=True)
    return gathered


def barrier() -> None:
    """Wait until every rank arrives; a no-op in one process."""
    if is_distributed():
        dist.barrier()


def rank_chunk(t: Tensor) -> Tensor:
    """This rank's contiguous share of ``t`` (world_size * m, ...): rows [rank * m, (rank + 1) * m).

    Concatenating every rank's chunk in rank order (as :func:`all_gather_cat` does) gives ``t``
    back. In a single process it is ``t``.
    """
    if not is_distributed():
        return t
    if t.shape[0] % world_size():
        raise ValueError(f"{t.shape[0]} rows do not split evenly over {world_size()} ranks")
    size = t.shape[0] // world_size()
    return t[rank() * size:(rank() + 1) * size]


@contextmanager
def stdout_on_main_process() -> Iterator[None]:
    """Within the block, ``print`` output of ranks other than 0 is discarded (stderr is kept)."""
    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
        yield


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`DistributedDataParallel` under a process group, else ``model`` itself.

    DDP broadcasts rank 0's parameters and buffers when it is built and averages the gradients
    over ranks in ``backward``; :func:`unwrap_model` gives the module back for checkpoints.
    """
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (its state dict has no ``module.`` prefix), else ``model``."""
    return model.module if isinstance(model, DistributedDataParallel) else model
