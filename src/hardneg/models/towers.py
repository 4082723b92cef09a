"""Two towers for image–text contrastive training on a CPU: a small strided CNN for 64×64 RGB
images, a small trainable text encoder over a closed vocabulary, and a projection over frozen
sentence embeddings (e.g. all-MiniLM-L6-v2). Each returns (n × dim) embeddings; the loss
normalises them."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ImageTower(nn.Module):
    """2×2 average pooling, three stride-2 3×3 convolutions (width, 2·width, 4·width) with ReLU,
    and a linear map of the flattened (4·width × s/16 × s/16) features to ``dim``. About 0.4 M
    multiply-adds per 64×64 image at width 16: fast enough to train on two CPU cores."""

    def __init__(self, dim: int = 64, width: int = 16, image_size: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if image_size % 16:
            raise ValueError(f"ImageTower needs an image size divisible by 16, got {image_size}")
        side = image_size // 16
        self.net = nn.Sequential(
            nn.AvgPool2d(2),
            nn.Conv2d(in_channels, width, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(4 * width * side * side, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TextTower(nn.Module):
    """Word plus position embeddings of a padded token matrix (n × L, 0 = padding), concatenated
    over positions and mapped by a two-layer MLP to ``dim``: order-aware ("red circle left of a
    blue square" ≠ "blue circle left of a red square") and cheap for short captions."""

    def __init__(self, vocab_size: int, max_len: int = 12, dim: int = 64, emb: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.max_len = max_len
        self.words = nn.Embedding(vocab_size, emb, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_len, emb) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(max_len * emb, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] != self.max_len:
            raise ValueError(f"tokens must have shape (n, {self.max_len}), got {tuple(tokens.shape)}")
        h = (self.words(tokens) + self.pos) * (tokens > 0).unsqueeze(-1)
        return self.mlp(h.flatten(1))


class FrozenTextTower(nn.Module):
    """Rows of a fixed (num_texts × d₀) table of frozen sentence embeddings, looked up by index and
    mapped by a trained two-layer projection to ``dim``."""

    table: Tensor  # a buffer: saved with the module, never trained

    def __init__(self, table: Tensor, dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        if table.dim() != 2:
            raise ValueError(f"FrozenTextTower needs a (num_texts, d) table, got {tuple(table.shape)}")
        self.register_buffer("table", table.float())
        self.proj = nn.Sequential(nn.Linear(table.shape[1], hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, index: Tensor) -> Tensor:
        return self.proj(self.table[index])
