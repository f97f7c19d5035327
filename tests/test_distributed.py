"""Pre-training across processes on the CPU (gloo, 2 processes), against one process.

Two launchers are used. `torchrun` (a subprocess) exercises the real entry point, for resuming.
`torch.multiprocessing` workers that set torchrun's environment variables and call `pretrain.main`
serve the comparison with one process, because that comparison patches two things in-process:

* Batch norm and dropout are pinned in eval mode. On the CPU there is no SyncBatchNorm, so each
  rank normalises with the statistics of its own 4 samples, not of the global 8: no tolerance
  could tell that apart from a bug. In eval mode every sample's features depend on that sample
  only; random augmentation is switched off by flags for the same reason.
* Negatives are drawn from a table fixed by the step and the anchor's index. Ranks draw their
  negatives from their own RNG (seed + rank), as they should; pinning them makes a sample's
  negatives independent of which rank holds it.

What is left is exactly what distribution changes: the sharding of each global batch, DDP's
gradient averaging, the all-gathered bank update and the all-reduced Z. The runs then agree up to
float32 summation order (two 4-sample gradients averaged instead of one 8-sample gradient, Z as
the mean of two rank means): after 6 steps the largest difference seen was 1.2e-7 in the weights
and 2e-8 relative in Z, TOLERANCE leaves a tenfold margin.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from models import build_model
from NCE import ContrastMemory, collectives
from helpers import pretrain_cli, run_args
import util
from util import REPO_ROOT, UserError

pretrain = util.load_script("pre-train_CVSCL.py")

WORLD = 2
FIXED_AUGMENT = ["--crop_low", "1", "--no_flip", "--jitter", "0", "--grayscale_p", "0"]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def free_port() -> int:
    """A TCP port free on localhost right now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 pre-train_CVSCL.py ARGV` (one thread per process)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={WORLD}", str(REPO_ROOT / "pre-train_CVSCL.py"), *argv],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def load(path: Path) -> dict:
    """A checkpoint or saved state, the safe way."""
    return torch.load(path, map_location="cpu", weights_only=True)


def only_run(models: Path) -> Path:
    """The single run folder under `models`."""
    [run] = models.iterdir()
    return run


# ---------------------------------------------------------------------------------------------
# Collective helpers


def test_helpers_are_identity_in_one_process(monkeypatch) -> None:
    t = torch.randn(3, 2, requires_grad=True)
    assert not util.is_distributed()
    assert (util.rank(), util.world_size(), util.is_main_process()) == (0, 1, True)
    gathered = collectives.all_gather_cat(t)
    assert torch.equal(gathered, t) and not gathered.requires_grad
    assert torch.equal(collectives.all_gather_cat(t, equal_sizes=True), t)
    assert torch.equal(util.all_reduce_mean(t), t)
    before = t.detach().clone()
    assert collectives.broadcast_(t.detach()) is not None and torch.equal(t, before)
    assert util.rank_chunk(t) is t
    assert util.all_gather_object({"a": t}) == [{"a": t}]
    util.barrier()
    assert util.local_rank() == 0
    model = nn.Linear(2, 2)
    assert util.wrap_model(model, torch.device("cpu")) is model
    assert util.unwrap_model(model) is model

    args = types.SimpleNamespace(device="cpu")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert util.init_distributed_mode(args) == torch.device("cpu") and args.world_size == 1
    assert not util.is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(UserError, match="RANK"):
        util.init_distributed_mode(args)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="cuda:LOCAL_RANK"):
        util.init_distributed_mode(types.SimpleNamespace(device="cuda:1"))


STEPS, LOCAL_BATCH, N_DATA, FEAT_DIM = 3, 4, 24, 8


def _step_inputs(step: int) -> tuple[Tensor, Tensor]:
    """The global batch of ``step``: (2, 2*LOCAL_BATCH, D) features, (2*LOCAL_BATCH,) indices."""
    generator = torch.Generator().manual_seed(100 + step)
    feats = F.normalize(torch.randn(2, 2 * LOCAL_BATCH, FEAT_DIM, generator=generator), dim=2)
    return feats, torch.randperm(N_DATA, generator=generator)[: 2 * LOCAL_BATCH]


def _helper_worker(rank: int, rendezvous: str, out_dir: str) -> None:
    """One rank: the bank over STEPS global batches, chunked by rank, then each helper once."""
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=WORLD)
    torch.manual_seed(rank)
    memory = ContrastMemory(FEAT_DIM, N_DATA, 8, 0.07, 0.5)
    for step in range(STEPS):
        feats, index = _step_inputs(step)
        memory(util.rank_chunk(feats[0]), util.rank_chunk(feats[1]), util.rank_chunk(index))
    model = util.wrap_model(nn.Linear(2, 2), torch.device("cpu"))
    assert isinstance(model, DistributedDataParallel) and util.unwrap_model(model) is model.module
    torch.save({**memory.state_dict(),
                "gathered": collectives.all_gather_cat(torch.full((rank + 1,), float(rank))),
                "gathered_equal": collectives.all_gather_cat(torch.full((2, 3), rank), equal_sizes=True),
                "objects": util.all_gather_object({"rank": rank, "state": torch.full((2,), rank)}),
                "chunk": util.rank_chunk(torch.arange(6))}, Path(out_dir) / f"rank{rank}.pt")
    util.barrier()  # as pretrain.main: no rank leaves while the other finishes a collective
    util.destroy()


@pytest.mark.slow
def test_two_process_helpers_and_banks(tmp_path: Path) -> None:
    mp.spawn(_helper_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=WORLD)
    ranks = [load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert [r["chunk"].tolist() for r in ranks] == [[0, 1, 2], [3, 4, 5]]
    assert ranks[0]["gathered"].tolist() == [0.0, 1.0, 1.0]
    for r in ranks:
        assert torch.equal(r["gathered_equal"], torch.tensor([[0] * 3] * 2 + [[1] * 3] * 2))
    objects = ranks[1]["objects"]
    assert [o["rank"] for o in objects] == [0, 1] and objects[1]["state"].tolist() == [1, 1]
    torch.manual_seed(0)
    single = ContrastMemory(FEAT_DIM, N_DATA, 8, 0.07, 0.5)
    for step in range(STEPS):
        feats, index = _step_inputs(step)
        single(feats[0], feats[1], index)
    for name in ("memory_rgb", "memory_depth", "z", "z_t"):
        assert torch.equal(ranks[0][name], ranks[1][name])
    for name in ("memory_rgb", "memory_depth"):
        torch.testing.assert_close(ranks[0][name], getattr(single, name), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Pre-training: 2 processes against 1 on the same global batch


def _frozen_norm_model(name: str, feat_dim: int = 128) -> nn.Module:
    """`build_model` with batch norm and dropout held in eval mode, whatever `train()` is called."""
    model = build_model(name, feat_dim=feat_dim)
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            module.training = False
            module.train = types.MethodType(lambda self, mode=True: self, module)
    return model


def _negatives_by_anchor(self: ContrastMemory, index: Tensor) -> Tensor:
    """`draw_indices` with each anchor's negatives fixed by the call number and its index."""
    self.calls = getattr(self, "calls", 0) + 1
    table = torch.randint(self.n_data, (self.n_data, self.nce_k), generator=torch.Generator().manual_seed(self.calls))
    return torch.cat((index.unsqueeze(1), table[index]), dim=1)


def _record_epochs(out: Path) -> None:
    """Make `pretrain.train` save this rank's model and memory after every epoch."""
    train = pretrain.train

    def recording(epoch, store, transform, model, contrast, *rest):
        stats = train(epoch, store, transform, model, contrast, *rest)
        torch.save({"model": util.unwrap_model(model).state_dict(), "contrast": contrast.state_dict()},
                   out / f"rank{util.rank()}_epoch{epoch}.pt")
        return stats

    pretrain.train = recording


def _pretrain_worker(rank: int, port: int, argv: list[str], out: Path) -> None:
    """One rank of a patched `pretrain.main` run, launched the way torchrun would launch it."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    pretrain.build_model = _frozen_norm_model
    ContrastMemory.draw_indices = _negatives_by_anchor
    _record_epochs(out)
    pretrain.main(argv)


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_same_global_batch(pool: Path, tmp_path: Path, monkeypatch):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    common = ["--epochs", "2", *FIXED_AUGMENT]
    mp.spawn(_pretrain_worker, nprocs=WORLD,
             args=(free_port(), run_args(pool, two, *common, "--batch_size", "4"), two))
    monkeypatch.setattr(pretrain, "build_model", _frozen_norm_model)
    monkeypatch.setattr(ContrastMemory, "draw_indices", _negatives_by_anchor)
    pretrain.main(run_args(pool, one, *common, "--batch_size", "8"))

    for epoch in (1, 2):
        ranks = [load(two / f"rank{r}_epoch{epoch}.pt") for r in range(WORLD)]
        for part in ("model", "contrast"):
            for key, value in ranks[0][part].items():
                assert torch.equal(value, ranks[1][part][key]), f"epoch {epoch}: {part}.{key} differs between ranks"

    run = only_run(two / "models")
    assert run.name == only_run(one / "models").name.replace("bsz_8", "bsz_4")
    a, b = load(run / "last.pth"), load(only_run(one / "models") / "last.pth")
    assert not any(key.startswith("module.") for key in a["model"])
    assert len(a["rng"]) == WORLD and a["args"]["world_size"] == WORLD
    for part in ("model", "contrast"):
        for key, value in b[part].items():
            torch.testing.assert_close(a[part][key], value, **TOLERANCE, msg=f"{part}.{key}")
    logs = [[json.loads(line) for line in (only_run(root / "models") / "log.jsonl").read_text().splitlines()]
            for root in (two, one)]
    for epoch_two, epoch_one in zip(*logs, strict=True):
        for name in pretrain.STAT_NAMES:
            assert epoch_two[name] == pytest.approx(epoch_one[name], rel=1e-5), name


# ---------------------------------------------------------------------------------------------
# Resuming under torchrun


@pytest.mark.slow
def test_resume_under_torchrun_is_exact_and_any_world_size_continues(pool: Path, tmp_path: Path):
    straight, resumed, single = tmp_path / "straight", tmp_path / "resumed", tmp_path / "single"
    argv = ["--batch_size", "4", "--epochs", "3"]
    result = torchrun(*run_args(pool, straight, *argv, "--save_freq", "1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("epoch 3: loss") == 1, "only rank 0 prints"
    run = only_run(straight / "models")
    stopped = run / "ckpt_epoch_2.pth"

    result = torchrun(*run_args(pool, resumed, *argv, "--resume", str(stopped)))
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "reseeded" not in result.stdout
    a, b = load(run / "last.pth"), load(only_run(resumed / "models") / "last.pth")
    assert b["epoch"] == 3
    for part in ("model", "contrast"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"

    result = pretrain_cli(*run_args(pool, single, *argv, "--resume", str(stopped)))
    assert result.returncode == 0, result.stderr
    assert "random states of 2 processes, this run has 1: every process reseeded" in result.stdout
    assert load(only_run(single / "models") / "last.pth")["epoch"] == 3
