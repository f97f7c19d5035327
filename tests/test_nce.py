"""The contrast memory and its losses against plain-loop references (lightly-style)."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from NCE import ContrastMemory, NCECriterion, NCESoftmaxLoss
from NCE import memory as memory_module

FEAT_DIM = 8
EPS = 1e-7


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def unit_rows(n: int, d: int = FEAT_DIM) -> Tensor:
    return F.normalize(torch.randn(n, d), dim=1)


def run_and_draw(memory: ContrastMemory, feat_rgb: Tensor, feat_depth: Tensor, index: Tensor):
    """Forward once; return the outputs and the (B, K+1) indices it drew (re-drawn from the RNG)."""
    state = torch.get_rng_state()
    out = memory(feat_rgb, feat_depth, index)
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    idx = memory.draw_indices(index)
    assert torch.equal(torch.get_rng_state(), after)
    return out, idx.tolist()


def ref_dots(feat: list, bank: list, idx: list) -> list:
    return [[sum(a * b for a, b in zip(feat[i], bank[j])) for j in row] for i, row in enumerate(idx)]


def ref_outputs(dots: list, t: float, softmax: bool, n_data: int, z: float | None = None):
    """Plain-loop memory outputs; returns (outputs, Z) where Z is estimated when not given."""
    if softmax:
        return [[s / t for s in row] for row in dots], None
    exps = [[math.exp(s / t) for s in row] for row in dots]
    if z is None:
        z = sum(sum(row) for row in exps) / (len(exps) * len(exps[0])) * n_data
    return [[e / z for e in row] for row in exps], z


def ref_nce_loss(probs: list, n_data: int) -> float:
    total = 0.0
    for row in probs:
        noise = (len(row) - 1) / n_data
        total += math.log(row[0] / (row[0] + noise + EPS))
        for p in row[1:]:
            total += math.log(noise / (p + noise + EPS))
    return -total / len(probs)


def ref_softmax_loss(logits: list) -> float:
    total = 0.0
    for row in logits:
        top = max(row)
        total += top + math.log(sum(math.exp(x - top) for x in row)) - row[0]
    return total / len(logits)


def ref_momentum(row: list, feat: list, m: float) -> list:
    new = [m * r + (1 - m) * f for r, f in zip(row, feat)]
    norm = math.sqrt(sum(x * x for x in new))
    return [x / norm for x in new]


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("n_data", [8, 50, 300])
@pytest.mark.parametrize("batch", [1, 4, 8])
@pytest.mark.parametrize("t", [0.07, 0.5])
@pytest.mark.parametrize("k", [1, 16, 100])
def test_memory_and_losses_match_loop_reference(k: int, t: float, batch: int, n_data: int, softmax: bool) -> None:
    memory = ContrastMemory(FEAT_DIM, n_data, k, t, 0.5, softmax=softmax)
    bank_rgb, bank_depth = memory.memory_rgb.tolist(), memory.memory_depth.tolist()
    feat_rgb, feat_depth = unit_rows(batch), unit_rows(batch)
    index = torch.randperm(n_data)[:batch]
    (out_rgb, out_depth), idx = run_and_draw(memory, feat_rgb, feat_depth, index)

    assert [row[0] for row in idx] == index.tolist()
    assert all(0 <= j < n_data for row in idx for j in row)
    crit = NCESoftmaxLoss() if softmax else NCECriterion(n_data)
    ref_loss = ref_softmax_loss if softmax else (lambda p: ref_nce_loss(p, n_data))
    for out, feat, other_bank, view in ((out_rgb, feat_rgb, bank_depth, 0), (out_depth, feat_depth, bank_rgb, 1)):
        expected, z = ref_outputs(ref_dots(feat.tolist(), other_bank, idx), t, softmax, n_data)
        assert out.shape == (batch, k + 1) and out.dtype == torch.float32
        torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-5, atol=1e-6)
        if not softmax:
            assert memory.z[view].item() == pytest.approx(z, rel=1e-5)
        assert crit(out).item() == pytest.approx(ref_loss(expected), rel=1e-5, abs=1e-6)

    updated = ((memory.memory_rgb, bank_rgb, feat_rgb), (memory.memory_depth, bank_depth, feat_depth))
    for bank, old, feats in updated:
        expected_bank = list(old)
        for i, j in enumerate(index.tolist()):
            expected_bank[j] = ref_momentum(old[j], feats[i].tolist(), 0.5)
        torch.testing.assert_close(bank, torch.tensor(expected_bank), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.float16])
def test_dense_and_gathered_scoring_agree_in_value_and_gradient(bank_dtype: torch.dtype) -> None:
    bank = unit_rows(40).to(bank_dtype)
    idx = torch.randint(40, (6, 33))
    results = []
    for dense in (False, True):
        feat = unit_rows(6).requires_grad_(True) if not results else results[0][2].detach().requires_grad_(True)
        scores = memory_module._score(feat, bank, idx, dense)
        (scores * torch.linspace(-1, 1, 33)).sum().backward()
        results.append((scores.detach(), feat.grad, feat))
    assert results[0][0].dtype == results[1][0].dtype == torch.float32
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-6, atol=1e-6)


def test_small_banks_are_scored_densely_large_ones_by_gathering(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    score = memory_module._score
    monkeypatch.setattr(memory_module, "_score", lambda *a: seen.append(a[3]) or score(*a))
    for n_data in (16 * 9, 16 * 9 + 1):
        ContrastMemory(FEAT_DIM, n_data, 8, 0.07, 0.5)(unit_rows(4), unit_rows(4), torch.arange(4))
    assert seen == [True, True, False, False]


def test_banks_start_and_stay_unit_norm() -> None:
    memory = ContrastMemory(FEAT_DIM, 40, 16, 0.07, 0.5)
    for _ in range(200):
        feats = 3.0 * torch.randn(2, 10, FEAT_DIM)
        memory(feats[0], feats[1], torch.randperm(40)[:10])
    for bank in (memory.memory_rgb, memory.memory_depth):
        torch.testing.assert_close(bank.norm(dim=1), torch.ones(40), rtol=0, atol=1e-5)


def test_momentum_update_is_exact_and_touches_only_positive_rows() -> None:
    m = 0.3
    memory = ContrastMemory(FEAT_DIM, 10, 4, 0.1, m, softmax=True)
    before = memory.memory_rgb.clone()
    feats = torch.randn(2, 3, FEAT_DIM)
    memory(feats[0], feats[1], torch.tensor([7, 2, 7]))
    for row in range(10):
        if row == 7:
            expected = ref_momentum(before[7].tolist(), feats[0, 2].tolist(), m)
        elif row == 2:
            expected = ref_momentum(before[2].tolist(), feats[0, 1].tolist(), m)
        else:
            expected = before[row].tolist()
        torch.testing.assert_close(memory.memory_rgb[row], torch.tensor(expected), rtol=0, atol=1e-7)


def unique_last_occurrence(index: Tensor) -> tuple[Tensor, Tensor]:
    """The deduplication the bank update did before (it synchronises on CUDA): the distinct values
    and the position of each one's last occurrence."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel())
    return unique, torch.full_like(unique, -1).scatter_reduce_(0, inverse, positions, reduce="amax")


