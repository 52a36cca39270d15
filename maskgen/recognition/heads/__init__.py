"""Margin heads, one small module each, behind get_head(name). Each maps (embeddings, labels)
to (logits for cross-entropy, plain cosines for accuracy) and owns the class weights."""

from __future__ import annotations

from maskgen.recognition.heads.arcface import ArcFace
from maskgen.recognition.heads.asoftmax import ASoftmax
from maskgen.recognition.heads.cosface import CosFace

HEADS = ("asoftmax", "cosface", "arcface")


def get_head(name: str, embedding_size: int, num_classes: int, config=None):
    """A head from its name; `config` (a TrainConfig) supplies the margin settings."""
    if name == "asoftmax":
        kw = {} if config is None else dict(
            m=config.m, base=config.lambda_base, gamma=config.lambda_gamma,
            power=config.lambda_power, lambda_min=config.lambda_min)
        return ASoftmax(embedding_size, num_classes, **kw)
    if name == "cosface":
        kw = {} if config is None else dict(scale=config.scale, margin=config.cosface_margin)
        return CosFace(embedding_size, num_classes, **kw)
    if name == "arcface":
        kw = {} if config is None else dict(scale=config.scale, margin=config.arcface_margin)
        return ArcFace(embedding_size, num_classes, **kw)
    raise ValueError(f"unknown head {name!r} (choose from {', '.join(HEADS)})")
