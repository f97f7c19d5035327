"""Run folders, shards and run names of the evaluations.

`<save_path>/<run name>/` holds run.json (the run record: settings, units, seeds), one file per
finished unit (`units/seed<S>/<unit>.json`, written atomically, so re-running skips it and several
processes can share the folder), then predictions.csv, results.json, confusion.png, log.txt, the
TensorBoard files (tb/) and saved models. `--shard I/N` runs every N-th unit of the run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import NamedTuple, Sequence, TypeVar

import torch
from tqdm import tqdm

import util

# (rank, world size, local rank) variables of a launcher, tried in order by `--shard auto`.
SHARD_ENVIRONMENTS = (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
# What an evaluation writes into its run folder (what the run record says it owns).
RUN_OWNS = ("units", "predictions.csv", "results.json", "confusion.png", "log.txt", "tb", "models")
T = TypeVar("T")


class Shard(NamedTuple):
    """Shard `index` of `count` (0-based). `local_rank` is the launcher's rank on this node, known
    under `--shard auto` only."""
    index: int
    count: int
    local_rank: int | None = None


def parse_shard(text: str) -> Shard | None:
    """`--shard`: '' -> None, 'I/N' -> Shard(I, N), 'auto' -> the shard of the first launcher of
    `SHARD_ENVIRONMENTS` found in the environment."""
    if not text:
        return None
    local = None
    if text == "auto":
        found = [names for names in SHARD_ENVIRONMENTS if names[0] in os.environ and names[1] in os.environ]
        if not found:
            raise util.UserError("--shard auto: neither RANK/WORLD_SIZE (torchrun) nor SLURM_PROCID/SLURM_NTASKS "
                                 "(srun) is set")
        rank, size, local_name = found[0]
        text, local = f"{os.environ[rank]}/{os.environ[size]}", int(os.environ.get(local_name, 0))
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or int(match[1]) >= int(match[2]):
        raise util.UserError(f"--shard {text}: expected I/N with 0 <= I < N (0-based), or auto")
    return Shard(int(match[1]), int(match[2]), local)


def shard_of(items: Sequence[T], shard: Shard | None) -> list[T]:
    """The items of `shard`: items[index], items[index + count], ...; all of them without one."""
    if shard is None:
        return list(items)
    return list(items[shard.index::shard.count])


def eval_device(args: argparse.Namespace) -> torch.device:
    """The device `--device` names; under `--shard auto`, with `--device auto` or `cuda` and CUDA
    available, cuda:<local rank> modulo the visible GPUs (so a task srun binds to one GPU uses cuda:0)."""
    if args.shard is not None and args.shard.local_rank is not None and args.device in ("auto", "cuda") \
            and torch.cuda.is_available():
        return torch.device("cuda", args.shard.local_rank % torch.cuda.device_count())
    return util.pick_device(args.device)


def default_run_name(args: argparse.Namespace, protocol: str) -> str:
    """`<protocol>_<checkpoint>_<model>_layer<L>_<frozen|ft<mult>>[_aug][_att][_view<view>]_<loss>_lr<lr>
    _ep<E>_seed<S>[x<N>]` (without the line break); the view appears unless it is RGB_D."""
    if args.model_path.lower() == "none":
        source = "random"
    else:
        path = Path(args.model_path)
        source = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    mode = (("frozen" if args.freeze_encoder else f"ft{args.encoder_lr_mult:g}") + ("_aug" if args.augment else "")
            + ("_att" if args.attention == "att" else "") + ("" if args.view == "RGB_D" else f"_view{args.view}"))
    name = (f"{protocol}_{source}_{args.model}_layer{args.layer}_{mode}_{args.lossfunction}"
            f"_lr{args.learning_rate:g}_ep{args.epochs}_seed{args.seed}")
    return name + (f"x{args.seeds}" if args.seeds > 1 else "")


def result_config(args: argparse.Namespace) -> dict:
    """The settings that determine each unit's result (plain data): every value but the flags
    declared `util.process_only` and the values derived from them (`seed_list`: each unit is
    trained and stored per seed; `prefixes`: how list paths are found, not which images they are)."""
    return util.run_identity(args, exclude={"seed_list", "prefixes"})


class RunFolder:
    """`<save_path>/<run name>/` and its run record."""

    def __init__(self, args: argparse.Namespace, protocol: str) -> None:
        self.root = Path(args.save_path) / (args.run_name or default_run_name(args, protocol))

    def claim(self, tool: str, settings: dict, details: dict) -> util.RunRecord:
        """The run record, checked (a folder of another tool or of other settings is refused in one
        line) and saved; a folder of the same settings keeps its finished units."""
        record = util.claim_folder(self.root, tool, settings, RUN_OWNS, overwrite=None, details=details)
        record.start()
        return record

    def record(self) -> util.RunRecord:
        """The saved record; a `UserError` when the folder has none."""
        record = util.read_record(self.root)
        if record is None:
            raise util.UserError(f"{self.root / util.RECORD_FILE}: no run here (run without --aggregate_only first)")
        return record

    def tb_folder(self, tb_path: str | None) -> Path:
        """`<run>/tb`, or with `--tb_path` a folder there named after the run and its folder (two
        runs of one name in two save paths never share it)."""
        if tb_path is None:
            return self.root / "tb"
        return Path(tb_path) / f"{self.root.name}_{util.folder_digest(self.root)}"

    def unit_path(self, seed: int, unit: str) -> Path:
        return self.root / "units" / f"seed{seed}" / f"{unit}.json"

    def is_done(self, seed: int, unit: str) -> bool:
        return self.unit_path(seed, unit).is_file()

    def save_unit(self, record: dict) -> None:
        util.atomic_write_json(self.unit_path(record["seed"], record["unit"]), record)

    def load_units(self) -> list[dict]:
        """Every finished unit record, ordered by seed then unit file name."""
        records = []
        for path in sorted((self.root / "units").glob("seed*/*.json")):
            record = util.read_json(path, "unit result")
            if not isinstance(record, dict) or not {"seed", "unit", "keys", "predictions"} <= set(record):
                raise util.UserError(f"{path}: damaged unit result; delete it to redo the unit")
            records.append(record)
        return records


class Log:
    """Print a line (above any progress bar) and append it to `<run>/log.txt`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", buffering=1)

    def __call__(self, message: str) -> None:
        tqdm.write(message)
        self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def close(self) -> None:
        self.file.close()


def args_record(args: argparse.Namespace) -> dict:
    """Every flag's value as plain data (what results.json shows)."""
    return json.loads(json.dumps(vars(args), default=str))
