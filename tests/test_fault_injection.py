"""Fault injection: pre-training killed with SIGKILL at many points and resumed each time ends exactly
where an uninterrupted run ends (issue 15).

One uninterrupted reference run, then four kill sequences, each in its own fresh run folder: a
process is started, SIGKILLed at a chosen point, restarted (`--resume last.pth`; the newest
numbered checkpoint when there is no `last.pth` yet; the same fresh command when the folder holds
no checkpoint) and possibly killed again, until one process runs to the end. The kill points are
seeded: random delays scaled to the measured timeline of the reference run, and targeted kills
that poll the run folder and kill the moment a save is under way (`.last.pth.tmp.*`,
`.ckpt_epoch_N.pth.tmp.*`), right after a numbered checkpoint appears but before the log has its
line, right after `last.pth` is replaced but before the log line, and right after `run.json`
appears. After each final completion the checkpoints must equal the reference's tensor for tensor
(model, memory banks, optimizer, scaler, random states), the log and the TensorBoard scalars must
hold every epoch once with the reference's values (but the measured images/s), and the folder
must hold nothing but what an uninterrupted run leaves.

The sequences run once, in a module fixture, and their big checkpoints (alexnet: 237 MB each) are
compared and deleted as each sequence ends; the tests below check the recorded results.
Run with `pytest -s tests/test_fault_injection.py` to see where each kill landed.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import util
from helpers import pretrain_cli, run_args
from util import REPO_ROOT

pretrain = util.load_script("pre-train_CVSCL.py")

pytestmark = pytest.mark.slow  # a reference run and four sequences of killed and resumed runs

EPOCHS = 6
FLAGS = ("--epochs", str(EPOCHS), "--save_freq", "1", "--last_interval", "0", "--seed", "15")
# What an uninterrupted run leaves in its run folder.
FINAL_FILES = {"run.json", "log.jsonl", "last.pth", *(f"ckpt_epoch_{n}.pth" for n in range(1, EPOCHS + 1))}
# Metrics that differ between runs by nature: timing.
TIMING = {"images_per_s"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SCRIPT = str(REPO_ROOT / "pre-train_CVSCL.py")
KILL_SEED = 15
PARALLEL = 2


# ---------------------------------------------------------------------------------------------
# Processes and the run folder


class Process:
    """One pre-training process, in its own session (so that a kill reaches any child it has),
    its stdout and stderr in a file."""

    def __init__(self, argv: list[str], output: Path) -> None:
        self.output = output
        self.start, self.start_ns = time.monotonic(), time.time_ns()
        with output.open("w") as sink:
            self.popen = subprocess.Popen([sys.executable, SCRIPT, *argv], stdout=sink, stderr=subprocess.STDOUT,
                                          env=ENV, start_new_session=True)

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL its process group while the process lives (it leads the group)."""
        if self.running():
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait()

    def text(self) -> str:
        return self.output.read_text(errors="replace")


def entries(folder: Path) -> list[os.DirEntry]:
    try:
        return list(os.scandir(folder))
    except FileNotFoundError:
        return []


def mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def logged_epochs(run: Path) -> list[int]:
    try:
        text = (run / "log.jsonl").read_text()
    except FileNotFoundError:
        return []
    epochs = []
    for line in text.splitlines():
        try:
            epochs.append(json.loads(line)["epoch"])
        except (ValueError, KeyError):  # a line being written
            pass
    return epochs


def saved_epoch(path: Path) -> int | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]


def numbered_checkpoints(run: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[-1]) for p in run.glob("ckpt_epoch_*.pth"))


# ---------------------------------------------------------------------------------------------
# Kill points


@dataclass
class Timeline:
    """The reference run's timeline: seconds from start to the first epoch, seconds per epoch."""
    startup: float
    epoch: float

    def expected(self, first_epoch: int) -> float:
        return self.startup + max(EPOCHS - first_epoch + 1, 0) * self.epoch


@dataclass
class Kill:
    """Where to kill one process: after `fraction` of its expected run time, or as soon as
    `condition` (on the run folder, given the process and its first epoch) holds. Targeted kills
    aim at epoch `offset` after the process's first, and past the numbered checkpoints already
    there (`floor`)."""
    name: str
    fraction: float | None = None
    in_training: bool = False  # random kills: time counted from the start of training, not of the process
    offset: int = 0  # targeted kills: the epoch aimed at, counted from the process's first epoch
    floor: int = 1  # targeted kills: the lowest epoch to aim at, set as the process starts
    condition: Callable[[Path, Process, int], bool] | None = None

    def describe(self, first_epoch: int) -> str:
        return self.name.format(epoch=self.target_epoch(first_epoch))

    def target_epoch(self, first_epoch: int) -> int:
        return min(max(first_epoch + self.offset, self.floor), EPOCHS)


