"""GPU benchmark of pre-training and LOSO (a benchmark, not a test; `scripts/bench/gpu_check.sh` runs it).

    python scripts/bench/bench_gpu.py --out out/gpu_check
    python scripts/bench/bench_gpu.py --models alexnet --precisions O2 --steps 4 --skip loso,syncs   # a quick look

Writes `bench_gpu.md` and `bench_gpu.json` to `--out`. On cuda:0, in order of priority (each part is
skipped, with a note, once `--budget_s` seconds have passed):

- throughput: images/s of pre-training's `train` (decoded store, augmentation on the device, both
  encoders, the two-bank memory, fused SGD) at `--batch_size` and `--image_size`, for every model
  and precision (fp32; O1 = float16 autocast with a GradScaler; O2 = bfloat16 autocast), bf16
  first; "compute only" serves one augmented batch again and again (no data cost, as
  scripts/bench/bench_pretrain.py); peak GPU memory (`torch.cuda.max_memory_allocated`) of the full step;
- FLOPs per image counted as scripts/bench/bench_pretrain.py counts them (forward and backward of both
  encoders, `torch.utils.flop_counter`), and the achieved share of the GPU's dense peak in the
  precision the kernels run in (`PEAKS`; an unknown GPU gets no share, and a note);
- data path: `ImageStore.batch` and the augmentation alone (the model a no-op), pairs/s, against
  each model's compute-only rate;
- host synchronisations in the training step: synchronising CUDA calls counted with
  `torch.cuda.set_sync_debug_mode("warn")` over epochs of two lengths, split into per-step and
  per-epoch counts, by source line;
- LOSO: frozen and fine-tuned `fine-tune_CVSCL.py` over `--loso_subjects` synthetic subjects,
  seconds per subject.

Without CUDA only the FLOP counts are written (`gpu` null in the JSON).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import dataset  # noqa: E402
import util  # noqa: E402
from models import build_model  # noqa: E402
from scripts.bench import bench_pretrain  # noqa: E402

pretrain = util.load_script("pre-train_CVSCL.py")
finetune = util.load_script("fine-tune_CVSCL.py")

PRECISIONS = {"fp32": [], "O1": ["--amp", "--opt_level", "O1"], "O2": ["--amp", "--opt_level", "O2"]}
# Dense peak TFLOP/s (no structured sparsity) by kernel precision, from NVIDIA's datasheets, which
# quote tensor-core TF32/BF16/FP16 with 2:4 sparsity: those figures are halved here. A device name
# is matched against the patterns in order, so each variant comes before its family's pattern.
PEAK_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
PEAKS: tuple[tuple[str, str, float, float | None, float | None, float], ...] = (
    # name pattern, source, then the peaks in PEAK_PRECISIONS order (None: no such tensor cores)
    (r"H200 NVL", "NVIDIA H200 datasheet, H200 NVL column", 60.0, 417.5, 835.5, 835.5),
    (r"H200", "NVIDIA H200 datasheet, H200 SXM column", 67.0, 494.5, 989.5, 989.5),
    (r"H100 NVL", "NVIDIA H100 datasheet, H100 NVL column", 60.0, 417.5, 835.5, 835.5),
    (r"H100 PCIe", "NVIDIA H100 datasheet, H100 PCIe column", 51.0, 378.0, 756.5, 756.5),
    (r"H100", "NVIDIA H100 datasheet, H100 SXM column", 67.0, 494.5, 989.5, 989.5),
    (r"A100", "NVIDIA A100 datasheet", 19.5, 156.0, 312.0, 312.0),
    (r"L40S", "NVIDIA L40S datasheet", 91.6, 183.0, 362.05, 362.05),
    (r"\bL4\b", "NVIDIA L4 datasheet", 30.3, 60.0, 121.0, 121.0),
    (r"\bA10\b", "NVIDIA A10 datasheet", 31.2, 62.5, 125.0, 125.0),
    (r"V100", "NVIDIA V100 datasheet, SXM2 column", 15.7, None, None, 125.0),
)
TARGETS = {"bf16_fraction": ("resnet50v1", "O2", 0.25), "data_over_compute": 2.0, "syncs_per_step": 0}
SYNC_EPOCH_STEPS = (2, 4)


# ---------------------------------------------------------------------------------------------
# Device, versions, peaks, FLOPs


def device_info() -> dict:
    """Versions and the GPU (null without CUDA), with the settings that decide fp32 kernels."""
    info = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "gpu": None}
    if not torch.cuda.is_available():
        return info
    props = torch.cuda.get_device_properties(0)
    driver = None
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                               capture_output=True, text=True)
        driver = query.stdout.strip() or None
    info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                   "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
                   "driver": driver, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
                   "cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    return info


def version_lines(info: dict) -> list[str]:
    """`info` (from `device_info`) as lines for a log: versions, then one line per GPU fact."""
    lines = [f"torch {info['torch']}, built for CUDA {info['cuda_build']}, cuDNN {info['cudnn']}"]
    gpu = info["gpu"]
    if gpu:
        lines += [f"GPU: {gpu['name']} ({gpu['memory_gib']} GiB, compute capability {gpu['capability']}), "
                  f"{gpu['count']} visible",
                  f"driver {gpu['driver'] or 'unknown (no nvidia-smi)'}, NCCL {gpu['nccl']}, "
                  f"TF32 allowed: cuDNN {gpu['cudnn_tf32']}, matmul {gpu['matmul_tf32']}"]
    return lines


def peak_for(name: str) -> tuple[str, dict[str, float | None]] | None:
    """(source, dense peak TFLOP/s by kernel precision) of the GPU called `name`, or None."""
    for pattern, source, *peaks in PEAKS:
        if re.search(pattern, name):
            return source, dict(zip(PEAK_PRECISIONS, peaks))
    return None


def kernel_precision(precision: str) -> str:
    """The precision the convolutions run in: O1 float16, O2 bfloat16, and fp32 as TF32 while
    cuDNN may use it (torch's default), else true fp32."""
    return {"O1": "fp16", "O2": "bf16"}.get(precision, "tf32" if torch.backends.cudnn.allow_tf32 else "fp32")


def gflop_per_image(name: str, image_size: int) -> float:
    """bench_pretrain's count (forward + backward of both encoders) on the meta device: shapes only,
    no memory and no arithmetic, so it is the same count on a machine without a GPU."""
    with torch.device("meta"):
        return bench_pretrain.step_gflop_per_image(build_model(name, 128), image_size)


# ---------------------------------------------------------------------------------------------
# Pre-training throughput, the data path, host synchronisations


class CyclicStore:
    """`n` pairs served by a smaller decoded store (index modulo its size), so that timed epochs
    are long without decoding more images. Its `batch` is the store's."""

    def __init__(self, store: dataset.ImageStore, n: int) -> None:
        self.store, self.n = store, n

    def __len__(self) -> int:
        return self.n

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """RGB (B,3,S,S) and depth (B,1,S,S) of `index` (B,) modulo the store's size, as the store's batch."""
        return self.store.batch(index % len(self.store), device)


def cuda_seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of `fn()`, from an idle GPU until all the work it queued has finished."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def quiet_tqdm(*args, **kwargs) -> tqdm:
    """A disabled progress bar: a bar per timed epoch would fill the check's log."""
    return tqdm(*args, **{**kwargs, "disable": True})


class Trainer:
    """One model and precision set up as pre-training sets them up: flags, encoders, memory of
    `bank_rows` rows, loss, fused SGD and the GradScaler rule of `pretrain.run`."""

    def __init__(self, name: str, precision: str, data: Path, opts: argparse.Namespace) -> None:
        self.args = pretrain.parse_option([
            "--data_folder", str(data), "--model_path", "unused", "--tb_path", "unused", "--model", name,
            "--batch_size", str(opts.batch_size), "--image_size", str(opts.image_size), "--epochs", "1",
            "--print_freq", "1000000", "--device", "cuda", *PRECISIONS[precision]])
        self.device = util.pick_device("cuda")
        util.set_seed(0)
        self.model, self.contrast, self.criterion = pretrain.set_model(self.args, opts.bank_rows, self.device)
        self.optimizer = pretrain.set_optimizer(self.args, self.model)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.args.amp and self.args.opt_level == "O1")
        self.augment = dataset.augment_from_args(self.args, train=True)

    def epoch(self, store, transform=None) -> dict:
        """One `pretrain.train` epoch over `store` (with the pre-training augmentation by default)."""
        return pretrain.train(1, store, transform or self.augment, self.model, self.contrast, self.criterion,
                              self.optimizer, self.scaler, self.args, self.device)


