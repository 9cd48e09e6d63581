"""Reference workloads for calibration, sanity checks and benchmarks (random weights: latency only).

The four MLPerf Tiny v1.x models, built to their published layer plans: DS-CNN for keyword spotting,
MobileNetV1-0.25 for visual wake words, ResNet-8 for image classification, and the fully connected
autoencoder for anomaly detection."""

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


def kws_dscnn(num_classes: int = 12) -> nn.Module:
    """MLPerf Tiny's keyword-spotting DS-CNN: a 10x4 stride-2 conv to 64 channels, four depthwise-separable
    blocks of 64, average pool, 12 classes; input 1x49x10 MFCC."""
    layers = [nn.Conv2d(1, 64, (10, 4), (2, 2), (5, 1), bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                   nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet8(num_classes: int = 10) -> nn.Module:
    """MLPerf Tiny's image-classification ResNet-8: a 16-channel stem and three residual stacks (16, 32, 64) on
    32x32x3 CIFAR-10 images."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), _Residual(16, 16, 1),
                         _Residual(16, 32, 2), _Residual(32, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, num_classes))


def autoencoder(inputs: int = 640) -> nn.Module:
    """MLPerf Tiny's anomaly-detection autoencoder: 640 -> 4x128 -> 8 -> 4x128 -> 640, fully connected."""
    sizes = [inputs, 128, 128, 128, 128, 8, 128, 128, 128, 128, inputs]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


# task -> (builder, input shape without the batch)
MLPERF_TINY = {"kws": (kws_dscnn, (1, 49, 10)), "vww": (mobilenet_v1, (3, 96, 96)), "ic": (resnet8, (3, 32, 32)),
               "ad": (autoencoder, (640,))}


def export_reference(task: str, path: Path, seed: int = 0) -> Path:
    """The MLPerf Tiny model of ``task`` as ONNX (random weights, batch 1)."""
    builder, shape = MLPERF_TINY[task]
    torch.manual_seed(seed)
    torch.onnx.export(builder().eval(), (torch.randn(1, *shape),), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["logits"])
    return Path(path)


def export_mobilenet_v1(path: Path, width: float = 0.25, resolution: int = 96, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = mobilenet_v1(width).eval()
    torch.onnx.export(model, (torch.randn(1, 3, resolution, resolution),), str(path), opset_version=17,
                      dynamo=False, input_names=["x"], output_names=["logits"])
    return Path(path)
