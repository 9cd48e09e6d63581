"""Reference workloads for sanity checks and benchmarks (random weights: latency only)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# MobileNetV1 layer plan: (output channels, stride) of each depthwise-separable block
_MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
                 (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1(width: float = 0.25, num_classes: int = 2) -> nn.Module:
    """MobileNetV1 as in MLPerf Tiny's visual wake words reference (width 0.25, 96x96x3 input)."""

    def ch(c):
        return max(8, int(c * width))

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    layers = [nn.Conv2d(3, ch(32), 3, 2, 1, bias=False), nn.BatchNorm2d(ch(32)), nn.ReLU()]
    cin = ch(32)
    for cout, stride in _MOBILENET_V1:
        layers += block(cin, ch(cout), stride)
        cin = ch(cout)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def export_mobilenet_v1(path: Path, width: float = 0.25, resolution: int = 96, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = mobilenet_v1(width).eval()
    torch.onnx.export(model, (torch.randn(1, 3, resolution, resolution),), str(path), opset_version=17,
                      dynamo=False, input_names=["x"], output_names=["logits"])
    return Path(path)