def random_kill(rng: random.Random, anywhere: bool = False) -> Kill:
    """At a seeded random time: `anywhere` in the process's expected run time (startup included),
    else into its training, timed from the moment its first progress bar appears."""
    fraction = round(rng.uniform(0.02, 0.9), 3)
    if anywhere:
        return Kill(f"random, at {fraction:.0%} of the expected run time", fraction=fraction)
    return Kill(f"random, at {fraction:.0%} of the expected training time", fraction=fraction, in_training=True)


def new_since(path: Path, process: Process) -> bool:
    stamp = mtime_ns(path)
    return stamp is not None and stamp >= process.start_ns


def inside_save(name: str, offset: int, min_bytes: int = 0) -> Kill:
    """Kill while `name` (last.pth or ckpt_epoch_N.pth, N = first epoch + offset) is being saved: its
    temporary exists and holds at least `min_bytes`. For last.pth, the save of epoch N (after
    ckpt_epoch_N.pth is written)."""
    kill = Kill(f"inside the save of {name} in epoch {{epoch}}" + (" (mid-write)" if min_bytes else ""),
                offset=offset)

    def condition(run: Path, process: Process, first_epoch: int) -> bool:
        epoch = kill.target_epoch(first_epoch)
        file = name.format(epoch=epoch)
        if file == "last.pth" and not new_since(run / f"ckpt_epoch_{epoch}.pth", process):
            return False
        prefix = f".{file}.tmp."
        for entry in entries(run):
            if entry.name.startswith(prefix):
                try:
                    return entry.stat().st_size >= min_bytes
                except FileNotFoundError:
                    return False
        return False

    kill.condition = condition
    return kill


def after_numbered_before_log(offset: int) -> Kill:
    """As soon as ckpt_epoch_N.pth is in place while the log has no line of N (last.pth and the
    TensorBoard writes come between)."""
    kill = Kill("after ckpt_epoch_{epoch}.pth appeared, before the log's line of epoch {epoch}", offset=offset)

    def condition(run: Path, process: Process, first_epoch: int) -> bool:
        epoch = kill.target_epoch(first_epoch)
        return new_since(run / f"ckpt_epoch_{epoch}.pth", process) and epoch not in logged_epochs(run)

    kill.condition = condition
    return kill


def after_last_before_log(offset: int) -> Kill:
    """The moment last.pth of epoch N has replaced the old one: its temporary, seen during the save
    after ckpt_epoch_N.pth, is gone. The log's line of N follows within a few milliseconds (the
    TensorBoard writes come between), too soon for polling beside a running process; so from the
    moment the temporary appears the process runs in steps of a fraction of a millisecond
    (SIGCONT, sleep, SIGSTOP), and the temporary is looked for while it stands still."""
    kill = Kill("right after last.pth of epoch {epoch} was replaced, before its log line", offset=offset)

    def condition(run: Path, process: Process, first_epoch: int) -> bool:
        epoch = kill.target_epoch(first_epoch)
        if not new_since(run / f"ckpt_epoch_{epoch}.pth", process):
            return False
        temporary = next((e.path for e in entries(run) if e.name.startswith(".last.pth.tmp.")), None)
        if temporary is None:
            return False
        deadline = time.monotonic() + 120
        while process.running() and time.monotonic() < deadline:
            os.kill(process.popen.pid, signal.SIGSTOP)
            if not os.path.exists(temporary):
                return True  # killed while stopped
            os.kill(process.popen.pid, signal.SIGCONT)
            time.sleep(0.0002)
        return False

    kill.condition = condition
    return kill


def after_claim() -> Kill:
    kill = Kill("right after run.json appeared (startup)")
    kill.condition = lambda run, process, first_epoch: new_since(run / "run.json", process)
    return kill


def kill_plans() -> dict[str, list[Kill]]:
    """Four seeded kill sequences, 13 kills: 7 at random times, 6 targeted."""
    rng = random.Random(KILL_SEED)
    return {
        "random": [random_kill(rng, anywhere=True), random_kill(rng), random_kill(rng)],
        "last-save": [inside_save("last.pth", offset=0), random_kill(rng), after_last_before_log(offset=EPOCHS)],
        "numbered-save": [inside_save("ckpt_epoch_{epoch}.pth", offset=rng.randint(1, 3), min_bytes=1 << 20),
                          random_kill(rng), after_numbered_before_log(offset=rng.randint(0, 2))],
        # the last kill inside a numbered checkpoint's first save: the final run starts without it
        "mixed": [after_claim(), random_kill(rng), random_kill(rng),
                  inside_save("ckpt_epoch_{epoch}.pth", offset=rng.randint(0, 1))],
    }


