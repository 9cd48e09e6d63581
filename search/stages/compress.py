"""Compression stage: magnitude pruning (unstructured or structured) and QAT preparation.

Pruning is gradual: prune a share, fine-tune, repeat until the requested sparsity
(a cubic schedule: large steps while the network is redundant, small ones near the
end), then make the masks permanent so the exported graph is plain dense tensors
with zeros (unstructured) or genuinely smaller layers (structured). Unstructured
pruning ranks weights across layers by LAMP scores, so that small layers (a
depthwise 3x3 filter has 9 weights) are not emptied by a global magnitude cut.

Sparsity means, per mode, what the mode controls exactly:
- unstructured: the fraction of zero weights in the conv and linear layers;
- structured: the fraction of output channels removed from the prunable conv layers.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils import prune

from search.candidate import Candidate
from search.data import Dataset
from search.stages.train import BATCH_SIZE, LEARNING_RATE, fit

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
# Fine-tuning after a pruning step restarts at twice the training rate, annealed to zero: the surviving weights must
# take over from the removed ones (as learning-rate rewinding does; Renda et al., ICLR 2020). Measured here at the
# default budget, 90% unstructured lost 11.9 / 15.0 points (digits / mnist1d) fine-tuned at 3e-3, 3.3 / 6.4 at this
# rate; 75% of the channels 4.4 / 18.6 against 2.5 / 9.0 (NOTES.md).
PRUNE_FINETUNE_LR = 2 * LEARNING_RATE


def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, _PRUNABLE)]


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over conv and linear layers."""
    total = zeros = 0
    for module, name in _weights(model):
        w = getattr(module, name)
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def conv_channels(model: nn.Module) -> int:
    return sum(m.out_channels for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)))


def prune_model(
    model: nn.Module,
    candidate: Candidate,
    dataset: Dataset,
    teacher: nn.Module | None = None,
) -> tuple[nn.Module, float]:
    """Prune to ``candidate.sparsity`` with fine-tuning in between; returns the model and measured sparsity."""
    if candidate.sparsity <= 0:
        return model, 0.0
    if candidate.pruning == "structured":
        return _prune_structured(model, candidate, dataset, teacher)
    return _prune_unstructured(model, candidate, dataset, teacher)


def cubic_schedule(final: float, steps: int) -> list[float]:
    """Sparsity after each of ``steps`` pruning steps, starting from 0 (Zhu and Gupta, "To prune, or not to prune",
    2017): most of it early, while fine-tuning can still recover, and the last steps small."""
    return [final * (1 - (1 - i / steps) ** 3) for i in range(steps + 1)]


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """Layer-adaptive magnitude scores (Lee et al., ICLR 2021): a weight's square over the sum of the squares of the
    layer's weights at least as large. Comparable across layers, and the largest weight of every layer scores 1."""
    flat = weight.detach().abs().flatten()
    order = torch.argsort(flat)
    squares = flat[order] ** 2
    tail = torch.flip(torch.cumsum(torch.flip(squares, [0]), 0), [0])
    scores = torch.empty_like(flat)
    scores[order] = squares / tail.clamp_min(torch.finfo(squares.dtype).tiny)
    return scores.view_as(weight)


def _finetune(model, candidate, dataset, teacher, step):
    b = candidate.budget
    if b.finetune_epochs:
        fit(
            model, dataset, b.finetune_epochs, teacher=teacher, temperature=candidate.temperature,
            alpha=candidate.alpha, seed=candidate.seed + 1000 + step, lr=PRUNE_FINETUNE_LR,
        )


def _prune_unstructured(model, candidate, dataset, teacher):
    params = _weights(model)
    total = sum(getattr(m, n).numel() for m, n in params)
    steps = candidate.budget.prune_steps
    schedule = cubic_schedule(candidate.sparsity, steps)
    pruned = 0
    for step in range(1, steps + 1):
        target = int(round(schedule[step] * total))
        scores = {(module, name): lamp_scores(getattr(module, name)) for module, name in params}
        # global_unstructured counts among weights not yet pruned, so pass the increment.
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=target - pruned,
                                  importance_scores=scores)
        pruned = target
        _finetune(model, candidate, dataset, teacher, step)  # masks keep pruned weights at zero
    for module, name in params:
        prune.remove(module, name)
    return model, weight_sparsity(model)


