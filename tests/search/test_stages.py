"""Each knob really changes the model; each stage is called alone."""

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from search.candidate import Candidate
from search.models import build_model, count_parameters
from search.stages.compress import prune_model, quantization_aware_finetune, weight_sparsity
from search.stages.export import _torch_export, export_onnx, ort_session
from search.stages.train import (distillation_loss, fit, get_teacher, load_teacher, teacher_path,
                                 torch_accuracy, train_teacher)


def test_distillation_loss_matches_hand_computation():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0]])
    y = torch.tensor([0])
    T, a = 2.0, 0.3
    ps = [math.exp(v / T) for v in (2.0, 0.0, -1.0)]
    ps = [p / sum(ps) for p in ps]
    pt = [math.exp(v / T) for v in (1.0, 1.0, 0.0)]
    pt = [p / sum(pt) for p in pt]
    kl = sum(q * math.log(q / p) for q, p in zip(pt, ps))  # KL(teacher || student)
    e = [math.exp(v) for v in (2.0, 0.0, -1.0)]
    ce = -math.log(e[0] / sum(e))
    expected = a * ce + (1 - a) * T * T * kl
    assert float(distillation_loss(s, y, t, T, a)) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(s, y, t, T, 1.0)) == pytest.approx(ce, rel=1e-6)  # alpha=1: no distillation


def test_wider_models_have_more_parameters():
    counts = [count_parameters(build_model((1, 8, 8), 10, w)) for w in (0.25, 0.5, 1.0, 2.0)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert build_model((1, 40), 10, 1.0).spatial_dims == 1


def test_training_learns_and_teacher_is_cached(digits, tmp_path):
    torch.manual_seed(0)
    model = fit(build_model(digits.sample_shape, 10, 0.5), digits, 3)
    assert torch_accuracy(model, digits.x_val, digits.y_val) > 0.5  # chance is 0.1
    path = teacher_path(digits, 0, tmp_path, 2)
    assert list(train_teacher(digits, 0, tmp_path, 2)) == [1, 2]  # each epoch as it ends: progress to show
    assert path.exists()
    mtime = path.stat().st_mtime_ns
    assert list(train_teacher(digits, 0, tmp_path, 2)) == []  # cached: nothing to train
    teacher, again = get_teacher(digits, seed=0, cache_dir=tmp_path, epochs=2), load_teacher(digits, path)
    assert path.stat().st_mtime_ns == mtime  # loaded, not retrained
    assert not teacher.training
    x = torch.from_numpy(digits.x_val[:4])
    torch.testing.assert_close(teacher(x), again(x))


def test_two_workers_needing_the_teacher_at_once_train_it_once(digits, tmp_path):
    """Workers run seeded, so anything they draw at random is equal: the cache must not depend on it."""
    import subprocess
    import sys

    script = ("import numpy as np, sys; from pathlib import Path; np.random.seed(0); "
              "from search.data import load_dataset; from search.stages.train import get_teacher; "
              "get_teacher(load_dataset('digits'), 0, Path(sys.argv[1]), epochs=2); print('ok')")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in outcomes]
    assert sorted(f.suffix for f in tmp_path.iterdir()) == [".lock", ".pt"]  # no temporary file left


@pytest.mark.parametrize("sparsity", [0.3, 0.75])
def test_unstructured_sparsity_matches_request(digits, tiny_budget, sparsity):
    torch.manual_seed(0)
    model = fit(build_model(digits.sample_shape, 10, 1.0), digits, 1)
    c = Candidate(sparsity=sparsity, pruning="unstructured", budget=tiny_budget)
    model, measured = prune_model(model, c, digits)
    assert abs(measured - sparsity) <= 0.01
    assert abs(weight_sparsity(model) - sparsity) <= 0.01
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())  # masks made permanent


