"""Two towers for image–text contrastive training on a CPU: a small strided CNN for 64×64 RGB
images, a small trainable text encoder over a closed vocabulary, and a projection over frozen
sentence embeddings (e.g. all-MiniLM-L6-v2). Each returns (n × dim) embeddings; the loss
normalises them."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ImageTower(nn.Module):
    """A strided CNN for square RGB images: optionally 2×2 average pooling first (``pre_pool``),
    then ``stages`` stride-2 3×3 convolutions (width, 2·width, 4·width, …, each with ReLU and, with
    ``norm``, batch normalisation), and a linear map of the flattened features to ``dim``. The
    flattening keeps every position of the last feature map, so the embedding knows where things
    are (a caption's "left of" / "above" needs it).

    The defaults (no pre-pooling, four stages, batch norm) see 64×64 images at full resolution in
    the first layer — a small shape is 12 pixels across — at about 4 M multiply-adds per image at
    width 16; ``pre_pool=True, stages=3, norm=False`` is the 0.4 M variant that halves the
    resolution first. ``coords`` appends the pixel coordinates as two input channels
    (`CoordChannels`).
    """

    def __init__(
        self,
        dim: int = 64,
        width: int = 16,
        image_size: int = 64,
        in_channels: int = 3,
        stages: int = 4,
        norm: bool = True,
        pre_pool: bool = False,
        coords: bool = False,
    ) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"ImageTower needs at least one stage, got {stages}")
        factor = 2 ** (stages + int(pre_pool))
        if image_size % factor:
            raise ValueError(f"ImageTower needs an image size divisible by {factor}, got {image_size}")
        side = image_size // factor
        layers: list[nn.Module] = [nn.AvgPool2d(2)] if pre_pool else []
        if coords:
            layers.append(CoordChannels())
        c_in = in_channels + 2 * int(coords)
        for i in range(stages):
            c_out = width * 2 ** min(i, 2)  # width, 2·width, then 4·width for every later stage
            layers.append(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(c_in * side * side, dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CoordChannels(nn.Module):
    """Appends two constant channels to an image batch: the pixel's column and row, each scaled to
    [−1, 1] (CoordConv, Liu et al. 2018). A convolution is translation-invariant; with these
    channels its features can carry where they are exactly, not only which cell of the last feature
    map they fall in."""

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w).expand(n, 1, h, w)
        return torch.cat([x, xs, ys], dim=1)


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


class GRUTextTower(nn.Module):
    """Word embeddings of a padded token matrix (n × L, 0 = padding) read by a bidirectional GRU;
    the two directions' final states, concatenated, are mapped linearly to ``dim``. The recurrence
    lets an earlier word change how a later one is read ("a red circle left of …" against "a blue
    square left of …"), which a sum over positions passed through one hidden layer has to learn
    unit by unit."""

    def __init__(self, vocab_size: int, max_len: int = 12, dim: int = 64, emb: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.max_len = max_len
        self.words = nn.Embedding(vocab_size, emb, padding_idx=0)
        self.gru = nn.GRU(emb, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] != self.max_len:
            raise ValueError(f"tokens must have shape (n, {self.max_len}), got {tuple(tokens.shape)}")
        lengths = (tokens > 0).sum(1).clamp(min=1).cpu()  # an empty caption reads one padding token
        packed = nn.utils.rnn.pack_padded_sequence(self.words(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)  # (2, n, hidden): the forward and the backward direction's last state
        return self.out(torch.cat([h[0], h[1]], dim=1))


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