def throughput(name: str, precision: str, store: dataset.ImageStore, data: Path, opts: argparse.Namespace,
               gflop: float, peaks: dict[str, float | None] | None) -> dict:
    """Full-step and compute-only images/s, peak memory, achieved TFLOP/s and share of the peak."""
    trainer = Trainer(name, precision, data, opts)
    n = opts.batch_size * opts.steps
    x = trainer.augment(*store.batch(torch.arange(opts.batch_size), trainer.device))
    trainer.epoch(CyclicStore(store, opts.batch_size * opts.warmup))  # cuDNN autotuning, allocator warm-up
    torch.cuda.reset_peak_memory_stats()
    full = n / cuda_seconds(lambda: trainer.epoch(CyclicStore(store, n)))
    peak_bytes = torch.cuda.max_memory_allocated()
    preloaded = bench_pretrain.PreloadedStore(x, n)
    compute = n / cuda_seconds(lambda: trainer.epoch(preloaded, bench_pretrain.concat_views))
    row = {"model": name, "precision": precision, "gflop_per_image": gflop, "full_step": full, "compute_only": compute,
           "peak_memory_gib": peak_bytes / 2**30, "achieved_tflops": full * gflop / 1e3,
           "kernel_precision": kernel_precision(precision)}
    peak = peaks.get(row["kernel_precision"]) if peaks else None
    row["peak_tflops"] = peak
    row["fraction_of_peak"] = row["achieved_tflops"] / peak if peak else None
    if precision == "fp32" and peaks and peaks.get("fp32"):
        row["fraction_of_fp32_peak"] = row["achieved_tflops"] / peaks["fp32"]
    return row