def test_structured_pruning_removes_channels(digits, tiny_budget):
    torch.manual_seed(0)
    model = fit(build_model(digits.sample_shape, 10, 1.0), digits, 1)
    before = count_parameters(model)
    model, measured = prune_model(model, Candidate(sparsity=0.5, pruning="structured", budget=tiny_budget), digits)
    assert abs(measured - 0.5) <= 0.02  # channel granularity: 1 channel of the narrowest layer
    assert count_parameters(model) < 0.5 * before
    assert model(torch.from_numpy(digits.x_val[:2])).shape == (2, 10)


def test_zeroed_weights_shrink_only_the_compressed_file_removed_channels_shrink_the_weights(digits, tmp_path):
    """What each kind of sparsity changes in size: the runtimes hold weights dense, so 90% zeroed weights keep
    their bytes and lower only the gzip-compressed file; half the channels removed lower the weights too."""
    from objectives.size import gzip_bytes, weight_bytes
    from search.candidate import Budget

    no_finetuning = Budget(finetune_epochs=0, prune_steps=1)  # the magnitudes decide; nothing is trained
    files = {}
    for label, sparsity, mode in (("dense", 0.0, "unstructured"), ("zeroed", 0.9, "unstructured"),
                                  ("channels", 0.5, "structured")):
        torch.manual_seed(0)
        c = Candidate(sparsity=sparsity, pruning=mode, budget=no_finetuning)
        model, _ = prune_model(build_model(digits.sample_shape, 10, 1.0), c, digits)
        files[label] = export_onnx(model, c, digits, tmp_path / f"{label}.onnx")
    weights = {k: weight_bytes(p)["weight_bytes"] for k, p in files.items()}
    packed = {k: gzip_bytes(p) for k, p in files.items()}
    assert weights["zeroed"] == weights["dense"]
    assert packed["zeroed"] < packed["dense"] / 3  # a tenth of the values left, plus where they are
    assert weights["channels"] < 0.5 * weights["dense"] and packed["channels"] < 0.5 * packed["dense"]


def _initializer_types(path):
    return {init.data_type for init in onnx.load(str(path)).graph.initializer}


