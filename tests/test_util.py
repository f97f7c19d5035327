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
