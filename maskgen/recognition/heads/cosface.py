"""CosFace / large margin cosine loss (Wang et al. 2018): target logit s (cos theta - m)."""

from __future__ import annotations

import torch

from maskgen.recognition.heads.common import CosineHead, target_mask


class CosFace(CosineHead):
    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35):
        super().__init__(embedding_size, num_classes)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cosines(embeddings)
        logits = self.scale * torch.where(target_mask(cos, labels), cos - self.margin, cos)
        return logits, cos
