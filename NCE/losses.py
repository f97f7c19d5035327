"""Losses on the (B, K+1) outputs of :class:`NCE.ContrastMemory`; column 0 is the positive."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NCE_EPS = 1e-7


class NCECriterion(nn.Module):
    """CMC's noise-contrastive estimation loss with uniform noise ``Pn = 1 / n_data``.

    For probabilities ``P`` (B, K+1) from the memory in NCE mode (``exp(logit / T) / Z``)::

        loss = -mean_b[ log(P0 / (P0 + K*Pn + eps))
                        + sum_{j=1..K} log(K*Pn / (Pj + K*Pn + eps)) ]

    i.e. the positive is classified as data and each of the K negatives as noise.
    """

    def __init__(self, n_data: int) -> None:
        super().__init__()
        if n_data < 1:
            raise ValueError(f"n_data must be >= 1, got {n_data}")
        self.n_data = n_data

    def _noise_mass(self, x: Tensor) -> float:
        """``K * Pn`` for outputs ``x`` (B, K+1)."""
        return (x.shape[1] - 1) / self.n_data

    def forward(self, x: Tensor) -> Tensor:
        """(B, K+1) probabilities -> scalar loss."""
        noise = self._noise_mass(x)
        positive, negatives = x[:, 0], x[:, 1:]
        log_data = torch.log(positive / (positive + noise + NCE_EPS))
        log_noise = torch.log(noise / (negatives + noise + NCE_EPS))
        return -(log_data.sum() + log_noise.sum()) / x.shape[0]

    def positive_probability(self, x: Tensor) -> Tensor:
        """(B, K+1) -> (B,) posterior that the positive is data: ``P0 / (P0 + K*Pn)``.

        CMC logged the raw ``P0`` instead; this is the quantity its loss drives towards 1.
        """
        positive = x[:, 0]
        return positive / (positive + self._noise_mass(x))


class NCESoftmaxLoss(nn.Module):
    """Softmax cross-entropy (InfoNCE) with the positive, column 0, as the target."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, K+1) logits -> scalar mean loss."""
        target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return F.cross_entropy(x.float(), target)

    def positive_probability(self, x: Tensor) -> Tensor:
        """(B, K+1) logits -> (B,) softmax probability of the positive."""
        return torch.softmax(x.float(), dim=1)[:, 0]