def _ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_precisions_change_the_exported_graph(digits, tiny_budget, tmp_path):
    torch.manual_seed(0)
    model = fit(build_model(digits.sample_shape, 10, 0.5), digits, 1)
    paths = {}
    for precision in ("fp32", "fp16", "int8-ptq"):
        paths[precision] = export_onnx(model, Candidate(precision=precision, budget=tiny_budget), digits,
                                       tmp_path / f"{precision}.onnx")
    assert TensorProto.FLOAT16 in _initializer_types(paths["fp16"])
    assert TensorProto.FLOAT not in _initializer_types(paths["fp16"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(paths["int8-ptq"])
    assert TensorProto.INT8 in _initializer_types(paths["int8-ptq"])
    assert "QuantizeLinear" not in _ops(paths["fp32"])


def test_int8_ptq_keeps_each_channels_weights_however_small_beside_the_others(tmp_path):
    """A convolution whose channels' weights differ in range by 1000x, as batch norm folded into them leaves some:
    one scale for the whole tensor rounds the small channel to zero (a pruned, distilled mnist1d model fell from
    0.95 to 0.32 so); the stored int8 weights, dequantized as the graph does, keep every channel within its step."""
    from search.stages.export import quantize_ptq

    conv = torch.nn.Conv2d(4, 4, 1, bias=False).eval()
    with torch.no_grad():
        conv.weight.mul_(torch.tensor([1.0, 1.0, 1.0, 1e-3]).view(4, 1, 1, 1))
    fp32 = tmp_path / "conv.onnx"
    torch.onnx.export(conv, (torch.randn(1, 4, 6, 6),), str(fp32), dynamo=False, input_names=["x"],
                      output_names=["y"])
    int8 = quantize_ptq(fp32, tmp_path / "int8.onnx", np.random.default_rng(0).standard_normal((8, 4, 6, 6),
                                                                                                dtype=np.float32))
    graph = onnx.load(str(int8)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    (dq,) = [n for n in graph.node if n.op_type == "DequantizeLinear" and init.get(n.input[0], np.zeros(0)).ndim == 4]
    q, scale, zero = (init[name].astype(np.float64) for name in dq.input[:3])
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * 4
    shape[axis] = -1
    stored = (q - zero.reshape(shape)) * scale.reshape(shape)  # one value per channel, or one for all
    weight = conv.weight.detach().numpy().astype(np.float64)
    for c in range(4):
        error = np.abs(stored[c] - weight[c]).max() / np.abs(weight[c]).max()
        assert error < 0.02, f"channel {c}: {error:.0%} of its range lost"


def test_qat_exports_qdq_and_keeps_sparsity(digits, tiny_budget, tmp_path):
    torch.manual_seed(0)
    model = fit(build_model(digits.sample_shape, 10, 0.5), digits, 1)
    c = Candidate(precision="int8-qat", sparsity=0.5, budget=tiny_budget)
    model, _ = prune_model(model, c, digits)
    qat = quantization_aware_finetune(model, c, digits)
    assert any("FakeQuantize" in type(m).__name__ for m in qat.modules())
    # fine-tuning must not bring pruned weights back
    weights = [p for n, p in qat.named_parameters() if n.endswith("weight") and p.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.49
    path = export_onnx(qat, c, digits, tmp_path / "qat.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(path)
    assert not {"BatchNormalization", "Div"} & _ops(path)  # folded: the graph that ships computes no batch norm
    # the weights are stored as the int8 the graph computed from them: a quarter of the file, the same outputs
    graph = onnx.load(str(path)).graph
    weights = [i for i in graph.initializer if len(i.dims) > 1]
    assert weights and all(i.data_type == TensorProto.INT8 for i in weights)
    quantized_in_graph = tmp_path / "as_torch_exports_it.onnx"
    _torch_export(qat, torch.from_numpy(digits.x_train[:1]), quantized_in_graph)
    float_weights = sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(quantized_in_graph)).graph.initializer
                        if len(i.dims) > 1)
    assert quantized_in_graph.stat().st_size - path.stat().st_size >= 0.75 * float_weights  # 1 byte for 4
    x = digits.x_val[:256]
    a, b = (np.concatenate([ort_session(p).run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
            for p in (quantized_in_graph, path))
    assert np.array_equal(a, b)


def test_qat_ends_with_the_batch_norms_and_scales_that_ship(digits, tiny_budget, monkeypatch):
    """Left moving to the last step, the batch-norm statistics and scales drifted: on images stored 0-255, the last
    epoch of fine-tuning took validation accuracy from 0.999 to 0.942. The first third of the steps moves both, the
    second the scales only, the last neither."""
    import dataclasses

    import search.stages.compress as compress
    from search.stages.train import BATCH_SIZE

    states = []

    def recording_fit(model, dataset, epochs, after_step, **options):
        bns = [m.bn for m in model.modules() if hasattr(m, "bn")]
        scales = [m.scale for m in model.modules() if type(m).__name__ == "FakeQuantize"]

        def step():
            after_step()
            states.append((torch.cat([b.running_mean for b in bns]).clone(), torch.cat(scales).clone()))

        return fit(model, dataset, epochs, after_step=step, **options)

    monkeypatch.setattr(compress, "fit", recording_fit)
    torch.manual_seed(0)
    model = fit(build_model(digits.sample_shape, 10, 0.5), digits, 1)
    budget = dataclasses.replace(tiny_budget, finetune_epochs=3)
    quantization_aware_finetune(model, Candidate(precision="int8-qat", budget=budget), digits)
    steps = 3 * -(-len(digits.x_train) // BATCH_SIZE)
    assert len(states) == steps

    def moved(part, start, stop):  # whether the state changed between steps start and stop (1-based, after each)
        return not torch.equal(states[start - 1][part], states[stop - 1][part])

    third = steps // 3
    assert moved(0, 1, third) and moved(1, 1, 2 * third)
    assert not moved(0, third, steps) and not moved(1, 2 * third, steps)


def test_folding_qat_batchnorm_keeps_the_outputs(digits):
    import copy

    from torch.ao.quantization import disable_observer

    from search.stages.compress import freeze_qat, prepare_qat

    torch.manual_seed(0)
    qat = prepare_qat(fit(build_model(digits.sample_shape, 10, 0.5), digits, 1), digits)
    fit(qat, digits, 1)  # trains the scales and the batch norms
    qat.apply(disable_observer)
    unfolded = qat.eval()
    folded = freeze_qat(copy.deepcopy(unfolded))
    assert not any(type(m).__name__.startswith("ConvBn") for m in folded.modules())
    x = torch.from_numpy(digits.x_val)
    with torch.no_grad():
        a, b = unfolded(x), folded(x)
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.99
    assert (a - b).abs().max() <= 0.05 * a.abs().max()


def test_pruning_is_gradual_and_never_empties_a_small_layer():
    from torch.nn.utils import prune

    from search.stages.compress import cubic_schedule, lamp_scores

    assert cubic_schedule(0.9, 3) == pytest.approx([0.0, 0.9 * 19 / 27, 0.9 * 26 / 27, 0.9])  # 1 - (2/3)^3, 1 - (1/3)^3
    assert lamp_scores(torch.tensor([1.0, 2.0, 3.0])).tolist() == pytest.approx([1 / 14, 4 / 13, 1.0])
    # a 9-weight layer of small weights beside a 91-weight one: a global magnitude cut to 90% empties it
    small, large = torch.nn.Linear(9, 1, bias=False), torch.nn.Linear(91, 1, bias=False)
    with torch.no_grad():
        small.weight.copy_(torch.linspace(0.01, 0.09, 9))
        large.weight.copy_(torch.linspace(1.0, 2.0, 91))
    params = [(small, "weight"), (large, "weight")]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=90,
                              importance_scores={p: lamp_scores(getattr(*p)) for p in params})
    assert int((small.weight != 0).sum()) >= 1 and int((large.weight != 0).sum()) >= 1
    assert int((small.weight == 0).sum()) + int((large.weight == 0).sum()) == 90


@pytest.mark.parametrize("axis", [0, 1])
def test_stored_per_channel_weights_give_what_quantize_linear_gave(tmp_path, axis):
    """A QuantizeLinear per channel (on either axis, int8 zero points not 0) folded into its weight: onnxruntime's
    output of the graph is the same before and after."""
    from onnx import helper

    from search.stages.export import store_quantized_weights

    rng = np.random.default_rng(axis)
    weight = rng.normal(size=(4, 6)).astype(np.float32)
    channels = weight.shape[axis]
    scale = rng.uniform(0.005, 0.02, channels).astype(np.float32)
    zero_point = rng.integers(-3, 4, channels).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=axis),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=axis),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])],
                              [numpy_helper.from_array(a, n)
                               for a, n in ((weight, "w"), (scale, "s"), (zero_point, "z"))])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    x = rng.normal(size=(2, 4)).astype(np.float32)
    before = ort_session(path).run(None, {"x": x})[0]
    assert store_quantized_weights(path) == 1
    assert "QuantizeLinear" not in _ops(path) and TensorProto.INT8 in _initializer_types(path)
    assert np.array_equal(ort_session(path).run(None, {"x": x})[0], before)


