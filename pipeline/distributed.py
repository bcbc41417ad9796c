"""All-gather helpers so batch-wise losses see the global batch under DDP.

Gradient scaling (why no extra factor is needed): every rank gathers the same global batch and
computes the *same* global loss L.  `torch.distributed.nn.functional.all_gather` sums the incoming
gradients over ranks in its backward, so each rank's local slice receives W * dL/dx_local
(W = world size).  DDP then averages parameter gradients over the W ranks, which divides that factor
back out: the optimiser sees exactly the gradient of L on the concatenated batch, as in a single
process.  Requires the same local batch size on every rank (use drop_last=True).
"""

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_gather as _all_gather_with_grad


def world_size() -> int:
    """Number of processes in the default group, 1 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default group, 0 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def gather_batch(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from all ranks along dim 0, in rank order.

    Gradients flow back to the local slice when `tensor` requires grad (see module docstring for
    the scaling); labels, indices and teacher outputs are gathered without autograd.
    Returns `tensor` itself in a single process.
    """
    if world_size() == 1:
        return tensor
    if tensor.requires_grad:
        return torch.cat(_all_gather_with_grad(tensor), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def mean_over_ranks(tensor: Tensor) -> Tensor:
    """The mean of `tensor` over ranks (no autograd); `tensor` itself in a single process."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / world_size()