def unique_update_(memory: ContrastMemory, feat_rgb: Tensor, feat_depth: Tensor, index: Tensor) -> None:
    """The bank update as it was before: one row per distinct index, with its last feature."""
    rows, keep = unique_last_occurrence(index)
    feats = torch.stack((feat_rgb, feat_depth), dim=1).float()[keep]
    for view, bank in enumerate((memory.memory_rgb, memory.memory_depth)):
        old = bank.index_select(0, rows).float()
        new = old.mul(memory.nce_m).add_(feats[:, view], alpha=1.0 - memory.nce_m)
        norm = new.norm(dim=1, keepdim=True)
        new = torch.where(norm > memory_module.NORM_EPS, new / norm.clamp_min(memory_module.NORM_EPS), old)
        bank.index_copy_(0, rows, new.to(bank.dtype))


@pytest.mark.parametrize("n_rows, n", [(1, 5), (7, 40), (50, 50), (1000, 300)])
def test_last_occurrence_finds_what_unique_finds(n_rows: int, n: int) -> None:
    generator = torch.Generator().manual_seed(n_rows)
    for _ in range(20):
        index = torch.randint(n_rows, (n,), generator=generator)
        last = memory_module._last_occurrence(index, n_rows)
        assert torch.equal(index[last], index) and (last >= torch.arange(n)).all()
        unique, positions = unique_last_occurrence(index)
        assert torch.equal(torch.unique(last), positions.sort().values)
        assert torch.equal(index[positions], unique)


@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [8, 100, 128])
def test_bank_update_with_repeated_rows_equals_the_deduplicating_update(dim: int, bank_dtype: torch.dtype) -> None:
    """Every copy of a repeated row computes the same update, so writing them all gives, bit for
    bit, what updating each distinct row once gave; a zero feature keeps its row."""
    generator = torch.Generator().manual_seed(dim)
    for n_data, batch, m in ((20, 64, 0.5), (300, 256, 0.3), (5000, 600, 0.9)):
        memory = ContrastMemory(dim, n_data, 4, 0.07, m, bank_dtype=bank_dtype)
        reference = copy.deepcopy(memory)
        index = torch.randint(n_data, (batch,), generator=generator)
        feats = F.normalize(torch.randn(2, batch, dim, generator=generator), dim=2)
        feats[0, :3] = 0
        memory._update_banks(feats[0], feats[1], index)
        unique_update_(reference, feats[0], feats[1], index)
        assert torch.equal(memory.memory_rgb, reference.memory_rgb)
        assert torch.equal(memory.memory_depth, reference.memory_depth)


