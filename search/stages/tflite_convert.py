"""Convert a saved ``torch.export`` program to a ``.tflite`` flatbuffer; run in the converter's own environment.

The converter (litert-torch, with litert-converter) pins typing-extensions below what TVM's FFI needs, so it
cannot share edgesearch's environment: ``make setup`` gives it ``.venv-mcu`` (the same torch), and
``search.stages.tflite`` calls this file there. It imports nothing from edgesearch.

Usage: python tflite_convert.py PROGRAM.pt2 OUT.tflite fp32|int8 SAMPLES.npy
(SAMPLES: calibration inputs for int8, as the program takes them; the first one is the example input either way.
The program takes channel-last input, ``search.stages.tflite.ChannelLast``, and so does the .tflite.)
       python tflite_convert.py --serve
(one conversion per line of stdin, a JSON list of those four arguments; one answer line on stdout for each)
"""

import json
import os
import sys
import traceback

import numpy as np
import torch


def main(program: str, out: str, kind: str, samples: str) -> None:
    module = torch.export.load(program).module()
    calibration_x = np.load(samples)
    import litert_torch  # after the inputs load: a bad request fails without importing the converter

    example = (torch.from_numpy(calibration_x[:1]),)
    if kind == "fp32":
        edge = litert_torch.convert(module, example)
    else:
        # PyTorch 2 export quantization, as the converter documents it: symmetric int8, per-channel weights,
        # static activation ranges from the calibration samples, one at a time (batch 1, as on the device)
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(
            _unit_free(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)))
        graph = prepare_pt2e(torch.export.export(module, example).module(), quantizer)
        with torch.no_grad():
            for i in range(len(calibration_x)):
                graph(torch.from_numpy(calibration_x[i:i + 1]))
        graph = convert_pt2e(graph, fold_quantize=False)
        edge = litert_torch.convert(graph, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    edge.export(out)
    _strip_names(out)


def _strip_names(path: str) -> None:
    """Drop the tensor and signature names, which the interpreter never reads and the board would flash: the
    converter names each tensor by its module path, up to 280 bytes, 4 KB of a 25 KB int8 model. LiteRT's own
    ``strip_strings`` does it; the file is rebuilt with every weight buffer 16-byte aligned, as TFLite's schema asks
    (``force_align: 16``) and flatc's Python code does not."""
    import flatbuffers
    from ai_edge_litert.tools import flatbuffer_utils

    class Aligned(flatbuffers.Builder):
        def CreateNumpyVector(self, x):
            self.Prep(16, x.nbytes)
            return super().CreateNumpyVector(x)

    model = flatbuffer_utils.read_model(path)
    flatbuffer_utils.strip_strings(model)
    builder = Aligned(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with open(path, "wb") as f:
        f.write(builder.Output())


def _unit_free(config):
    """The converter's int8 configuration without its absolute floor of 2**-12 on every scale: data stored in raw
    sensor units (int16 counts reach 30,000) train a first convolution whose batch-norm-folded weights are near 1e-4,
    which that floor quantised to 0 and +-1, leaving a model at chance. Weight scales are floored instead relative to
    the tensor's widest channel (``_WeightRanges``), which keeps an all-zero channel's int32 bias in range."""
    import dataclasses

    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver

    class _WeightRanges(PerChannelMinMaxObserver):
        def calculate_qparams(self):
            scale, zero_point = super().calculate_qparams()
            return torch.maximum(scale, scale.max() * 2.0 ** -10), zero_point

    def unfloored(spec, observer=None):
        ctr = spec.observer_or_fake_quant_ctr.p
        keywords = {**ctr.keywords, "eps": torch.finfo(torch.float32).eps}
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=(observer or ctr.func).with_args(**keywords))

    return dataclasses.replace(config, input_activation=unfloored(config.input_activation),
                               output_activation=unfloored(config.output_activation),
                               weight=unfloored(config.weight, _WeightRanges))


def serve() -> None:
    """Convert what each line of stdin asks until stdin closes, answering ``{"ok": true}`` or ``{"error": ...}``
    on a line of its own.

    A worker keeps this process for its next candidates: importing the converter costs about as much as a
    conversion. Whatever the converter prints goes to stderr, so stdout holds only the answers."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        try:
            main(*json.loads(line))
            answer = {"ok": True}
        except Exception as exc:
            traceback.print_exc()
            answer = {"error": traceback.format_exception_only(exc)[-1].strip()}
        answers.write(f"edgesearch-converter: {json.dumps(answer)}\n")  # search.stages.tflite.ANSWER


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main(*sys.argv[1:5])
