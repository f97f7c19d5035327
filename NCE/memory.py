"""Two-view memory bank for CMC-style contrast between the RGB and the depth difference image."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from NCE import collectives

NORM_EPS = 1e-12
_INIT_CHUNK = 65536
# Banks of at most this many rows per drawn column (K+1) are scored densely (see `_score`): a
# dense product costs O(N D) per anchor and a gather O((K+1) D) with a far larger constant, so the
# product wins while N stays within a small multiple of K+1 (docs/benchmarks.md has the timings).
DENSE_ROWS_PER_DRAW = 16


def _score(feat: Tensor, bank: Tensor, idx: Tensor, dense: bool) -> Tensor:
    """Inner products of each anchor with its drawn bank rows, in float32.

    Args:
        feat: (B, D) anchors.
        bank: (N, D) memory rows, any floating dtype.
        idx: (B, K+1) row indices into ``bank``.
        dense: score every bank row with one (B, D) x (D, N) product and pick the drawn
            columns, instead of gathering the B * (K+1) drawn rows and scoring them. Both give
            the same values; dense is much cheaper while N is small next to B * (K+1) (it never
            materialises the (B, K+1, D) rows, and its backward is a matrix product too).

    Returns:
        (B, K+1) float32 scores ``<feat[b], bank[idx[b, j]]>``.
    """
    if dense:
        # A copy: backward needs these rows after the banks' in-place momentum update.
        rows = bank.to(torch.float32, copy=True)
        return torch.mm(feat.float(), rows.t()).gather(1, idx)
    batch, width = idx.shape
    rows = bank.index_select(0, idx.reshape(-1)).view(batch, width, -1).float()
    return torch.bmm(rows, feat.float().unsqueeze(2)).squeeze(2)


def _last_occurrence(index: Tensor, n_rows: int) -> Tensor:
    """For each position of ``index`` (N,), values in [0, ``n_rows``), the position of the last
    occurrence of its value (N,); position p is its value's last occurrence where the result is p.

    A scatter over the ``n_rows`` rows instead of a deduplication: no size depends on the values,
    so nothing is read back to the host (``torch.unique`` synchronises on CUDA). Rows that
    ``index`` does not hold are never written nor read, so they are left uninitialised.
    """
    positions = torch.arange(index.numel(), device=index.device)
    last = torch.empty(n_rows, dtype=positions.dtype, device=index.device)
    last.scatter_reduce_(0, index, positions, reduce="amax", include_self=False)
    return last.index_select(0, index)


class ContrastMemory(nn.Module):
    """Two memory banks (RGB, depth) of unit rows, one per training sample, and the CMC scores.

    Each view's features are scored against the *other* view's bank: RGB anchors against depth
    rows, depth anchors against RGB rows. For every anchor, column 0 is the positive (the anchor's
    own row ``index[b]``) and columns 1..K are negatives drawn uniformly, with replacement, from
    all ``n_data`` rows; by default the anchor itself may be drawn (as CMC does, about K/n_data
    times per anchor), ``exclude_self=True`` draws from the n_data - 1 others instead. Both views
    use the same drawn indices. Negatives come from torch's global RNG on the banks' device, so
    seeding and restoring the RNG state reproduce them exactly.

    Outputs, per view, of shape (B, K+1) and dtype float32:

    * softmax mode: the logits ``<f, m> / T`` (for :class:`NCE.NCESoftmaxLoss`);
    * NCE mode (CMC): ``exp(<f, m> / T) / Z`` (for :class:`NCE.NCECriterion`). ``Z`` is the
      normalisation constant that turns ``exp(<f, m> / T)`` into an estimate of the data density
      over ``n_data`` samples, so that the outputs can be compared with the uniform noise
      density 1/n_data. Like CMC, it is estimated once per view from the first batch as
      ``Z = mean(exp(<f, m> / T)) * n_data`` (mean over the B x (K+1) scores, averaged over
      ranks) and then held fixed. It is saved in the ``z`` buffer with the temperature it was
      estimated at (``z_t``); when the module is used with another temperature (a resumed run
      with a new ``--nce_t``) Z is estimated again from the next batch. A host copy of ``z_t``,
      set by the constructor, ``load_state_dict`` and the estimate, decides whether to estimate,
      so that forward never reads a buffer back from the device: change ``z_t`` only through
      these.

    After scoring, the positive rows of both banks are moved towards the batch's features with
    momentum: ``row = normalise(m * row + (1 - m) * feat)``, using the features and indices
    gathered from every rank (each rank passes the same batch size), so the update is identical
    on every rank; a row that the gathered batch holds twice takes its last occurrence's feature.
    A row whose update has (near) zero norm keeps its previous value, so rows stay unit-norm and
    never become NaN.

    State: the banks ``memory_rgb``, ``memory_depth`` (n_data, feat_dim) and ``z`` (2,) (RGB,
    depth; 0 until estimated), ``z_t`` () are buffers and saved in the state dict. ``nce_k``,
    ``nce_t``, ``nce_m``, ``softmax`` and ``exclude_self`` are plain attributes, not saved: values
    given to the constructor win when a state dict is loaded.

    Banks start as random unit rows and are broadcast from rank 0 on the first forward call (when
    they are on their final device), so every rank holds the same banks. Banks may be stored in
    ``bank_dtype`` (float16 halves their memory); scoring and updates are computed in float32.
    """

    memory_rgb: Tensor
    memory_depth: Tensor
    z: Tensor
    z_t: Tensor

    def __init__(
        self,
        feat_dim: int,
        n_data: int,
        nce_k: int,
        nce_t: float,
        nce_m: float,
        softmax: bool = False,
        exclude_self: bool = False,
        bank_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if feat_dim < 1 or n_data < 1 or nce_k < 1:
            raise ValueError(f"feat_dim, n_data and nce_k must be >= 1, got {feat_dim}, {n_data}, {nce_k}")
        if exclude_self and n_data < 2:
            raise ValueError("exclude_self needs at least 2 samples to draw negatives from")
        if nce_t <= 0:
            raise ValueError(f"nce_t must be > 0, got {nce_t}")
        if not 0 <= nce_m < 1:
            raise ValueError(f"nce_m must be in [0, 1), got {nce_m}")
        if not bank_dtype.is_floating_point:
            raise ValueError(f"bank_dtype must be a floating dtype, got {bank_dtype}")
        self.feat_dim = feat_dim
        self.n_data = n_data
        self.nce_k = nce_k
        self.nce_t = nce_t
        self.nce_m = nce_m
        self.softmax = softmax
        self.exclude_self = exclude_self
        for name in ("memory_rgb", "memory_depth"):
            bank = torch.empty(n_data, feat_dim, dtype=bank_dtype)
            # Filled in chunks, so a large float16 bank never exists as a whole in float32.
            for rows in bank.split(_INIT_CHUNK):
                rows.copy_(nn.functional.normalize(torch.randn(rows.shape), dim=1, eps=NORM_EPS))
            self.register_buffer(name, bank)
        self.register_buffer("z", torch.zeros(2))
        self.register_buffer("z_t", torch.zeros((), dtype=torch.float64))
        self._z_t_host = 0.0  # the value of z_t (see the class docstring)
        self._synced = False

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, n_data={self.n_data}, nce_k={self.nce_k}, "
            f"nce_t={self.nce_t}, nce_m={self.nce_m}, softmax={self.softmax}, "
            f"exclude_self={self.exclude_self}, bank_dtype={self.memory_rgb.dtype}"
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        z_t = state_dict.get(prefix + "z_t")
        if z_t is not None and z_t.numel() == 1:  # another shape is an error load_state_dict reports
            # Read from the state dict (usually on the CPU), not from the buffer on the device.
            self._z_t_host = float(z_t)

    def sync_banks(self) -> None:
        """Broadcast both banks from rank 0 (no-op in one process); done by the first forward."""
        for bank in (self.memory_rgb, self.memory_depth):
            collectives.broadcast_(bank)
        self._synced = True

    def draw_indices(self, index: Tensor) -> Tensor:
        """Bank rows to score for each anchor.

        Args:
            index: (B,) the anchors' sample indices in [0, n_data).

        Returns:
            (B, K+1) long on the banks' device: column 0 is ``index``, columns 1..K are uniform
            draws (from the global RNG of the banks' device) over all rows, or over all rows but
            the anchor's when ``exclude_self`` is set.
        """
        device = self.memory_rgb.device
        index = index.to(device=device, dtype=torch.long)
        n_choices = self.n_data - 1 if self.exclude_self else self.n_data
        negatives = torch.randint(n_choices, (index.shape[0], self.nce_k), device=device)
        if self.exclude_self:
            negatives += negatives >= index.unsqueeze(1)
        return torch.cat((index.unsqueeze(1), negatives), dim=1)

    def forward(self, feat_rgb: Tensor, feat_depth: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Score both views against the other view's bank, then update the banks.

        Args:
            feat_rgb: (B, D) RGB embeddings (unit rows expected), on the banks' device.
            feat_depth: (B, D) depth embeddings, same rows as ``feat_rgb``.
            index: (B,) long sample indices in [0, n_data) (not range-checked). Under a process
                group every rank passes the same B (the bank update gathers equal chunks).

        Returns:
            ``(out_rgb, out_depth)``, each (B, K+1) float32, column 0 the positive:
            ``out_rgb`` scores ``feat_rgb`` against ``memory_depth``, ``out_depth`` scores
            ``feat_depth`` against ``memory_rgb``. Logits / T in softmax mode, exp(logit / T) / Z
            in NCE mode (see the class docstring). Gradients flow to both feature tensors.
        """
        expected = (index.shape[0], self.feat_dim)
        if index.dim() != 1 or feat_rgb.shape != expected or feat_depth.shape != expected:
            raise ValueError(
                f"expected feat_rgb and feat_depth of shape {expected} and index of shape "
                f"({expected[0]},), got {tuple(feat_rgb.shape)}, {tuple(feat_depth.shape)}, "
                f"{tuple(index.shape)}"
            )
        if not self._synced:
            self.sync_banks()
        idx = self.draw_indices(index)
        pairs = ((feat_rgb, self.memory_depth), (feat_depth, self.memory_rgb))
        with torch.autocast(device_type=idx.device.type, enabled=False):
            dense = self.n_data <= DENSE_ROWS_PER_DRAW * (self.nce_k + 1)
            logits = torch.stack([_score(feat, bank, idx, dense) for feat, bank in pairs])
            out = logits / self.nce_t if self.softmax else self._nce_probabilities(logits)
        self._update_banks(feat_rgb, feat_depth, idx[:, 0])
        return out[0], out[1]

    def _nce_probabilities(self, logits: Tensor) -> Tensor:
        """(2, B, K+1) logits -> (2, B, K+1) ``exp(logits / T) / Z``, estimating Z if needed."""
        scores = torch.exp(logits / self.nce_t)
        if self._z_t_host != self.nce_t:
            per_view_mean = scores.detach().mean(dim=(1, 2))
            self.z.copy_(collectives.all_reduce_mean(per_view_mean) * self.n_data)
            self.z_t.fill_(self.nce_t)
            self._z_t_host = self.nce_t
        return scores / self.z.view(2, 1, 1)

    @torch.no_grad()
    def _update_banks(self, feat_rgb: Tensor, feat_depth: Tensor, index: Tensor) -> None:
        """Momentum-update the rows ``index`` (B,) of each view's own bank, over all ranks."""
        feats = collectives.all_gather_cat(torch.stack((feat_rgb, feat_depth), dim=1).float(), equal_sizes=True)
        index = collectives.all_gather_cat(index, equal_sizes=True)
        # Every occurrence of a row takes its last occurrence's feature: the copies compute the
        # same new row, so index_copy_ writes one value whichever copy lands last.
        feats = feats.index_select(0, _last_occurrence(index, self.n_data))
        for view, bank in enumerate((self.memory_rgb, self.memory_depth)):
            old = bank.index_select(0, index).float()
            new = old.mul(self.nce_m).add_(feats[:, view], alpha=1.0 - self.nce_m)
            norm = new.norm(dim=1, keepdim=True)
            new = torch.where(norm > NORM_EPS, new / norm.clamp_min(NORM_EPS), old)
            bank.index_copy_(0, index, new.to(bank.dtype))
