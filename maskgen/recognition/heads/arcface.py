"""ArcFace / additive angular margin (Deng et al. 2019): target logit s cos(theta + m).

Past theta = pi - m, cos(theta + m) would rise again; there the target falls back to
cos theta - m sin m (insightface's choice), which keeps the logit decreasing in theta.
"""

from __future__ import annotations

import math

import torch

from maskgen.recognition.heads.common import CosineHead, target_mask


class ArcFace(CosineHead):
    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5):
        super().__init__(embedding_size, num_classes)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cosines(embeddings)
        sin2 = 1.0 - cos * cos
        sin = torch.where(sin2 > 1e-12, sin2.clamp_min(1e-12).sqrt(), 0.0)  # d sqrt(x)/dx is infinite at x = 0
        shifted = cos * math.cos(self.margin) - sin * math.sin(self.margin)
        shifted = torch.where(cos > math.cos(math.pi - self.margin), shifted, cos - self.margin * math.sin(self.margin))
        logits = self.scale * torch.where(target_mask(cos, labels), shifted, cos)
        return logits, cos
