import torch
from torch import nn

from objectives.memory import peak_activation_bytes
from objectives.size import weight_bytes


class _Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(100, 50)
        self.b = nn.Linear(50, 10)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_peak_activation_and_weight_bytes_of_a_known_graph(tmp_path):
    path = tmp_path / "chain.onnx"
    model = _Chain().eval()
    with torch.no_grad():
        model.a.weight[:, :50] = 0
    torch.onnx.export(model, (torch.zeros(1, 100),), str(path), dynamo=False)
    # live at once at worst: the 100-float input with the 50-float output of `a` (400 + 200 bytes);
    # the ReLU runs in place inside `a`'s fused kernel, so it adds nothing
    assert peak_activation_bytes(path) == 600
    w = weight_bytes(path)
    assert w["weight_bytes"] == 4 * (100 * 50 + 50 + 50 * 10 + 10)
    assert w["weights"] == 100 * 50 + 50 * 10 and w["nonzero_weights"] == 50 * 50 + 50 * 10


class _Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(4, 50, 3)
        self.b = nn.Conv1d(50, 10, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_int8_ptq_weights_count_what_a_runtime_keeps(tmp_path):
    """Per-channel int8: weights, int32 biases, a scale and zero point per output channel and per activation;
    not the biases' own scales and zero points, which a runtime derives (input scale x weight scale, 0)."""
    import numpy as np

    from search.stages.export import INPUT_NAME, quantize_ptq

    fp32 = tmp_path / "convs.onnx"
    torch.onnx.export(_Convs().eval(), (torch.zeros(1, 4, 20),), str(fp32), dynamo=False, input_names=[INPUT_NAME])
    int8 = quantize_ptq(fp32, tmp_path / "int8.onnx", np.random.default_rng(0).normal(size=(16, 4, 20)).astype(np.float32))
    channels = 50 + 10
    weights = 50 * 4 * 3 + 10 * 50  # 1 byte each
    per_channel = channels * (4 + 1)  # float scale, int8 zero point
    activations = 3 * (4 + 1)  # input, ReLU and output: float scale, uint8 zero point
    assert weight_bytes(int8)["weight_bytes"] == weights + 4 * channels + per_channel + activations


class _Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_fused_elementwise_ops_add_no_buffer(tmp_path):
    path = tmp_path / "conv.onnx"
    torch.onnx.export(_Wide().eval(), (torch.zeros(1, 1, 16, 16),), str(path), dynamo=False)
    # input 1x16x16 (1 KiB), conv a + ReLU in place (8 KiB), conv b output (8 KiB): at most input + a
    # or a + b live at once, never a, relu(a) and b together
    assert peak_activation_bytes(path) == 2 * 8 * 16 * 16 * 4