def test_class_weights_weigh_the_hard_label_loss_by_class():
    s = torch.tensor([[2.0, 0.0], [0.5, 1.0]])
    y = torch.tensor([0, 1])
    ce = [-math.log(math.exp(2.0) / (math.exp(2.0) + 1.0)), -math.log(math.exp(1.0) / (math.exp(0.5) + math.exp(1.0)))]
    w = torch.tensor([0.25, 4.0])
    # PyTorch's weighted mean: sum of w_y * loss over sum of w_y
    expected = (0.25 * ce[0] + 4.0 * ce[1]) / (0.25 + 4.0)
    assert float(distillation_loss(s, y, None, 1.0, 1.0, w)) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(s, y, None, 1.0, 1.0)) == pytest.approx(sum(ce) / 2, rel=1e-6)


def test_fp16_export_keeps_a_model_of_raw_pixel_values(tmp_path):
    """On raw pixels (0-255) a stem's running variance passes fp16's largest value; cast before folding, it became
    infinite and folded into zero weights (two of three fp16 candidates of a 32x32 RGB search scored 0.10)."""
    from search.data import load_npz

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "raw.npz", x=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y=np.arange(40) % 2,
             layout="NHWC")
    data = load_npz(tmp_path / "raw.npz")
    torch.manual_seed(0)
    model = build_model(data.sample_shape, 2, 1.0).eval()
    with torch.no_grad():  # a stem whose outputs on 0-255 inputs vary by about 1000, and the statistics training keeps
        model.features[0].weight.mul_(10)
        for norm in model.modules():
            if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average: one pass over the data sets them
        model.train()(torch.from_numpy(data.x_train))
    model.eval()
    assert model.features[1].running_var.max() > 65504
    x = data.x_val[:4]
    expected = model(torch.from_numpy(x)).detach().numpy()
    path = export_onnx(model, Candidate(precision="fp16"), data, tmp_path / "fp16.onnx")
    session = ort_session(path)
    got = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 1].astype(np.float16)})[0]
                          for i in range(len(x))]).astype(np.float32)
    spread = np.abs(expected - expected.mean(0)).max()  # how much the inputs move the outputs
    assert spread > 0.01
    assert np.abs(got - expected).max() < 0.1 * spread