def _prune_structured(model, candidate, dataset, teacher):
    import torch_pruning as tp

    example = torch.from_numpy(dataset.x_train[:1])
    before = conv_channels(model)
    steps = candidate.budget.prune_steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=candidate.sparsity,
            iterative_steps=steps,
            iterative_pruning_ratio_scheduler=cubic_schedule,
            ignored_layers=[model.classifier],
        )
        for step in range(1, steps + 1):
            pruner.step()
            _finetune(model, candidate, dataset, teacher, step)
    return model, 1.0 - conv_channels(model) / before


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Where weights are zero now; re-applied after optimizer steps so QAT keeps the sparsity."""
    return {n: (p != 0) for n, p in model.named_parameters() if n.endswith("weight") and (p == 0).any()}


def reapply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    if not masks:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def prepare_qat(model: nn.Module, dataset: Dataset) -> nn.Module:
    """Insert int8 fake quantization (torch.ao FX QAT, non-fused ``FakeQuantize``, which the ONNX exporter turns
    into QuantizeLinear/DequantizeLinear pairs)."""
    from torch.ao.quantization import QConfigMapping, default_qat_qconfig
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    example = (torch.from_numpy(dataset.x_train[:1]),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_qat_fx(model.train(), QConfigMapping().set_global(default_qat_qconfig), example)


def freeze_qat(qat: nn.Module) -> nn.Module:
    """Freeze the scales so export sees what was trained (or observed), and fold each batch norm into its conv.

    FX QAT trains conv+bn as one fused module that still runs the batch norm (and a division by its scale) at
    inference; exported as is, the graph keeps both, which every runtime then computes. Folded, the graph is the
    deployed one: the fake-quantised weight is the one QAT trained (it already quantised the folded weight)."""
    from torch.ao.quantization import disable_observer

    qat.apply(disable_observer)
    return _fold_qat_batchnorm(qat.eval())


def _fold_qat_batchnorm(qat: nn.Module) -> nn.Module:
    import torch.ao.nn.intrinsic.qat as fused
    import torch.ao.nn.qat as plain

    folded_kind = {fused.ConvBnReLU1d: fused.ConvReLU1d, fused.ConvBn1d: plain.Conv1d,
                   fused.ConvBnReLU2d: fused.ConvReLU2d, fused.ConvBn2d: plain.Conv2d}
    for name, conv in list(qat.named_modules()):
        kind = folded_kind.get(type(conv))
        if kind is None:
            continue
        bn = conv.bn
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(factor)
        new = kind(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                   dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
                   qconfig=conv.qconfig)
        with torch.no_grad():
            new.weight.copy_(conv.weight * factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
            new.bias.copy_(bn.bias + (bias - bn.running_mean) * factor)
        new.weight_fake_quant = conv.weight_fake_quant
        parent, _, leaf = name.rpartition(".")
        setattr(qat.get_submodule(parent) if parent else qat, leaf, new.eval())
    return qat


def qat_as_float(qat: nn.Module) -> nn.Module:
    """A frozen QAT model as the float model a converter that quantizes for itself takes (TFLite Micro's): each
    weight replaced by its fake-quantised value, the one QAT trained with, and every fake quantization removed.

    torch.export cannot take FX's fake-quant modules (their enabled flags are data-dependent branches). The
    converter then sets activation ranges by calibration, as for PTQ; on digits at widths 0.25-0.5 the converted
    model scored within 0.6 points of the QAT model in torch (NOTES.md)."""
    import copy

    from torch.ao.quantization import FakeQuantizeBase

    plain = copy.deepcopy(qat)
    for module in plain.modules():
        if isinstance(getattr(module, "weight_fake_quant", None), FakeQuantizeBase):
            with torch.no_grad():
                module.weight.copy_(module.weight_fake_quant(module.weight))
            module.weight_fake_quant = nn.Identity()
    # FX may register one activation observer under several names: each name is replaced
    for name, module in list(plain.named_modules(remove_duplicate=False)):
        if isinstance(module, FakeQuantizeBase):
            parent, _, leaf = name.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, leaf, nn.Identity())
    return plain


def quantization_aware_finetune(
    model: nn.Module, candidate: Candidate, dataset: Dataset, teacher: nn.Module | None = None
) -> nn.Module:
    """Insert fake quantization (int8, straight-through estimator) and fine-tune; batch-norm statistics are frozen
    after the first third of the steps and the quantization scales after two thirds, as torch's QAT recipe does, so
    the last steps train the weights for the statistics and scales that ship. Left moving to the end, they drifted:
    on 32x32 images stored 0-255, the third fine-tuning epoch took validation accuracy from 0.999 to 0.942, where the
    frozen schedule kept 1.000 (NOTES.md)."""
    import torch.ao.nn.intrinsic.qat as fused
    from torch.ao.quantization import disable_observer

    qat = prepare_qat(model, dataset)
    masks = zero_masks(qat)
    epochs = max(1, candidate.budget.finetune_epochs)
    steps = epochs * -(-len(dataset.x_train) // BATCH_SIZE)
    done = 0

    def after_step() -> None:
        nonlocal done
        reapply_masks(qat, masks)
        done += 1
        if done == max(1, steps // 3):
            qat.apply(fused.freeze_bn_stats)
        if done == max(1, 2 * steps // 3):
            qat.apply(disable_observer)

    fit(
        qat, dataset, epochs, teacher=teacher, temperature=candidate.temperature, alpha=candidate.alpha,
        seed=candidate.seed + 2000, lr=3e-3, after_step=after_step,
    )
    return freeze_qat(qat)
