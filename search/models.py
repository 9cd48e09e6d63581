"""The tiny architecture family: a depthwise-separable CNN with a width multiplier.

One class serves signals (1-D) and images (2-D); the dataset's sample shape
picks which. Every conv is followed by batch norm and ReLU, as in the MLPerf
Tiny DS-CNN: without it, these narrow stacks of ReLUs often die in training.
The ONNX exporter folds batch norm into the convs in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

STEM_CHANNELS = 16
# (output channels, stride) of each depthwise-separable block at width 1.0
BLOCKS = ((32, 2), (64, 2), (64, 1))
TEACHER_WIDTH = 2.0
MIN_CHANNELS = 4


def scaled(channels: int, width: float) -> int:
    return max(MIN_CHANNELS, int(round(channels * width)))


def _conv(dims: int):
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _norm(dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)


def _pool(dims: int):
    return nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)


class DSCNN(nn.Module):
    """Stem conv, depthwise-separable blocks, global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0):
        super().__init__()
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims must be 1 or 2; got {spatial_dims}.")
        conv = _conv(spatial_dims)
        kernel = 5 if spatial_dims == 1 else 3
        pad = kernel // 2
        channels = scaled(STEM_CHANNELS, width)
        layers: list[nn.Module] = [
            conv(in_channels, channels, kernel, padding=pad, bias=False), _norm(spatial_dims, channels), nn.ReLU()
        ]
        for out_channels, stride in BLOCKS:
            out_channels = scaled(out_channels, width)
            layers += [
                conv(channels, channels, kernel, stride=stride, padding=pad, groups=channels, bias=False),
                _norm(spatial_dims, channels),
                nn.ReLU(),
                conv(channels, out_channels, 1, bias=False),
                _norm(spatial_dims, out_channels),
                nn.ReLU(),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = _pool(spatial_dims)
        self.classifier = nn.Linear(channels, num_classes)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_model(sample_shape: tuple[int, ...], num_classes: int, width: float) -> DSCNN:
    """The DS-CNN for a dataset's channel-first sample shape."""
    return DSCNN(sample_shape[0], num_classes, spatial_dims=len(sample_shape) - 1, width=width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