def test_a_small_signal_on_a_large_offset_is_called_lost_to_int8_as_the_quantiser_loses_it(tmp_path, tiny_budget):
    """One-channel signals whose class is a 0.05-amplitude tone on a per-sample offset of up to +-50 fell to chance
    as int8 (0.30 against 1.00 as fp32) without a word: the dataset now says so, with the step onnxruntime's
    quantiser really gives the input, and says nothing of data that int8 reads well."""
    from search.data import load_dataset, load_npz

    rng = np.random.default_rng(0)
    n, t = 240, np.arange(64)
    y = np.arange(n) % 2
    tone = 0.05 * np.sin(2 * np.pi * (3 + 4 * y[:, None]) * t / 64)
    x = (rng.uniform(-50, 50, (n, 1)) + tone)[:, None, :].astype(np.float32)
    np.savez(tmp_path / "offset.npz", x=x, y=y)
    data = load_npz(tmp_path / "offset.npz")
    note = data.int8_input_note()
    step = float(note.split(" is ", 1)[1].split(",", 1)[0])
    assert note.startswith("int8 candidates will see little of the input") and "subtract each sample's own mean" in note

    path = export_onnx(build_model(data.sample_shape, 2, 0.25).eval(), Candidate(precision="int8-ptq",
                       budget=tiny_budget), data, tmp_path / "int8.onnx")
    graph = onnx.load(str(path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    (quantise,) = [q for q in graph.node if q.op_type == "QuantizeLinear" and q.input[0] == graph.input[0].name]
    scale, zero = float(init[quantise.input[1]]), int(init[quantise.input[2]])
    assert scale == pytest.approx(step, rel=0.05)  # calibrated on a subset of the training data: about its range
    levels = {len(np.unique(np.clip(np.round(s / scale) + zero, 0, 255))) for s in data.x_val}
    assert max(levels) <= 3  # what int8 leaves of a sample: its offset, and a level either side at most

    # two channels, one on a scale 400x smaller: that one is named; standardised, neither; the built-ins read well
    both = np.concatenate([rng.normal(0, 20, (n, 1, 64)), rng.normal(0, 0.05, (n, 1, 64))], axis=1)
    np.savez(tmp_path / "scales.npz", x=both.astype(np.float32), y=y)
    assert load_npz(tmp_path / "scales.npz").int8_input_note().startswith(
        "int8 candidates will see little of channel(s) 1 of the input")
    even = (both - both.mean(axis=(0, 2), keepdims=True)) / both.std(axis=(0, 2), keepdims=True)
    np.savez(tmp_path / "even.npz", x=even.astype(np.float32), y=y)
    assert load_npz(tmp_path / "even.npz").int8_input_note() is None
    assert load_dataset("digits").int8_input_note() is None and load_dataset("mnist1d").int8_input_note() is None