def data_path_rate(store: dataset.ImageStore, data: Path, opts: argparse.Namespace) -> float:
    """Pairs/s of `store.batch` and the pre-training augmentation alone, the batches a timed epoch
    draws (the model replaced by a no-op)."""
    args = pretrain.parse_option(["--data_folder", str(data), "--model_path", "unused", "--tb_path", "unused",
                                  "--image_size", str(opts.image_size)])
    augment, device = dataset.augment_from_args(args, train=True), util.pick_device("cuda")
    cyclic = CyclicStore(store, opts.batch_size * opts.steps)
    batches = list(dataset.iterate_batches(len(cyclic), opts.batch_size, True, True, torch.Generator().manual_seed(0)))

    def run() -> None:
        for index in batches:
            augment(*cyclic.batch(index, device))

    run()
    return len(batches) * opts.batch_size / cuda_seconds(run)


def count_syncs(fn: Callable[[], object]) -> Counter:
    """Synchronising CUDA calls made by `fn()`, by `file:line` of the Python code that made them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counts: Counter = Counter()
    for warning in caught:
        if "synchroniz" in str(warning.message):
            path = Path(warning.filename)
            counts[f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{warning.lineno}"] += 1
    return counts


def host_syncs(name: str, precision: str, store: dataset.ImageStore, data: Path, opts: argparse.Namespace) -> dict:
    """Synchronising calls of `pretrain.train` per step and per epoch, from two epoch lengths
    (after a warm-up epoch): a line's count c(s) over s steps is per_step * s + per_epoch."""
    trainer = Trainer(name, precision, data, opts)
    trainer.epoch(CyclicStore(store, opts.batch_size * opts.warmup))
    short, long = (count_syncs(lambda: trainer.epoch(CyclicStore(store, opts.batch_size * length)))
                   for length in SYNC_EPOCH_STEPS)
    steps = SYNC_EPOCH_STEPS[1] - SYNC_EPOCH_STEPS[0]
    lines = {}
    for line in sorted(set(short) | set(long)):
        per_step = (long[line] - short[line]) / steps
        lines[line] = {"per_step": per_step, "per_epoch": short[line] - per_step * SYNC_EPOCH_STEPS[0]}
    return {"model": name, "precision": precision, "per_step": sum(v["per_step"] for v in lines.values()),
            "per_epoch": sum(v["per_epoch"] for v in lines.values()), "by_line": lines}


# ---------------------------------------------------------------------------------------------
# Synthetic data and LOSO