def landing(run: Path, process: Process) -> str:
    """Where a killed process was, from its output (the progress bar names the epoch under way)
    and the run folder."""
    names = {e.name for e in entries(run)}
    # this process's temporaries only: an earlier process's may still lie there
    temporaries = sorted(n for n in names if ".tmp." in n and new_since(run / n, process))
    started = [int(k) for k in re.findall(rf"epoch (\d+)/{EPOCHS}", process.text())]
    saving = f"inside the save of {temporaries[0][1:].split('.tmp.')[0]}" if temporaries else None
    if not started:
        where = saving or ("after run.json was written" if "run.json" in names and new_since(run / "run.json", process)
                           else "before the run folder was claimed")
        return f"startup, {where}"
    epoch = max(started)
    if saving:
        return f"epoch {epoch}, {saving}"
    if epoch in logged_epochs(run) and new_since(run / "log.jsonl", process):
        return f"epoch {epoch}, after its log line"
    if saved_epoch(run / "last.pth") == epoch:
        return f"epoch {epoch}, after last.pth, before the log line"
    if new_since(run / f"ckpt_epoch_{epoch}.pth", process):
        return f"epoch {epoch}, after ckpt_epoch_{epoch}.pth, before last.pth"
    return f"epoch {epoch}, training"


# ---------------------------------------------------------------------------------------------
# Comparison


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths at which two checkpoint values differ (tensors: dtype, shape and every element)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in (differences(a[k], b[k], f"{path}.{k}") if k in a and k in b else [f"{path}.{k}"])]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def checkpoint_differences(path: Path, reference: Path) -> list[str]:
    a = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    b = torch.load(reference, map_location="cpu", weights_only=True, mmap=True)
    found = []
    for key in ("model", "contrast", "optimizer", "scaler", "rng", "epoch", "format"):
        found += differences(a.get(key), b.get(key), key)
    found += differences({k: v for k, v in a["stats"].items() if k not in TIMING},
                         {k: v for k, v in b["stats"].items() if k not in TIMING}, "stats")
    return found