def test_forward_reads_nothing_back_from_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Z's temperature is known on the host (from the constructor, the estimate or
    load_state_dict), so that no step reads a tensor back; a reloaded state of another
    temperature is still estimated again."""
    memory = ContrastMemory(FEAT_DIM, 20, 6, 0.07, 0.5)
    state = {k: v.clone() for k, v in memory.state_dict().items()}

    def read_back(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host")

    def forward_without_read_backs(steps: int) -> None:
        with monkeypatch.context() as patched:
            for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
                patched.setattr(Tensor, name, read_back)
            for step in range(steps):
                memory(unit_rows(4), unit_rows(4), torch.arange(4 * step, 4 * step + 4))

    forward_without_read_backs(3)
    assert memory.z_t.item() == 0.07 and (memory.z > 0).all()
    memory.load_state_dict(state)  # Z not estimated yet
    assert (memory.z == 0).all()
    forward_without_read_backs(1)
    assert memory.z_t.item() == 0.07 and (memory.z > 0).all()


@pytest.mark.parametrize("softmax", [False, True])
def test_zero_features_never_produce_nan(softmax: bool) -> None:
    memory = ContrastMemory(FEAT_DIM, 12, 8, 0.07, 0.0, softmax=softmax)
    before = memory.memory_depth.clone()
    zeros = torch.zeros(4, FEAT_DIM)
    out_rgb, out_depth = memory(zeros, zeros, torch.arange(4))
    crit = NCESoftmaxLoss() if softmax else NCECriterion(12)
    for out in (out_rgb, out_depth):
        assert torch.isfinite(out).all() and torch.isfinite(crit(out))
    torch.testing.assert_close(memory.memory_depth, before, rtol=0, atol=0)


def test_exclude_self_never_draws_the_anchor() -> None:
    memory = ContrastMemory(FEAT_DIM, 5, 400, 0.07, 0.5, exclude_self=True)
    index = torch.arange(5)
    idx = memory.draw_indices(index)
    for anchor, row in zip(index.tolist(), idx.tolist()):
        assert row[0] == anchor
        assert set(row[1:]) == set(range(5)) - {anchor}
    default = ContrastMemory(FEAT_DIM, 3, 200, 0.07, 0.5).draw_indices(torch.arange(3))
    assert (default[:, 1:] == default[:, :1]).any(dim=1).all()
    with pytest.raises(ValueError):
        ContrastMemory(FEAT_DIM, 1, 4, 0.07, 0.5, exclude_self=True)


@pytest.mark.parametrize("softmax", [False, True])
def test_gradients_reach_both_views_and_only_their_own(softmax: bool) -> None:
    memory = ContrastMemory(FEAT_DIM, 30, 16, 0.07, 0.5, softmax=softmax)
    crit = NCESoftmaxLoss() if softmax else NCECriterion(30)
    encoders = torch.nn.ModuleList([torch.nn.Linear(5, FEAT_DIM), torch.nn.Linear(5, FEAT_DIM)])
    before = [encoder.weight.detach().clone() for encoder in encoders]
    x = torch.randn(6, 5)
    feat_rgb, feat_depth = (F.normalize(encoder(x), dim=1) for encoder in encoders)
    out_rgb, out_depth = memory(feat_rgb, feat_depth, torch.arange(6))

    for out, own_view in ((out_rgb, 0), (out_depth, 1)):
        grads = torch.autograd.grad(out.sum(), [feat_rgb, feat_depth], retain_graph=True, materialize_grads=True)
        assert grads[own_view].abs().sum() > 0 and grads[1 - own_view].abs().sum() == 0

    optimizer = torch.optim.SGD(encoders.parameters(), lr=0.1)
    (crit(out_rgb) + crit(out_depth)).backward()
    optimizer.step()
    for encoder, old in zip(encoders, before):
        assert not torch.equal(encoder.weight, old)


def test_z_estimated_once_and_again_when_t_changes() -> None:
    n_data, t = 20, 0.07
    memory = ContrastMemory(FEAT_DIM, n_data, 6, t, 0.5)
    feats = unit_rows(4)
    memory(feats, feats, torch.arange(4))
    z_first = memory.z.clone()
    assert (z_first > 0).all() and memory.z_t.item() == t

    bank_rgb, bank_depth = memory.memory_rgb.tolist(), memory.memory_depth.tolist()
    feat_rgb, feat_depth = unit_rows(4), unit_rows(4)
    (out_rgb, out_depth), idx = run_and_draw(memory, feat_rgb, feat_depth, torch.arange(4, 8))
    assert torch.equal(memory.z, z_first)
    for out, feat, bank, view in ((out_rgb, feat_rgb, bank_depth, 0), (out_depth, feat_depth, bank_rgb, 1)):
        expected, _ = ref_outputs(ref_dots(feat.tolist(), bank, idx), t, False, n_data, z_first[view].item())
        torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-5, atol=1e-7)

    memory.nce_t = 0.2
    bank_depth = memory.memory_depth.tolist()
    (out_rgb, _), idx = run_and_draw(memory, feat_rgb, feat_depth, torch.arange(4))
    _, z = ref_outputs(ref_dots(feat_rgb.tolist(), bank_depth, idx), 0.2, False, n_data)
    assert memory.z_t.item() == 0.2 and memory.z[0].item() == pytest.approx(z, rel=1e-5)

    softmax = ContrastMemory(FEAT_DIM, n_data, 6, t, 0.5, softmax=True)
    softmax(feats, feats, torch.arange(4))
    assert (softmax.z == 0).all() and softmax.z_t.item() == 0


def test_state_dict_round_trip_keeps_banks_and_z_but_not_flags() -> None:
    saved = ContrastMemory(FEAT_DIM, 16, 8, 0.07, 0.5)
    feats = unit_rows(4)
    saved(feats, feats, torch.arange(4))
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"memory_rgb", "memory_depth", "z", "z_t"}

    resumed = ContrastMemory(FEAT_DIM, 16, 32, 0.07, 0.9, softmax=False, exclude_self=True)
    resumed.load_state_dict(state)
    for name in state:
        assert torch.equal(getattr(resumed, name), getattr(saved, name))
    assert (resumed.nce_k, resumed.nce_t, resumed.nce_m, resumed.exclude_self) == (32, 0.07, 0.9, True)
    out_rgb, _ = resumed(feats, feats, torch.arange(4, 8))
    assert out_rgb.shape == (4, 33) and torch.equal(resumed.z, saved.z)

    retuned = ContrastMemory(FEAT_DIM, 16, 8, 0.5, 0.5)
    retuned.load_state_dict(state)
    retuned(feats, feats, torch.arange(4))
    assert retuned.z_t.item() == 0.5 and not torch.equal(retuned.z, saved.z)


def test_float16_banks_score_in_float32() -> None:
    memory = ContrastMemory(FEAT_DIM, 50, 16, 0.07, 0.5, bank_dtype=torch.float16)
    assert memory.memory_rgb.dtype == memory.memory_depth.dtype == torch.float16
    bank_depth = memory.memory_depth.float().tolist()
    feat_rgb, feat_depth = unit_rows(4), unit_rows(4)
    (out_rgb, _), idx = run_and_draw(memory, feat_rgb, feat_depth, torch.arange(4))
    assert out_rgb.dtype == torch.float32
    expected, _ = ref_outputs(ref_dots(feat_rgb.tolist(), bank_depth, idx), 0.07, False, 50)
    torch.testing.assert_close(out_rgb, torch.tensor(expected), rtol=1e-5, atol=1e-7)
    for _ in range(50):
        memory(torch.randn(8, FEAT_DIM), torch.randn(8, FEAT_DIM), torch.randperm(50)[:8])
    for bank in (memory.memory_rgb, memory.memory_depth):
        assert bank.dtype == torch.float16
        torch.testing.assert_close(bank.float().norm(dim=1), torch.ones(50), rtol=0, atol=2e-3)

    full = ContrastMemory(FEAT_DIM, 50, 16, 0.07, 0.5)
    full.load_state_dict(memory.state_dict())
    assert full.memory_rgb.dtype == torch.float32 and torch.equal(full.memory_rgb, memory.memory_rgb.float())


def test_scores_stay_float32_under_autocast() -> None:
    memory = ContrastMemory(FEAT_DIM, 20, 8, 0.07, 0.5, softmax=True)
    feats = unit_rows(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_rgb, out_depth = memory(feats.bfloat16(), feats.bfloat16(), torch.arange(4))
    assert out_rgb.dtype == out_depth.dtype == torch.float32


def test_positive_probability() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0]])
    torch.testing.assert_close(NCESoftmaxLoss().positive_probability(logits), torch.softmax(logits, 1)[:, 0])
    probs = torch.tensor([[0.3, 0.1, 0.2]])
    torch.testing.assert_close(NCECriterion(10).positive_probability(probs), torch.tensor([0.3 / (0.3 + 0.2)]))
