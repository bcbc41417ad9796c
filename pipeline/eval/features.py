"""Feature extraction from a frozen model: eval mode, inference mode, AMP on CUDA, a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

Batches = Iterable[tuple[Tensor, Tensor]]


def default_preprocess(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input passes unchanged."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def extract_features(
    model: nn.Module,
    images_or_loader: Tensor | Batches,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    transform: Callable[[Tensor], Tensor] | None = None,
    amp: bool = True,
    labels: Tensor | None = None,
    on_device: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Run ``model`` over all images and return ``(features float32 on CPU, labels)``; with ``on_device``
    the features stay on ``device``, for metrics computed there (pipeline.eval.protocol).

    ``images_or_loader`` is either an image tensor (N, C, H, W), typically uint8, cut into
    ``batch_size`` batches (``labels`` then passes through, or None), or an iterable of
    ``(images, labels)`` batches such as a DataLoader (``batch_size`` unused). Each batch moves to
    ``device`` before ``transform`` (default: uint8 -> [0, 1] float), so normalisation runs on the GPU.
    AMP (bfloat16 autocast where supported, else float16) is used only on CUDA. Every submodule's
    train/eval flag is restored afterwards, so a frozen BatchNorm inside a training model stays frozen.
    """
    device = torch.device(device)
    transform = transform or default_preprocess
    if isinstance(images_or_loader, Tensor):
        batches = _tensor_batches(images_or_loader, labels, batch_size)
        total = len(batches)
    else:
        if labels is not None:
            raise ValueError("labels must be None when images_or_loader yields (images, labels) batches")
        batches, total = iter(images_or_loader), _len_or_none(images_or_loader)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    features, label_batches = [], []
    try:
        with torch.inference_mode(), _autocast(device, amp):
            for images, batch_labels in tqdm(
                batches, total=total, desc="features", disable=None, leave=False
            ):
                output = model(transform(images.to(device, non_blocking=True)))
                features.append(output.float() if on_device else output.float().cpu())
                if batch_labels is not None:
                    label_batches.append(batch_labels.cpu())
    finally:
        for module, training in modes.items():
            module.train(training)
    if not features:
        raise ValueError("images_or_loader yielded no images")
    return torch.cat(features), torch.cat(label_batches) if label_batches else None


def _tensor_batches(
    images: Tensor, labels: Tensor | None, batch_size: int
) -> list[tuple[Tensor, Tensor | None]]:
    """Views of consecutive batches (no copy), checked before the model runs."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"images has {len(images)} items but labels has {len(labels)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    starts = range(0, len(images), batch_size)
    return [
        (images[s : s + batch_size], None if labels is None else labels[s : s + batch_size]) for s in starts
    ]


def _len_or_none(batches: Batches) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    on_cuda = device.type == "cuda"
    dtype = torch.float16 if on_cuda and not torch.cuda.is_bf16_supported() else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp and on_cuda)
