"""Shared helpers that change how training runs, not what it computes."""
from __future__ import annotations

import platform

import torch

import util


def test_fused_sgd_takes_the_plain_sgd_steps() -> None:
    torch.manual_seed(0)
    params = [torch.randn(64, 32, requires_grad=True), torch.randn(32, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    fused = util.sgd([{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 0.01}],
                     lr=0.1, momentum=0.9, weight_decay=1e-4)
    plain = torch.optim.SGD([{"params": twins[:1], "lr": 0.1}, {"params": twins[1:], "lr": 0.01}],
                            lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for group, optimizer in ((params, fused), (twins, plain)):
            for p, g in zip(group, grads):
                p.grad = g.clone()
            optimizer.step()
    for p, q in zip(params, twins):
        assert torch.allclose(p, q, atol=1e-6)


def test_keep_freed_memory_leaves_user_settings_alone(monkeypatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert util.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    assert util.keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_cuda_random_state_is_the_current_devices_and_old_lists_resume(monkeypatch, capsys) -> None:
    """A checkpoint holds the current CUDA device's generator state only. One written before held
    a list, one state per GPU of its machine: the current device's entry is restored, and a list
    without one (a machine with more GPUs than the writer's) leaves the generator alone, with one
    warning. A stand-in for torch.cuda on device 1 records the calls."""
    restored: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([10 + device]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    monkeypatch.setattr(util, "_warned_cuda_rng", False)
    state = util.rng_state()
    assert torch.equal(state["cuda"], torch.tensor([11]))
    util.set_rng_state(state)
    util.set_rng_state({**state, "cuda": [torch.tensor([0]), torch.tensor([1]), torch.tensor([2])]})
    assert [(int(s), d) for s, d in restored] == [(11, 1), (1, 1)]
    for _ in range(2):
        util.set_rng_state({**state, "cuda": [torch.tensor([0])]})
    assert len(restored) == 2
    assert capsys.readouterr().err.count("warning: the checkpoint holds the CUDA random states of 1 GPU(s)") == 1