def tensorboard_scalars(tb_folder: Path) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """The scalar events of all event files, in file order: tag -> [(step, value)], and the number of
    files. A restart marker (`SummaryWriter(purge_step=S)` writes one) drops the earlier events at
    steps S and later, as TensorBoard does; events are otherwise kept as written, repeats included."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    files = sorted(tb_folder.glob("events.out.tfevents.*"))
    scalars: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        for event in EventFileLoader(str(file)).Load():
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                scalars = {tag: [(s, v) for s, v in events if s < event.step] for tag, events in scalars.items()}
            for value in event.summary.value:
                number = value.tensor.float_val[0] if value.HasField("tensor") else value.simple_value
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars, len(files)


# ---------------------------------------------------------------------------------------------
# The campaign


@dataclass
class KillRecord:
    sequence: str
    plan: str
    resumed_from: str
    landing: str
    killed: bool
    seconds: float


@dataclass
class SequenceResult:
    name: str
    kills: list[KillRecord] = field(default_factory=list)
    error: str | None = None
    checkpoint_differences: dict[str, list[str]] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)
    files: set[str] = field(default_factory=set)
    tensorboard: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    event_files: int = 0
    fresh_refused: str | None = None
    processes: int = 0
    fresh_restart_over_claimed_folder: bool = False


@dataclass
class Campaign:
    reference_log: list[dict]
    reference_seconds: float
    timeline: Timeline
    sequences: list[SequenceResult]
    seconds: float

    @property
    def kills(self) -> list[KillRecord]:
        return [k for s in self.sequences for k in s.kills]

    def table(self) -> str:
        rows = [(f"reference run {self.reference_seconds:.1f} s (startup {self.timeline.startup:.1f} s, "
                 f"{self.timeline.epoch:.2f} s/epoch); campaign {self.seconds:.0f} s")]
        rows += [f"  {k.sequence:>13} | {k.plan:<62} | from {k.resumed_from:<16} | "
                 f"{'killed' if k.killed else 'NOT killed'} at {k.seconds:5.1f} s: {k.landing}" for k in self.kills]
        rows += [f"  {s.name:>13}: {s.processes} processes, {s.event_files} TensorBoard event files"
                 + (f"; fresh start beside checkpoints: {s.fresh_refused}" if s.fresh_refused else "")
                 for s in self.sequences]
        return "\n".join(rows)


def run_folder(argv: list[str]) -> Path:
    return Path(pretrain.parse_option(argv).model_folder)


def reference_run(base: list[str], out: Path) -> tuple[Timeline, float]:
    """The uninterrupted run, with the times its numbered checkpoints appear."""
    run = run_folder(base)
    process = Process(base, out / "reference.out")
    seen: dict[int, float] = {}
    while process.running():
        for n in range(1, EPOCHS + 1):
            if n not in seen and (run / f"ckpt_epoch_{n}.pth").exists():
                seen[n] = time.monotonic() - process.start
        time.sleep(0.005)
    seconds = time.monotonic() - process.start
    assert process.popen.returncode == 0, process.text()[-3000:]
    assert set(seen) == set(range(1, EPOCHS + 1)), seen
    epoch = (seen[EPOCHS] - seen[1]) / (EPOCHS - 1)
    return Timeline(startup=seen[1] - epoch, epoch=epoch), seconds


def next_command(base: list[str], run: Path, result: SequenceResult) -> tuple[list[str], str]:
    """How a user continues: --resume last.pth; without it the newest numbered checkpoint (a fresh
    start is refused there, checked once); without checkpoints the same fresh command."""
    if (run / "last.pth").is_file():
        return [*base, "--resume", str(run / "last.pth")], "last.pth"
    numbered = numbered_checkpoints(run)
    if numbered:
        if result.fresh_refused is None:
            refused = pretrain_cli(*base)
            result.fresh_refused = f"rc {refused.returncode}: {refused.stderr.strip().splitlines()[-1:]}"
        newest = f"ckpt_epoch_{numbered[-1]}.pth"
        return [*base, "--resume", str(run / newest)], newest
    if (run / "run.json").is_file():
        result.fresh_restart_over_claimed_folder = True
        return base, "fresh (run.json)"
    return base, "fresh"


def first_epoch(resumed_from: str, run: Path) -> int:
    if resumed_from.startswith("fresh"):
        return 1
    return saved_epoch(run / resumed_from) + 1


def kill_sequence(name: str, kills: list[Kill], base: list[str], out: Path, timeline: Timeline,
                  reference: Path) -> SequenceResult:
    result = SequenceResult(name)
    run = run_folder(base)
    try:
        for step, kill in enumerate([*kills, None]):
            argv, resumed_from = next_command(base, run, result)
            first = first_epoch(resumed_from, run)
            if kill is not None:  # aim past the numbered checkpoints there, to catch a first save
                kill.floor = max(numbered_checkpoints(run), default=0) + 1
            process = Process(argv, out / f"{name}-{step}.out")
            result.processes += 1
            if kill is None:
                if process.popen.wait(timeout=600) != 0:
                    result.error = f"the final run failed:\n{process.text()[-3000:]}"
                    return result
                break
            if kill.fraction is not None:
                delay = kill.fraction * timeline.expected(first)
                if kill.in_training:
                    bar = f"epoch {first}/{EPOCHS}"
                    while process.running() and bar not in process.text():
                        time.sleep(0.01)
                    delay = kill.fraction * (timeline.expected(first) - timeline.startup)
                try:
                    process.popen.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    pass
            else:
                deadline = time.monotonic() + 300
                while process.running() and time.monotonic() < deadline and not kill.condition(run, process, first):
                    time.sleep(0.0002)
            killed = process.running()
            process.kill()
            seconds = time.monotonic() - process.start
            if not killed and process.popen.returncode != 0:
                result.error = f"a process to be killed failed by itself:\n{process.text()[-3000:]}"
                return result
            result.kills.append(KillRecord(name, kill.describe(first), resumed_from,
                                           landing(run, process) if killed else "it had finished", killed, seconds))
        for n in range(1, EPOCHS + 1):
            file = f"ckpt_epoch_{n}.pth"
            if (run / file).is_file():
                result.checkpoint_differences[file] = checkpoint_differences(run / file, reference / file)
        result.checkpoint_differences["last.pth"] = checkpoint_differences(run / "last.pth",
                                                                             reference / "last.pth")
        result.log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        result.files = {e.name for e in entries(run)}
        result.tensorboard, result.event_files = tensorboard_scalars(Path(pretrain.parse_option(base).tb_folder))
    finally:
        shutil.rmtree(run, ignore_errors=True)  # 1.6 GB of checkpoints
    return result


@pytest.fixture(scope="module")
def campaign(pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    began = time.monotonic()
    out = tmp_path_factory.mktemp("fault_injection")
    reference_base = run_args(pool, out / "reference", *FLAGS)
    reference = run_folder(reference_base)
    try:
        timeline, reference_seconds = reference_run(reference_base, out)
        reference_log = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
        # two sequences at a time: a process spends half its time importing torch and saving
        with ThreadPoolExecutor(max_workers=PARALLEL) as threads:
            sequences = list(threads.map(
                lambda plan: kill_sequence(plan[0], plan[1], run_args(pool, out / plan[0], *FLAGS), out, timeline,
                                           reference), kill_plans().items()))
    finally:
        shutil.rmtree(reference, ignore_errors=True)
    result = Campaign(reference_log, reference_seconds, timeline, sequences, time.monotonic() - began)
    print("\n" + result.table())
    return result


# ---------------------------------------------------------------------------------------------
# Tests


def test_kill_points_cover_startup_training_saves_and_logging(campaign: Campaign):
    table = campaign.table()
    assert not [s.error for s in campaign.sequences if s.error], table
    landed = [k.landing for k in campaign.kills if k.killed]
    assert len(landed) >= 10, table
    assert any("inside the save of last.pth" in k for k in landed), table
    assert any(re.search(r"inside the save of ckpt_epoch_\d+\.pth", k) for k in landed), table
    # between a numbered checkpoint and the log's line of its epoch
    assert any(re.search("inside the save of last.pth|before the log line|before last.pth", k) for k in landed), table
    assert any(k.startswith("startup") for k in landed), table
    assert any(s.fresh_restart_over_claimed_folder for s in campaign.sequences), table


def test_a_fresh_start_beside_checkpoints_is_refused_with_advice(campaign: Campaign):
    """With numbered checkpoints but no last.pth yet (killed in epoch 1 before last.pth was first
    written), the fresh command is refused, naming --resume; the sequence then resumes."""
    refused = [s.fresh_refused for s in campaign.sequences if s.fresh_refused]
    if not refused:
        pytest.skip("no kill left numbered checkpoints without last.pth\n" + campaign.table())
    for message in refused:
        assert message.startswith("rc 2") and "pass --resume" in message, message


def test_resumed_checkpoints_equal_the_uninterrupted_run(campaign: Campaign):
    for sequence in campaign.sequences:
        assert sequence.error is None, sequence.error
        assert set(sequence.checkpoint_differences) == {"last.pth", *(f"ckpt_epoch_{n}.pth"
                                                                      for n in range(1, EPOCHS + 1))}
        for file, found in sequence.checkpoint_differences.items():
            assert not found, f"{sequence.name}: {file} differs from the reference at {found[:10]}"


def test_resumed_log_equals_the_uninterrupted_run(campaign: Campaign):
    expected = [{k: v for k, v in line.items() if k not in TIMING} for line in campaign.reference_log]
    assert [line["epoch"] for line in expected] == list(range(1, EPOCHS + 1))
    for sequence in campaign.sequences:
        assert sequence.error is None, sequence.error
        assert [line["epoch"] for line in sequence.log] == list(range(1, EPOCHS + 1)), sequence.name
        assert all(TIMING <= set(line) for line in sequence.log), sequence.name
        assert [{k: v for k, v in line.items() if k not in TIMING} for line in sequence.log] == expected, \
            sequence.name


def test_tensorboard_holds_every_epoch_once(campaign: Campaign):
    """The event files (one per process that got as far as its first save) hold each scalar of
    each epoch once, with the logged value (as float32)."""
    missing = {}
    for sequence in campaign.sequences:
        assert sequence.error is None, sequence.error
        assert 1 <= sequence.event_files <= sequence.processes, sequence.name  # one per process, or none
        logged = {line["epoch"]: line for line in sequence.log}
        for tag in [*pretrain.STAT_NAMES, "images_per_s", "learning_rate"]:
            events = sequence.tensorboard.get(tag, [])
            steps = sorted(step for step, _ in events)
            assert len(set(steps)) == len(steps) and set(steps) <= set(logged), \
                f"{sequence.name}: {tag} at steps {steps}"
            if set(steps) != set(logged):
                missing.setdefault(sequence.name, sorted(set(logged) - set(steps)))
            if tag in TIMING:
                continue
            for step, value in events:
                assert value == torch.tensor(logged[step][tag], dtype=torch.float32).item(), \
                    f"{sequence.name}: {tag} of epoch {step}"
    assert not missing, f"epochs missing from TensorBoard: {missing}\n{campaign.table()}"


def test_no_stray_files(campaign: Campaign):
    strays = {s.name: sorted(s.files - FINAL_FILES) for s in campaign.sequences if s.files != FINAL_FILES}
    missing = {s.name: sorted(FINAL_FILES - s.files) for s in campaign.sequences if FINAL_FILES - s.files}
    assert not missing, missing
    assert not strays, strays
