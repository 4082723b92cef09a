"""Encoders and projection heads for contrastive training (SimCLR layout, Chen et al. 2020):
``z = g(f(x))`` with encoder f (features used for evaluation) and projection head g (used by the loss)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hardneg.importpath import import_object, is_import_path


class SmallCNN(nn.Module):
    """A small conv net for 1-channel 28×28 (Fashion-MNIST) or 8×8 (digits) images.

    28×28: three 3×3 conv blocks (width, 2·width, 4·width) with BatchNorm+ReLU, stride-2 pooling after the
    first two, global average pooling. 8×8: the same without the pooling. Output: ``4·width`` features.
    ``stem_stride=2`` makes the first convolution strided instead of pooled (4× fewer operations in the
    first block; the fast setting for CPU training on 28×28).
    """

    def __init__(self, in_channels: int = 1, width: int = 32, image_size: int = 28, stem_stride: int = 1) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        pool = image_size >= 16

        def block(i: int, o: int, down: bool, stride: int = 1) -> list[nn.Module]:
            layers: list[nn.Module] = [
                nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
            ]
            if down:
                layers.append(nn.MaxPool2d(2))
            return layers

        self.net = nn.Sequential(
            *block(in_channels, width, pool and stem_stride == 1, stem_stride),
            *block(width, 2 * width, pool),
            *block(2 * width, 4 * width, False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLP(nn.Module):
    """Flatten, then ``depth`` Linear+BatchNorm+ReLU layers of size ``hidden``; ``out_dim = hidden``."""

    def __init__(self, in_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            d = hidden
        self.net = nn.Sequential(*layers)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """SimCLR's 2-layer MLP head g: Linear → BatchNorm → ReLU → Linear (output not normalised here;
    the losses L2-normalise)."""

    def __init__(self, in_dim: int, hidden: int = 128, out_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ContrastiveModel(nn.Module):
    """Encoder f plus head g. ``forward(x)`` returns the projection z = g(f(x)); ``features(x)`` returns f(x),
    the representation that kNN / linear probes evaluate."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _out_dim(encoder: nn.Module, sample_shape: tuple[int, ...]) -> int:
    d = getattr(encoder, "out_dim", None)
    if isinstance(d, int):
        return d
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        d = int(encoder(torch.zeros(2, *sample_shape)).shape[-1])
    encoder.train(was)
    return d


def build_model(
    encoder: str | nn.Module,
    sample_shape: tuple[int, ...],
    *,
    width: int = 32,
    stem_stride: int = 1,
    hidden: int = 256,
    depth: int = 2,
    head_hidden: int = 128,
    proj_dim: int = 64,
) -> ContrastiveModel:
    """Build encoder + head. ``encoder`` is ``"cnn"``, ``"mlp"``, ``"module.path:factory"`` (a callable
    taking ``sample_shape`` and returning an ``nn.Module``), or an ``nn.Module``."""
    if isinstance(encoder, nn.Module):
        enc = encoder
    elif encoder == "cnn":
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise ValueError(f"the cnn encoder needs square (C, H, W) images, got sample shape {sample_shape}")
        enc = SmallCNN(sample_shape[0], width, sample_shape[1], stem_stride)
    elif encoder == "mlp":
        enc = MLP(int(torch.tensor(sample_shape).prod()), hidden, depth)
    elif is_import_path(encoder):
        enc = import_object(encoder, "model.encoder")(sample_shape)
        if not isinstance(enc, nn.Module):
            raise TypeError(f"model.encoder factory {encoder!r} must return an nn.Module, got {type(enc).__name__}")
    else:
        raise ValueError(f"model.encoder must be 'cnn', 'mlp' or 'module:factory', got {encoder!r}")
    return ContrastiveModel(enc, ProjectionHead(_out_dim(enc, sample_shape), head_hidden, proj_dim))


def build_model_from_config(m: Any, sample_shape: tuple[int, ...]) -> ContrastiveModel:
    """`build_model` from a validated ``model`` config section (``hardneg.runs.config.ModelConfig``;
    not imported here, as runs and models sit on one layer)."""
    return build_model(
        m.encoder,
        tuple(sample_shape),
        width=m.width,
        stem_stride=m.stem_stride,
        hidden=m.hidden,
        depth=m.depth,
        head_hidden=m.head_hidden,
        proj_dim=m.proj_dim,
    )
