"""Networks: the image -> parameter regressors (InverseFaceNet Sec. 6.1; MoFA's encoder).

Both take a masked face crop ``(B, 3, N, N)`` with colours in [-0.5, 0.5] (Sec. 6.1) and return
``(B, out_dim)`` parameters.  No ImageNet weights can be downloaded here, so they train from scratch;
``width`` scales every channel count so that the ``ci`` and ``cpu`` profiles fit a 2-core CPU, and
``width=1`` is the paper's size (AlexNet; our ResNet is a ResNet-18-style stack, the paper used
ResNet-101).  As in the paper the last fully-connected layer has biases 0 and weights ~ N(0, 0.01)
(Caffe's ``gaussian`` filler, standard deviation 0.01).

``landmarks=68`` gives a network a second input, not in the papers: the crop's 68 landmarks
``(B, 136)`` (:func:`facelib.data.corpus.landmark_features`: centred on their box, divided by its side),
read by a small MLP whose features join the image features before the fully connected layers and,
through a linear head of their own, add to the output (a read-out that
:func:`facelib.inversefacenet.pretrain_landmarks` trains on landmarks alone, which cost no rendering).
The Sec. 6.1 crop is *made from* these points, and they hold geometry the 64-pixel crop shows faintly
(``benchmarks/landmark_regressor.py``); a network with it is called ``net(x, l)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AlexNet", "ResNet", "Standardized", "unwrap", "LandmarkBranch", "takes_landmarks", "make_encoder", "init_last_layer",
           "count_parameters"]


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width)))


def init_last_layer(layer: nn.Linear, std: float = 0.01) -> nn.Linear:
    """Sec. 6.1: biases 0, weights ~ N(0, std) (in place); returns ``layer``."""
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.zeros_(layer.bias)
    return layer


def _check_input(x: torch.Tensor, size: int) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"input has shape {tuple(x.shape)}; expected (B, 3, {size}, {size}) RGB crops")
    if x.shape[-1] < 32 or x.shape[-2] < 32:
        raise ValueError(f"input is {x.shape[-2]}x{x.shape[-1]} pixels; the networks need at least 32x32")


class LandmarkBranch(nn.Module):
    """The landmark input's reader: ``(B, 2 K) -> (B, width)`` features, two fully connected layers with
    ReLU, and ``head``, a linear read-out of them ``(B, width) -> (B, out_dim)`` (weights 0 at the start:
    the branch adds nothing to the output until it is trained).

    ``landmarks``: K, the number of points (68); ``width``: its feature count; ``out_dim``: the network's
    outputs.  ``forward(l)`` checks that ``l`` is ``(B, 2 K)`` and returns the features."""

    def __init__(self, landmarks: int, width: int = 256, out_dim: int = 1):
        super().__init__()
        if isinstance(landmarks, bool) or not isinstance(landmarks, int) or landmarks < 1:
            raise ValueError(f"landmarks must be a positive number of points; got {landmarks!r}")
        self.landmarks, self.width = landmarks, int(width)
        self.mlp = nn.Sequential(nn.Linear(2 * landmarks, self.width), nn.ReLU(inplace=True),
                                 nn.Linear(self.width, self.width), nn.ReLU(inplace=True))
        self.head = nn.Linear(self.width, out_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, l: torch.Tensor) -> torch.Tensor:
        if l.ndim != 2 or l.shape[1] != 2 * self.landmarks:
            raise ValueError(f"landmark input has shape {tuple(l.shape)}; expected (B, {2 * self.landmarks}) "
                             "(facelib.data.corpus.landmark_features)")
        return self.mlp(l)


def unfreeze(module: nn.Module) -> list:
    """Make every parameter of ``module`` trainable; returns their former ``requires_grad`` flags, for
    :func:`restore_grad` (a branch frozen for a network's training is pre-trained all the same)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(True)
    return flags


def restore_grad(module: nn.Module, flags: list) -> None:
    """Set the ``requires_grad`` flags :func:`unfreeze` returned back on ``module``'s parameters."""
    for p, f in zip(module.parameters(), flags):
        p.requires_grad_(f)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One step of ``opt`` on ``loss`` (gradients cleared first); returns the loss as a number."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _branch(landmarks: int, width: int, out_dim: int):
    """``(module or None, its feature count)`` for a network's ``landmarks`` argument (0: no branch)."""
    if landmarks == 0:
        return None, 0
    b = LandmarkBranch(landmarks, width, out_dim)
    return b, b.width


def _join(net: nn.Module, h: torch.Tensor, l: torch.Tensor | None) -> tuple:
    """Image features ``h (B, F)`` joined with the landmark branch's features ``f`` of ``l``, if the net
    has a branch: ``(cat(h, f) (B, F + width), f)``; else ``(h, None)``."""
    if net.landmark_branch is None:
        if l is not None:
            raise ValueError("this network has no landmark input; call it as net(x)")
        return h, None
    if l is None:
        raise ValueError("this network takes the crop's landmarks as a second input; call it as net(x, l)")
    if l.shape[0] != h.shape[0]:
        raise ValueError(f"{h.shape[0]} images but {l.shape[0]} landmark sets")
    f = net.landmark_branch(l.to(h))
    return torch.cat([h, f], 1), f


def _output(net: nn.Module, y: torch.Tensor, f: torch.Tensor | None) -> torch.Tensor:
    """The image path's output ``y (B, out_dim)`` plus the landmark head's read-out of ``f`` (if any)."""
    return y if f is None else y + net.landmark_branch.head(f)


def takes_landmarks(net: nn.Module) -> bool:
    """Whether ``net`` is called as ``net(x, l)`` with the crop's landmark features (``landmarks > 0``)."""
    return getattr(net, "n_landmarks", 0) > 0


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al.) with the last layer resized to ``out_dim`` (InverseFaceNet Sec. 6.1).

    conv 11x11/4 - pool - conv 5x5 - pool - conv 3x3 x3 - pool - fc - fc - fc(out_dim), ReLU and
    dropout as in the original; the max pools pad by one pixel and an adaptive pool to 6x6 follows, so
    inputs down to 32 pixels work (at 227 pixels the feature maps are one pixel larger than AlexNet's).

    Args:
        out_dim: number of outputs (350 for the paper's face space).
        size: the input side N (checked, for error messages only; any N >= 32 works).
        width: channel multiplier (1 = AlexNet: 96, 256, 384, 384, 256 channels and 4096-wide fc).
        fc: width of the two hidden fully-connected layers (default ``4096 * width``).
        dropout: dropout probability of the hidden fc layers.
        norm: ``"none"`` (the original AlexNet) or ``"batch"`` (batch normalisation after every
            convolution and hidden fc layer, Ioffe & Szegedy 2015: trains from scratch in far fewer
            iterations, which is what a CPU budget needs; the book states the deviation).
        stride: stride of the first 11x11 convolution (AlexNet: 4, made for 227-pixel inputs, where
            its map is 55 cells wide).  On a 64-pixel crop stride 4 leaves a 15-cell map, one cell per
            4 pixels, before the first pool; stride 2 keeps AlexNet's cells-per-face ratio closer
            (31 cells at 64 pixels) at about 4x the convolution cost.
        landmarks, landmark_width: a second input of ``landmarks`` points (0: none; see the module
            docstring), read by a :class:`LandmarkBranch` of that width: its features join the image
            features before the first fc layer, and its head's read-out adds to the output.
    Shapes: ``(B, 3, N, N) [, (B, 2 landmarks)] -> (B, out_dim)``.
    """

    def __init__(self, out_dim: int, size: int = 240, width: float = 1.0, fc: int | None = None,
                 dropout: float = 0.5, norm: str = "none", stride: int = 4, landmarks: int = 0,
                 landmark_width: int = 256):
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1; got {out_dim}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive integer; got {stride!r}")
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch'; got {norm!r}")
        c = [_ch(k, width) for k in (96, 256, 384, 384, 256)]
        fc = fc or _ch(4096, width)
        self.size = size
        bn = (lambda k: nn.BatchNorm2d(k)) if norm == "batch" else (lambda k: nn.Identity())
        bn1 = (lambda k: nn.BatchNorm1d(k)) if norm == "batch" else (lambda k: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 11, stride=stride, padding=5 if stride < 4 else 2), bn(c[0]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(c[0], c[1], 5, padding=2), bn(c[1]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(c[1], c[2], 3, padding=1), bn(c[2]), nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, padding=1), bn(c[3]), nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, padding=1), bn(c[4]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.landmark_branch, extra = _branch(landmarks, landmark_width, out_dim)
        self.n_landmarks = int(landmarks)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c[4] * 36 + extra, fc), bn1(fc), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(fc, fc), bn1(fc), nn.ReLU(inplace=True),
        )
        self.last = init_last_layer(nn.Linear(fc, out_dim))

    def forward(self, x: torch.Tensor, l: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, self.size)
        h, f = _join(self, self.pool(self.features(x)).flatten(1), l)
        return _output(self, self.last(self.classifier(h)), f)


class _Block(nn.Module):
    """ResNet basic block: two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """A ResNet (He et al.) regressor: stem 7x7/2 + pool, four stages of basic blocks, global average
    pool, fc(out_dim) (the paper's ResNet-101 variant of Sec. 8.1, made smaller for a CPU).

    Args:
        out_dim: number of outputs.  size: input side N (for messages).
        width: channel multiplier (1: 64, 128, 256, 512 channels as ResNet-18).
        blocks: basic blocks per stage (``(2, 2, 2, 2)`` is ResNet-18).
        spatial: side of the final pooled map that the fc layer reads (1: global average pool, as
            ResNet; 2 or more keep where in the image the features are, which regressing a face's
            position to a pixel needs).
        landmarks, landmark_width: a second input, as :class:`AlexNet`'s (joined before the fc layer).
    Shapes: ``(B, 3, N, N) [, (B, 2 landmarks)] -> (B, out_dim)``.
    """

    def __init__(self, out_dim: int, size: int = 240, width: float = 1.0, blocks=(2, 2, 2, 2), spatial: int = 1,
                 landmarks: int = 0, landmark_width: int = 256):
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1; got {out_dim}")
        c = [_ch(k, width) for k in (64, 128, 256, 512)]
        self.size = size
        layers = [nn.Conv2d(3, c[0], 7, 2, 3, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, 2, 1)]
        cin = c[0]
        for i, (cout, n) in enumerate(zip(c, blocks)):
            for j in range(n):
                layers.append(_Block(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        if int(spatial) < 1:
            raise ValueError(f"spatial must be >= 1; got {spatial!r}")
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(int(spatial)))
        self.landmark_branch, extra = _branch(landmarks, landmark_width, out_dim)
        self.n_landmarks = int(landmarks)
        self.last = init_last_layer(nn.Linear(cin * int(spatial) ** 2 + extra, out_dim))

    def forward(self, x: torch.Tensor, l: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, self.size)
        h, f = _join(self, self.features(x).flatten(1), l)
        return _output(self, self.last(h), f)


class Standardized(nn.Module):
    """A regressor whose outputs are in units of the training prior: ``theta = mean + std * net(x)``.

    The parameters of Eq. 1 live on scales from 0.01 (SH coefficients) to 40 degrees and to the
    expression range; a network whose last layer starts at N(0, 0.01) (Sec. 6.1) then starts by
    predicting ~0 for every one of them, far from the prior's mean for the mouth and the light, and
    must learn output scales 100x apart.  Dividing by the prior's standard deviation is a fixed affine
    output layer (no parameters to learn, the loss is still computed on ``theta``): the network starts
    at the prior's mean and every output has unit scale.

    ``net``: ``(B, 3, N, N) -> (B, m)``; ``mean``, ``std``: ``(m,)``.  Shapes: ``(B, 3, N, N) -> (B, m)``
    (a net with a landmark input gets its second argument passed on).
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must be the same (m,)")
        if not bool((std > 0).all()):
            raise ValueError("std must be positive")
        self.net = net
        self.size = getattr(net, "size", None)
        self.n_landmarks = getattr(net, "n_landmarks", 0)
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * self.net(x, *extra)


def unwrap(net: nn.Module) -> nn.Module:
    """The regressor inside a :class:`Standardized` (its layers: ``features``, ``last``,
    ``landmark_branch``, ...); any other module as it is."""
    return net.net if isinstance(net, Standardized) else net


def make_encoder(kind: str, out_dim: int, size: int, width: float = 1.0, **kwargs) -> nn.Module:
    """``"alexnet"`` -> :class:`AlexNet`, ``"resnet"`` -> :class:`ResNet` (``kwargs`` passed on).

    Input ``(B, 3, size, size)`` in [-0.5, 0.5], output ``(B, out_dim)``.
    """
    kinds = {"alexnet": AlexNet, "resnet": ResNet}
    if kind not in kinds:
        raise ValueError(f"unknown encoder {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind](out_dim, size=size, width=width, **kwargs)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
