"""MoCo v2 queue loss: lightly's NT-Xent with a memory bank, plus a checkpointable queue."""

from typing import Any

import torch
from lightly.loss import NTXentLoss as _LightlyNTXent
from torch import Tensor

from pipeline.losses.contract import Loss, LossParams
from pipeline.losses.validation import PositiveFloat, PositiveInt, check_embeddings, check_positive, check_same_rows


class MoCoLoss(Loss):
    """`loss(query, key)`: InfoNCE of each query against its key (momentum encoder) and the queue.

    Wraps `lightly.loss.NTXentLoss(memory_bank_size=(queue_size, embedding_dim))`; the keys are
    enqueued after scoring whenever the query requires grad (lightly's rule).  lightly keeps the queue
    in non-persistent buffers, so it would be lost on resume: `queue_state()` / `load_queue_state()`
    expose it, and `state_dict()` carries it too (as this module's extra state).  Under
    torch.distributed the keys of all ranks are enqueued.
    """

    role = "teacher"
    inputs = ()  # the query and momentum-key projections: loss(query, key)
    runtime_args = ("embedding_dim",)

    class Params(LossParams):
        queue_size: PositiveInt = 4096
        temperature: PositiveFloat = 0.2

    def __init__(self, embedding_dim: int = 128, queue_size: int = 4096, temperature: float = 0.2):
        super().__init__()
        check_positive("embedding_dim", embedding_dim)
        self.params = self.checked_params(queue_size=queue_size, temperature=temperature)
        self.embedding_dim = embedding_dim
        self.criterion = _LightlyNTXent(
            temperature=temperature, memory_bank_size=(queue_size, embedding_dim), gather_distributed=True
        )

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        check_embeddings("query", query, min_rows=1)
        check_embeddings("key", key, min_rows=1)
        check_same_rows("query", query, "key", key)
        if query.shape[1] != self.embedding_dim or key.shape[1] != self.embedding_dim:
            raise ValueError(f"query and key must have {self.embedding_dim} columns, got {query.shape[1]} and {key.shape[1]}")
        return self.criterion(query, key.detach())

    def queue_state(self) -> dict[str, Tensor]:
        """Copies of the queue (queue_size, embedding_dim) and its write pointer."""
        bank = self.criterion.memory_bank
        return {"queue": bank.bank.detach().clone(), "pointer": bank.bank_ptr.detach().clone()}

    @torch.no_grad()
    def load_queue_state(self, state: dict[str, Tensor]) -> None:
        bank = self.criterion.memory_bank
        queue, pointer = state["queue"], state["pointer"]
        if queue.shape != bank.bank.shape:
            raise ValueError(f"queue state has shape {tuple(queue.shape)}, expected {tuple(bank.bank.shape)}")
        bank.bank.copy_(queue)
        bank.bank_ptr.copy_(pointer)

    def get_extra_state(self) -> dict[str, Tensor]:
        return self.queue_state()

    def set_extra_state(self, state: Any) -> None:
        self.load_queue_state(state)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, queue_size={self.queue_size}, temperature={self.temperature}"
