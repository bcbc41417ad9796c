"""The int8 variant of an exported model, with ONNX Runtime's static quantization (QDQ format, per-channel
weights, activations calibrated on train images: MinMax over `deploy.calibration_images` of them). Static
rather than dynamic: dynamic quantization leaves convolutions in float on the CPU provider, and these models
are convolutions. The variant is scored and timed exactly like its float model (`pipeline.wiring.export`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from pipeline.deploy.graph import INPUT, SOURCE_KEY


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over a tensor of uint8 images, in batches."""

    def __init__(self, images: torch.Tensor, batch_size: int = 64) -> None:
        self.batches = iter([images[i:i + batch_size].numpy() for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}


def quantize_int8(source: Path, path: Path, calibration: torch.Tensor, source_sha256: str) -> None:
    """Write the int8 model of the float ONNX model `source` to `path` (atomically), naming the model file
    both were exported from (`source_sha256`)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = path.with_name(f"{path.name}.pre{os.getpid()}")
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(tmp), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {SOURCE_KEY: source_sha256})
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        prepared.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)

