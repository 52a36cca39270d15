"""A-Softmax (SphereFace, Liu et al. 2017): multiplicative angular margin m.

Target logit ||x|| (lambda cos(theta) + psi(theta)) / (1 + lambda),
psi(theta) = (-1)^k cos(m theta) - 2k, k = floor(m theta / pi); other logits ||x|| cos(theta).
lambda = max(lambda_min, base (1 + gamma iteration)^-power) anneals from plain softmax to the
margin; `iteration` is a buffer (saved with the head) advanced on every training forward.
cos(m theta) is the Chebyshev polynomial T_m(cos theta), so no arccos enters the gradient and
it stays finite at theta = 0 and pi.
"""

from __future__ import annotations

import math

import torch

from maskgen.recognition.heads.common import CosineHead, target_mask


def chebyshev(m: int, c: torch.Tensor) -> torch.Tensor:
    """cos(m theta) from c = cos(theta)."""
    previous, current = torch.ones_like(c), c
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2 * c * current - previous
    return current


def psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """(-1)^k cos(m theta) - 2k: monotone decreasing on [0, pi], continuous at every k."""
    # k = floor(m theta / pi) = how many of cos(j pi / m), j = 1..m-1, cos theta lies at or below
    k = sum(((cos <= math.cos(j * math.pi / m)).to(cos.dtype) for j in range(1, m)), torch.zeros_like(cos))
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * chebyshev(m, cos) - 2.0 * k


class ASoftmax(CosineHead):
    def __init__(self, embedding_size: int, num_classes: int, m: int = 4, base: float = 1000.0,
                 gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0):
        super().__init__(embedding_size, num_classes)
        if m < 1:
            raise ValueError(f"A-Softmax margin m must be >= 1, got {m}")
        self.m, self.base, self.gamma, self.power, self.lambda_min = m, base, gamma, power, lambda_min
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def lambda_now(self) -> torch.Tensor:
        """lambda at the current iteration, computed on the device (no host sync per step)."""
        annealed = self.base * (1.0 + self.gamma * self.iteration.double()) ** -self.power
        return annealed.clamp_min(self.lambda_min).float()

    def current_lambda(self) -> float:
        return float(self.lambda_now())

    def margin_logits(self, embeddings: torch.Tensor, labels: torch.Tensor, lam) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cosines(embeddings)
        norm = embeddings.norm(dim=1, keepdim=True)
        target = (lam * cos + psi(cos, self.m)) / (1.0 + lam)
        logits = norm * torch.where(target_mask(cos, labels), target, cos)
        return logits, cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.margin_logits(embeddings, labels, self.lambda_now())
        if self.training:
            self.iteration += 1
        return out
