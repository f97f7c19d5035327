"""Pre-training throughput, compute ceiling and memory-bank footprint (a benchmark, not a test).

    python scripts/bench/bench_pretrain.py                 # alexnet and resnet18v1, 224 px, batch 32
    python scripts/bench/bench_pretrain.py --compare       # also the published pipeline and per-epoch LOSO
    python scripts/bench/bench_pretrain.py --models '' --memory   # peak RSS for banks of 10k, 100k and 1M rows
    python scripts/bench/bench_pretrain.py --models '' --compare  # only the LOSO comparison
    python scripts/bench/bench_pretrain.py --conv_bound    # how close to the ceiling the convolutions allow

All figures train the same model with the same loss (both encoders trained, NCE, memory update),
224 px, batch 32 by default:
- full step: this suite's `pretrain.train` with its pipeline (images decoded once, batched
  augmentation, channels-last, fused SGD);
- compute only: the same step on one pre-augmented batch served again and again (no data cost);
- published (--compare): a re-creation of the published pipeline: PIL decode and per-sample
  torchvision transforms (CenterCrop, RandomGrayscale, ColorJitter, flip, drawn independently per
  view) in two DataLoader workers every epoch, an NCHW model and torch.optim.SGD's default update;
- with --compare, the full step again in a child process left with glibc's default allocator
  settings: the gain of `util.keep_freed_memory`, which the entry scripts (and this script, for
  every other figure, the published pipeline's included) apply at start-up;
- with --compare, the frozen-encoder LOSO of the default 10-subject synthetic dataset at the same
  epoch budget with features extracted once per run (what fine-tune_CVSCL.py --freeze_encoder
  does) and with the frozen encoder run on every batch of every epoch, alternately
  (--loso_rounds times each, the fastest of each kept); every run must predict the same.
--amp trains every pipeline with bfloat16 autocast. The compute ceiling is model FLOPs per image
(forward + backward, both views, counted by `torch.utils.flop_counter`) divided into the fp32
matmul GFLOP/s, best of five 2048^2 products timed just before and five just after the full-step
measurement: this machine's speed drifts by up to a third within minutes, so a rate measured at
another moment would misstate the fraction.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from unittest import mock  # noqa: E402

import dataset  # noqa: E402
from evaluation import engine  # noqa: E402
from scripts.datatools.synthetic import generate as synthetic  # noqa: E402
import util  # noqa: E402
from models import build_model  # noqa: E402

finetune = util.load_script("fine-tune_CVSCL.py")
pretrain = util.load_script("pre-train_CVSCL.py")


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of fp32 matrix-multiply rate in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    return 2 * n**3 / min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats)) / 1e9


def step_gflop_per_image(model: torch.nn.Module, image_size: int, batch: int = 8) -> float:
    """Forward + backward FLOPs per image of both views' encoders."""
    x = torch.randn(batch, 4, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        feat_rgb, feat_depth = model(x)
        (feat_rgb.sum() + feat_depth.sum()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch / 1e9


class PreloadedStore:
    """Serves one fixed batch for every index batch: the compute-only measurement."""

    def __init__(self, x: torch.Tensor, n: int) -> None:
        self.x, self.n = x, n

    def __len__(self) -> int:
        return self.n

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:, :3].to(device), self.x[:, 3:].to(device)


def concat_views(rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Identity transform for batches that arrive already augmented: (B,3,H,W),(B,1,H,W) -> (B,4,H,W)."""
    return torch.cat([rgb, depth], dim=1)


class PublishedPairs(torch.utils.data.Dataset):
    """The published pipeline: each item decoded with PIL and transformed per view, every epoch."""

    def __init__(self, samples: list[dataset.Sample], image_size: int) -> None:
        from torchvision import transforms as T

        self.samples = samples

        def view(mean: list[float], std: list[float]) -> T.Compose:
            return T.Compose([T.CenterCrop(image_size), T.RandomGrayscale(p=0.2),
                              T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize(mean, std)])

        self.rgb_transform = view([0.4454, 0.4474, 0.4504], [0.4474, 0.4505, 0.4502])
        self.depth_transform = view([0.0423] * 3, [0.1761] * 3)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples[i]
        rgb = self.rgb_transform(Image.open(s.rgb_path).convert("RGB"))
        depth = self.depth_transform(Image.open(s.depth_path).convert("RGB"))[:1]
        return rgb, depth


def make_data(out: Path, image_size: int, n_pairs: int) -> list[dataset.Sample]:
    """A synthetic pool of at least `n_pairs` pairs decoded at `image_size * 8/7`."""
    subjects = 8
    synthetic.generate_dataset(out, seed=0, n_subjects=subjects, samples_per_subject=4,
                               pool_per_subject=-(-n_pairs // subjects), pool_only_subjects=0,
                               image_size=round(image_size * 8 / 7))
    return dataset.load_pool(out / "data", out)


def training_setup(name: str, opts: argparse.Namespace):
    """Flags, device, model, memory and loss of one measured run, seeded alike for every pipeline."""
    args = pretrain.parse_option(["--data_folder", str(opts.data), "--model_path", "unused", "--tb_path", "unused",
                                  "--model", name, "--batch_size", str(opts.batch_size), "--image_size",
                                  str(opts.image_size), "--epochs", "1", "--num_workers", "2", "--print_freq",
                                  "1000000", *(["--amp"] if opts.amp else [])])
    device = util.pick_device("auto")
    util.set_seed(0)
    model, contrast, criterion = pretrain.set_model(args, opts.batch_size * opts.steps, device)
    return args, device, model, contrast, criterion


def throughput(name: str, samples: list[dataset.Sample], opts: argparse.Namespace) -> dict:
    """Images/s of this suite's training step, with its data pipeline and without data cost, and
    the fraction of the compute ceiling at the matmul rate measured just before and after the
    full step."""
    n = opts.batch_size * opts.steps
    args, device, model, contrast, criterion = training_setup(name, opts)
    optimizer = pretrain.set_optimizer(args, model)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    gflop = step_gflop_per_image(model, args.image_size)

    def rate(store, transform) -> float:
        pretrain.train(1, PreloadedStore(store_x, min(2 * opts.batch_size, n)), concat_views, model, contrast,
                       criterion, optimizer, scaler, args, device)  # warm-up
        return n / _seconds(lambda: pretrain.train(1, store, transform, model, contrast, criterion, optimizer,
                                                   scaler, args, device))

    store = dataset.ImageStore(samples[:n], args.load_size, workers=2)
    store_x = dataset.augment_from_args(args, train=True)(*store.batch(torch.arange(opts.batch_size)))
    matmul_before = matmul_gflops(repeats=5)
    result = {"model": name, "gflop_per_image": gflop, "full_step": rate(store, dataset.augment_from_args(args, train=True))}
    result["matmul_gflops_around"] = max(matmul_before, matmul_gflops(repeats=5))
    result["compute_only"] = rate(PreloadedStore(store_x, n), concat_views)
    result["ceiling"] = result["matmul_gflops_around"] / gflop
    result["fraction_of_ceiling"] = result["full_step"] / result["ceiling"]
    return result


def published_throughput(name: str, samples: list[dataset.Sample], opts: argparse.Namespace) -> float:
    """Images/s of the published training loop driving the same model and loss: batches from
    `PublishedPairs` in two DataLoader workers, an NCHW model, torch.optim.SGD's default update."""
    n = opts.batch_size * opts.steps
    args, device, model, contrast, criterion = training_setup(name, opts)
    model = model.to(memory_format=torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    autocast = util.autocast(device.type, args.amp, args.opt_level)
    loader = torch.utils.data.DataLoader(PublishedPairs(samples[:n], args.image_size), batch_size=opts.batch_size,
                                         shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)
    index = torch.arange(opts.batch_size, device=device)

    def epoch() -> None:
        for rgb, depth in loader:
            with autocast:
                feat_rgb, feat_depth = model(torch.cat([rgb, depth], dim=1).to(device))
            out_rgb, out_depth = contrast(feat_rgb.float(), feat_depth.float(), index)
            loss = criterion(out_rgb) + criterion(out_depth)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    epoch()  # warm-up: workers started, buffers allocated
    return n / _seconds(epoch)


def glibc_default_rates(opts: argparse.Namespace) -> dict[str, float]:
    """Full-step images/s per model measured in a child process left with glibc's default
    allocator settings (`util.keep_freed_memory` not applied)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rates.json"
        subprocess.run([sys.executable, __file__, "--glibc_defaults", "--models", opts.models, "--batch_size",
                        str(opts.batch_size), "--image_size", str(opts.image_size), "--steps", str(opts.steps),
                        "--json", str(out), *(["--amp"] if opts.amp else [])],
                       check=True, stdout=subprocess.DEVNULL)
        return {r["model"]: r["full_step"] for r in json.loads(out.read_text())["models"]}


def loso_speedup(out: Path, epochs: int, rounds: int) -> dict:
    """Seconds of the 10-subject frozen LOSO with features once and with per-epoch extraction.

    The two are run alternately `rounds` times, each time in a fresh run folder, and each keeps
    its fastest run: a 2-second run and a 50-second one sit differently in this machine's drift,
    so one run of each compares two moments rather than two methods."""
    synthetic.generate_dataset(out / "data", seed=0)
    argv = ["--data_folder", str(out / "data"), "--model_path", "none", "--model", "alexnet", "--freeze_encoder",
            "--image_size", "64", "--no_progress", "--epochs", str(epochs),
            "--save_path", str(out / "eval")]
    timings: dict[str, list[float]] = {"once": [], "every_epoch": []}
    predictions = {}
    with contextlib.redirect_stdout(io.StringIO()):  # untimed: the one-off imports a first run pays
        finetune.main([*argv, "--run_name", "warm_up", "--epochs", "1"])
    for round_no in range(rounds):
        for name in timings:
            # every_epoch re-runs the frozen encoder on every training batch, as the published code does
            patch = mock.patch.object(engine, "uses_cached_features", (lambda args: False) if name == "every_epoch"
                                      else engine.uses_cached_features)
            run_name = f"{name}_{round_no}"
            start = time.perf_counter()
            with patch, contextlib.redirect_stdout(io.StringIO()):  # per-subject lines: in the run's log.txt
                results = finetune.main([*argv, "--run_name", run_name])
            timings[name].append(time.perf_counter() - start)
            predictions[run_name] = (out / "eval" / run_name / "predictions.csv").read_text()
            print(f"frozen LOSO, features {name.replace('_', ' ')}: {timings[name][-1]:.1f} s, "
                  f"UAR {results['uar']:.4f}", flush=True)
    best = {name: min(seconds) for name, seconds in timings.items()}
    return {"epochs": epochs, "subjects": len(results["per_subject"]), "rounds": rounds,
            "seconds_once": best["once"], "seconds_every_epoch": best["every_epoch"],
            "all_seconds": timings, "speedup": best["every_epoch"] / best["once"],
            "same_predictions": len(set(predictions.values())) == 1}


def convolution_bound(name: str, opts: argparse.Namespace) -> dict:
    """Forward + backward time of every convolution of the model on its own (channels-last,
    batch `batch_size`, both views, input gradient except for the first layer), each shape timed
    once (best of 3) beside a matmul of the same moment. A step takes at least their sum plus its
    other FLOPs (the linear layers) at the matmul rate, which bounds the fraction of the ceiling
    from above; the totals use the fastest matmul seen during these measurements."""
    model = build_model(name, 128)
    shapes: dict[torch.nn.Conv2d, torch.Size] = {}
    hooks = [m.register_forward_hook(lambda m, inputs, _: shapes.setdefault(m, inputs[0].shape) and None)
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model.eval()(torch.zeros(1, 4, opts.image_size, opts.image_size))
    model.train()
    for hook in hooks:
        hook.remove()
    first = {next(m for m in branch.modules() if isinstance(m, torch.nn.Conv2d))
             for branch in (model.rgb_to_d, model.d_to_rgb)}
    timed: dict[tuple, tuple[float, float, float]] = {}
    total_seconds = total_flop = matmul = 0.0
    layers = []
    for conv, shape in shapes.items():
        input_grad = conv not in first
        key = (shape[1], conv.out_channels, conv.kernel_size, conv.stride, shape[-1], input_grad)
        if key not in timed:
            x = torch.randn(opts.batch_size, *shape[1:]).contiguous(memory_format=torch.channels_last)
            x.requires_grad_(input_grad)
            weight = conv.weight.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            out = torch.nn.functional.conv2d(x, weight, None, conv.stride, conv.padding)
            grad = torch.randn_like(out)
            passes = 3 if input_grad else 2
            flop = passes * 2 * out.numel() * shape[1] // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]

            def forward_backward() -> None:
                y = torch.nn.functional.conv2d(x, weight, None, conv.stride, conv.padding)
                torch.autograd.grad(y, [x, weight] if input_grad else [weight], grad)

            forward_backward()
            seconds = min(_seconds(forward_backward) for _ in range(3))
            matmul_now = matmul_gflops(repeats=3)
            matmul = max(matmul, matmul_now)
            timed[key] = (flop, seconds, flop / seconds / 1e9 / matmul_now)
            layers.append({"in": key[0], "out": key[1], "kernel": key[2][0], "stride": key[3][0], "size": key[4],
                           "ms": seconds * 1e3, "fraction_of_matmul": timed[key][2]})
        total_flop += timed[key][0]
        total_seconds += timed[key][1]
    step_flop = step_gflop_per_image(model, opts.image_size) * 1e9 * opts.batch_size
    return {"model": name, "conv_ms_per_step": total_seconds * 1e3,
            "conv_fraction_of_matmul": total_flop / total_seconds / 1e9 / matmul,
            "bound_on_fraction_of_ceiling": step_flop / (total_seconds * matmul * 1e9 + step_flop - total_flop),
            "layers": layers}


def _seconds(fn) -> float:
    """Wall-clock seconds of one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def memory_child(n_rows: int, bank_dtype: str) -> None:
    """Three training steps of alexnet at 64 px with a bank of `n_rows`; prints peak RSS in MiB."""
    args = pretrain.parse_option(["--data_folder", ".", "--model_path", "unused", "--tb_path", "unused",
                                  "--batch_size", "32", "--image_size", "64", "--epochs", "1",
                                  "--bank_dtype", bank_dtype, "--print_freq", "1000000"])
    device = torch.device("cpu")
    model, contrast, criterion = pretrain.set_model(args, n_rows, device)
    optimizer = pretrain.set_optimizer(args, model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    store = PreloadedStore(torch.randn(32, 4, 64, 64), 96)
    pretrain.train(1, store, concat_views, model, contrast, criterion, optimizer, scaler, args, device)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
    peak_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))
    print(peak_kib / 1024)


def memory_table() -> list[dict]:
    rows = []
    for bank_dtype in ("float32", "float16"):
        for n_rows in (10_000, 100_000, 1_000_000):
            out = subprocess.run([sys.executable, __file__, "--memory_child", str(n_rows), bank_dtype],
                                 capture_output=True, text=True, check=True).stdout.split()
            bank_mib = 2 * n_rows * 128 * (4 if bank_dtype == "float32" else 2) / 2**20
            rows.append({"bank_rows": n_rows, "bank_dtype": bank_dtype, "peak_rss_mib": float(out[-1]),
                         "bank_mib": bank_mib})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="alexnet,resnet18v1", help="comma-separated; '' skips throughput")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--compare", action="store_true",
                        help="also time the re-created published pipeline and per-epoch LOSO extraction")
    parser.add_argument("--memory", action="store_true", help="peak RSS for banks of 10k/100k/1M rows")
    parser.add_argument("--conv_bound", action="store_true",
                        help="time each model's convolutions on their own: how close to the ceiling a step can get")
    parser.add_argument("--amp", action="store_true",
                        help="train with --amp (bfloat16 autocast; float16 needs CUDA) in every pipeline")
    parser.add_argument("--loso_epochs", type=int, default=finetune.DEFAULTS.epochs,
                        help="epoch budget of the LOSO comparison")
    parser.add_argument("--loso_rounds", type=int, default=2,
                        help="alternating runs of each LOSO variant; each keeps its fastest")
    parser.add_argument("--json", type=str, default=None, help="write the results here too")
    parser.add_argument("--glibc_defaults", action="store_true",
                        help="leave glibc's allocator settings alone (the entry scripts change them)")
    parser.add_argument("--memory_child", nargs=2, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.memory_child:
        util.keep_freed_memory()
        memory_child(int(opts.memory_child[0]), opts.memory_child[1])
        return
    tuned = not opts.glibc_defaults and util.keep_freed_memory()
    gflops = matmul_gflops()
    print(f"fp32 matmul: {gflops:.1f} GFLOP/s, {torch.get_num_threads()} threads; glibc allocator "
          + ("keeps freed memory (as the entry scripts)" if tuned else "with its default settings")
          + ("; models trained with bfloat16 autocast (the ceiling stays fp32's)" if opts.amp else ""), flush=True)
    results: dict = {"matmul_gflops": gflops, "amp": opts.amp, "allocator_tuned": tuned, "models": []}
    models = [m for m in opts.models.split(",") if m]
    default_allocator = glibc_default_rates(opts) if opts.compare and models and tuned else {}
    with tempfile.TemporaryDirectory() as tmp:
        opts.data = Path(tmp)
        samples = make_data(opts.data, opts.image_size, opts.batch_size * opts.steps) if models else []
        for name in models:
            r = throughput(name, samples, opts)
            line = (f"{name}: {r['gflop_per_image']:.2f} GFLOP/image, full step {r['full_step']:.1f} images/s, "
                    f"compute only {r['compute_only']:.1f}, ceiling {r['ceiling']:.1f} at the "
                    f"{r['matmul_gflops_around']:.0f} GFLOP/s matmul measured around it "
                    f"({r['fraction_of_ceiling']:.2f} of it)")
            if opts.compare:
                r["published"] = published_throughput(name, samples, opts)
                r["speedup_vs_published"] = r["full_step"] / r["published"]
                line += f"; published pipeline {r['published']:.1f} (ours x{r['speedup_vs_published']:.2f})"
            if name in default_allocator:
                r["full_step_glibc_defaults"] = default_allocator[name]
                line += (f"; full step with glibc's default allocator {default_allocator[name]:.1f} "
                         f"(x{r['full_step'] / default_allocator[name]:.2f} from keeping freed memory)")
            results["models"].append(r)
            print(line, flush=True)
        if opts.compare:
            results["loso"] = loso = loso_speedup(Path(tmp) / "loso", opts.loso_epochs, opts.loso_rounds)
            print(f"frozen LOSO, {loso['subjects']} subjects, {loso['epochs']} epochs, best of {loso['rounds']} "
                  f"alternating runs each: features once {loso['seconds_once']:.1f} s against "
                  f"{loso['seconds_every_epoch']:.1f} s, x{loso['speedup']:.1f} faster, "
                  f"same predictions in every run: {loso['same_predictions']}")
    if opts.conv_bound:
        results["conv_bound"] = [convolution_bound(name, opts) for name in models]
        for row in results["conv_bound"]:
            slowest = min(row["layers"], key=lambda layer: layer["fraction_of_matmul"])
            print(f"{row['model']}: its convolutions alone take {row['conv_ms_per_step']:.0f} ms per step of "
                  f"{opts.batch_size} (forward + backward, both views) at {row['conv_fraction_of_matmul']:.2f} of "
                  f"the matmul rate, so a step reaches at most {row['bound_on_fraction_of_ceiling']:.2f} of the "
                  f"ceiling; least efficient: {slowest['in']}->{slowest['out']} {slowest['kernel']}x"
                  f"{slowest['kernel']}/{slowest['stride']} on {slowest['size']} px at "
                  f"{slowest['fraction_of_matmul']:.2f}")
    if opts.memory:
        results["memory"] = memory_table()
        for row in results["memory"]:
            print(f"bank {row['bank_rows']:>9,} rows {row['bank_dtype']}: peak RSS {row['peak_rss_mib']:.0f} MiB "
                  f"(banks {row['bank_mib']:.0f} MiB)")
    if opts.json:
        util.atomic_write_json(opts.json, results)


if __name__ == "__main__":
    main()