def make_synthetic(out: Path, *flags: str) -> Path:
    """A synthetic dataset written by scripts/data/make_synthetic_casme3.py (its CLI is the stable entry)."""
    subprocess.run([sys.executable, str(REPO / "scripts" / "data" / "make_synthetic_casme3.py"), "--out", str(out), *flags],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def loso_seconds(work: Path, out: Path, opts: argparse.Namespace, left: Callable[[], float]) -> dict:
    """Seconds per subject of frozen and fine-tuned LOSO on cuda (random alexnet, the script's
    defaults but `--loso_epochs` and `--loso_image_size`), after an untimed one-subject warm-up."""
    data = make_synthetic(work / "loso_data", "--subjects", str(opts.loso_subjects), "--seed", "0")
    first = (data / "data" / "v_rgb" / "subName.txt").read_text().split()[0]
    base = ["--data_folder", str(data), "--model_path", "none", "--model", "alexnet", "--device", "cuda",
            "--image_size", str(opts.loso_image_size), "--epochs", str(opts.loso_epochs), "--num_workers", "8",
            "--no_progress", "--save_path", str(work / "loso_runs")]
    result: dict = {"subjects": opts.loso_subjects, "epochs": opts.loso_epochs, "image_size": opts.loso_image_size}
    with (out / "loso_log.txt").open("w") as log, contextlib.redirect_stdout(log):
        finetune.main([*base, "--freeze_encoder", "--run_name", "warm_up", "--epochs", "1", "--subjects", first])
        for mode, flags in (("frozen", ["--freeze_encoder"]), ("fine_tuned", [])):
            if left() <= 0:
                result[mode] = None
                continue
            start = time.perf_counter()
            metrics = finetune.main([*base, *flags, "--run_name", mode])
            seconds = time.perf_counter() - start
            result[mode] = {"seconds": seconds, "seconds_per_subject": seconds / opts.loso_subjects,
                            "uar": metrics.get("uar")}
    return result


# ---------------------------------------------------------------------------------------------
# Report


def targets(results: dict) -> dict:
    """Each target of docs/gpu.md with its measured value and whether it is met (None: not measured)."""
    model, precision, share = TARGETS["bf16_fraction"]
    rows = {(r["model"], r["precision"]): r for r in results["throughput"]}
    bf16 = rows.get((model, precision), {}).get("fraction_of_peak")
    ratios = [r["data_over_compute"] for r in results["throughput"] if r.get("data_over_compute")]
    syncs = [s["per_step"] for s in results["host_syncs"]]
    return {
        f"{model} {precision} >= {share} of the dense bf16 peak": {"value": bf16, "met": None if bf16 is None
                                                                    else bf16 >= share},
        f"data path >= {TARGETS['data_over_compute']}x each model's compute-only rate":
            {"value": min(ratios) if ratios else None,
             "met": None if not ratios else min(ratios) >= TARGETS["data_over_compute"]},
        "no host synchronisation per training step":
            {"value": max(syncs) if syncs else None,
             "met": None if not syncs else max(syncs) <= TARGETS["syncs_per_step"]},
    }


def _f(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    """The report as markdown: set-up, the throughput table, targets, syncs, LOSO, notes."""
    info, gpu = results["device"], results["device"]["gpu"]
    lines = ["# GPU benchmark (scripts/bench/bench_gpu.py)", ""]
    if gpu:
        lines.append(f"{gpu['name']} ({gpu['memory_gib']} GiB, {gpu['count']} visible), driver {gpu['driver']}, "
                     f"torch {info['torch']}, CUDA {info['cuda_build']}, cuDNN {info['cudnn']}, NCCL {gpu['nccl']}; "
                     f"batch {results['batch_size']}, {results['image_size']} px, {results['steps']} timed steps, "
                     f"banks of {results['bank_rows']} rows. Peaks: {results['peak_source'] or 'unknown GPU'}.")
    else:
        lines.append(f"No CUDA device (torch {info['torch']}, built for CUDA {info['cuda_build']}): FLOP counts only.")
    lines += ["", "| model | precision | GFLOP/image | full step img/s | compute only img/s | data/compute | "
              "peak memory GiB | achieved TFLOP/s | dense peak TFLOP/s | share of peak |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    rows = results["throughput"] or [{"model": m, "gflop_per_image": g} for m, g in results["gflop_per_image"].items()]
    for r in rows:
        peak = f"{_f(r.get('peak_tflops'))} ({r['kernel_precision']})" if r.get("peak_tflops") else ""
        lines.append(f"| {r['model']} | {r.get('precision', '')} | {_f(r['gflop_per_image'], 2)} | "
                     f"{_f(r.get('full_step'))} | {_f(r.get('compute_only'))} | {_f(r.get('data_over_compute'), 2)} | "
                     f"{_f(r.get('peak_memory_gib'), 2)} | {_f(r.get('achieved_tflops'))} | {peak} | "
                     f"{_f(r.get('fraction_of_peak'), 3)} |")
    if results.get("data_path"):
        lines += ["", f"Data path alone (store.batch + augmentation, model a no-op): "
                      f"{results['data_path']:.0f} pairs/s."]
    if results["targets"]:
        lines += ["", "## Targets", ""]
        lines += [f"- {name}: {_f(t['value'], 3) or 'not measured'} "
                  f"({'met' if t['met'] else 'not met' if t['met'] is not None else 'no verdict'})"
                  for name, t in results["targets"].items()]
    for sync in results["host_syncs"]:
        lines += ["", f"## Host synchronisations, {sync['model']} {sync['precision']}: {sync['per_step']:g} "
                      f"per step, {sync['per_epoch']:g} per epoch", ""]
        lines += [f"- `{line}`: {v['per_step']:g} per step, {v['per_epoch']:g} per epoch"
                  for line, v in sync["by_line"].items()]
    loso = results.get("loso")
    if loso:
        lines += ["", f"## LOSO ({loso['subjects']} synthetic subjects, random alexnet, {loso['image_size']} px, "
                      f"{loso['epochs']} epochs)", ""]
        for mode in ("frozen", "fine_tuned"):
            timing = loso[mode]
            said = (f"{timing['seconds_per_subject']:.2f} s per subject ({timing['seconds']:.1f} s in all)"
                    if timing else "skipped")
            lines.append(f"- {mode.replace('_', '-')}: {said}")
    if results["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: Path) -> None:
    """bench_gpu.json and bench_gpu.md in `out`, rows in model and precision order, targets judged."""
    models = list(results["gflop_per_image"])
    results["throughput"].sort(key=lambda r: (models.index(r["model"]), list(PRECISIONS).index(r["precision"])))
    if results["device"]["gpu"]:
        results["targets"] = targets(results)
    util.atomic_write_json(out / "bench_gpu.json", results)
    util.atomic_write_text(out / "bench_gpu.md", markdown(results))


def measure(results: dict, opts: argparse.Namespace, models: list[str], precisions: list[str], skip: set[str],
            left: Callable[[], float]) -> None:
    """Run the parts on cuda in priority order, adding to `results` and rewriting the report after
    each, so that a run stopped from outside keeps what it finished. Order: the data path, every
    model in the first precision (the bf16 target's), host synchronisations, LOSO, then every
    model in the other precisions."""
    notes = results["notes"]
    found = peak_for(results["device"]["gpu"]["name"])
    if found:
        results["peak_source"] = found[0]
    else:
        notes.append(f"{results['device']['gpu']['name']} is not in the peak table (bench_gpu.PEAKS): shares of "
                     "the peak omitted")
    if "fp32" in precisions and results["device"]["gpu"]["cudnn_tf32"]:
        notes.append("fp32 convolutions run as TF32 (cuDNN's default), so the fp32 rows' share is of the TF32 "
                     "peak; fraction_of_fp32_peak in the JSON is the share of the plain fp32 peak")
    pretrain.tqdm = quiet_tqdm
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        load_size = round(opts.image_size * 8 / 7)
        # One batch of distinct pairs (4 subjects), decoded at the load size: CyclicStore repeats them.
        data = make_synthetic(work / "pool", "--subjects", "4", "--samples_per_subject", "2",
                              "--pool_per_subject", str(-(-opts.batch_size // 4)), "--pool_only_subjects", "0",
                              "--image_size", str(load_size))
        store = dataset.ImageStore(dataset.load_pool(dataset.find_list_folder(data), data), load_size, workers=8,
                                   progress=False)

        def data_part() -> str:
            results["data_path"] = data_path_rate(store, data, opts)
            return f"data path: {results['data_path']:.0f} pairs/s"

        def throughput_part(name: str, precision: str) -> str:
            row = throughput(name, precision, store, data, opts, results["gflop_per_image"][name],
                             found[1] if found else None)
            if results["data_path"]:
                row["data_over_compute"] = results["data_path"] / row["compute_only"]
            results["throughput"].append(row)
            torch.cuda.empty_cache()  # the next model starts from an empty cache, not this one's blocks
            return (f"{name} {precision}: {row['full_step']:.0f} img/s full step, {row['compute_only']:.0f} compute "
                    f"only, {row['peak_memory_gib']:.1f} GiB, share of peak {_f(row['fraction_of_peak'], 3) or 'n/a'}")

        def syncs_part(precision: str) -> str:
            results["host_syncs"].append(host_syncs(models[0], precision, store, data, opts))
            return f"host syncs {models[0]} {precision}: {results['host_syncs'][-1]['per_step']:g} per step"

        def loso_part() -> str:
            results["loso"] = loso_seconds(work, opts.out, opts, left)
            return f"LOSO: {json.dumps({k: v for k, v in results['loso'].items() if isinstance(v, dict)})}"

        first, rest = precisions[:1], precisions[1:]
        parts = [("data", "data path", data_part),
                 *[("throughput", f"throughput {m} {p}", lambda m=m, p=p: throughput_part(m, p))
                   for p in first for m in models],
                 *[("syncs", f"host synchronisations {p}", lambda p=p: syncs_part(p)) for p in precisions],
                 ("loso", "LOSO", loso_part),
                 *[("throughput", f"throughput {m} {p}", lambda m=m, p=p: throughput_part(m, p))
                   for p in rest for m in models]]
        for kind, title, part in parts:
            if kind in skip:
                continue
            if left() <= 0:
                notes.append(f"{title}: skipped, the time budget (--budget_s) was spent")
            else:
                print(part(), flush=True)
            write_report(results, opts.out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "gpu_check", help="folder for bench_gpu.md/.json")
    parser.add_argument("--models", default="alexnet,resnet18v1,resnet50v1",
                        help="comma-separated; host synchronisations are counted on the first")
    parser.add_argument("--precisions", default="O2,fp32,O1",
                        help="comma-separated fp32, O1, O2; the first is measured before the others")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per throughput measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--bank_rows", type=int, default=16384, help="rows of each memory bank")
    parser.add_argument("--loso_subjects", type=int, default=10)
    parser.add_argument("--loso_epochs", type=int, default=finetune.DEFAULTS.epochs)
    parser.add_argument("--loso_image_size", type=int, default=224)
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: throughput, data, syncs, loso")
    parser.add_argument("--budget_s", type=float, default=300,
                        help="no part starts after this many seconds (a started part finishes)")
    parser.add_argument("--versions", action="store_true", help="print the versions and the GPU, and stop")
    opts = parser.parse_args(argv)
    if opts.versions:
        print("\n".join(version_lines(device_info())))
        return 0
    started = time.monotonic()
    opts.out.mkdir(parents=True, exist_ok=True)
    models = [m for m in opts.models.split(",") if m]
    precisions = [p for p in opts.precisions.split(",") if p]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or not models or not precisions:
        parser.error(f"--models and --precisions ({', '.join(PRECISIONS)}) must name something; unknown: {unknown}")
    info = device_info()
    results: dict = {"device": info, "batch_size": opts.batch_size, "image_size": opts.image_size,
                     "steps": opts.steps, "bank_rows": opts.bank_rows, "peak_source": None,
                     "gflop_per_image": {m: gflop_per_image(m, opts.image_size) for m in models},
                     "throughput": [], "data_path": None, "host_syncs": [], "loso": None, "targets": {}, "notes": []}
    if info["gpu"] is None:
        results["notes"].append("no CUDA device: nothing measured")
    else:
        measure(results, opts, models, precisions, {p for p in opts.skip.split(",") if p},
                lambda: opts.budget_s - (time.monotonic() - started))
    results["seconds"] = time.monotonic() - started
    write_report(results, opts.out)
    print(f"wrote {opts.out / 'bench_gpu.md'} and {opts.out / 'bench_gpu.json'}"
          + ("" if info["gpu"] else " (FLOP counts only)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
