from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CosineHead(nn.Module):
    """Class weights (no bias), renormalised on every forward pass."""

    def __init__(self, embedding_size: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        bound = math.sqrt(3.0 / embedding_size)  # Caffe "xavier", as margin_inner_product
        nn.init.uniform_(self.weight, -bound, bound)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        return cos.clamp(-1.0, 1.0)


def target_mask(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, cos.shape[1]).bool()
