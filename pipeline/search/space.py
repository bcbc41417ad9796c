"""What a search draws for one method: the dimensions its loss declares (`Loss.search_space`), the weight of its
extra term (the Proxy-Anchor term where the paper trains a transfer loss with one; a classification method's
transfer term against cross-entropy), and the learning rate, which every method gets alike (the same log range
around its setting's rate), so no method is favoured by a wider search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.config import TEACHER_OBJECTIVE, DistillationMethodConfig, LossConfig, SearchConfig, TunedConfig
from pipeline.contracts import effective_proxy_anchor_weight
from pipeline.losses.contract import Range

if TYPE_CHECKING:
    import optuna

LR = "lr"
PROXY_ANCHOR_WEIGHT = "proxy_anchor_weight"
TRANSFER_WEIGHT = "transfer_weight"
PARAMS_PREFIX = "params."  # a loss parameter's name in Optuna (`params.sigma`)
# The Proxy-Anchor term's weight against the transfer loss: the paper's 1, a factor of ten either way; a
# classification method's transfer weight likewise around its declared one (RepDistiller's per method).
PROXY_ANCHOR_RANGE = Range(0.1, 10.0)
WEIGHT_FACTOR = 10.0


@dataclass(frozen=True)
class Dimension:
    name: str  # as Optuna and the trials summary name it
    range: Range


def dimensions(entry: LossConfig | DistillationMethodConfig, lr: float, search: SearchConfig) -> list[Dimension]:
    """The dimensions of a method (its params.yaml entry) in a setting whose students train at `lr`."""
    found = []
    loss = entry.name if isinstance(entry, LossConfig) else entry.loss
    if loss not in (None, TEACHER_OBJECTIVE):
        from pipeline.losses import loss_class

        cls = loss_class(loss)
        for name, span in cls.search_space.items():
            if span.log and entry.params.get(name) == 0:
                continue  # a term switched off stays off (Range's docstring)
            found.append(Dimension(PARAMS_PREFIX + name, span))
        if isinstance(entry, DistillationMethodConfig):
            if entry.transfer_weight > 0:
                weight = entry.transfer_weight
                found.append(Dimension(TRANSFER_WEIGHT, Range(weight / WEIGHT_FACTOR, weight * WEIGHT_FACTOR)))
        elif cls.proxy_anchor and effective_proxy_anchor_weight(entry) > 0:
            found.append(Dimension(PROXY_ANCHOR_WEIGHT, PROXY_ANCHOR_RANGE))
    found.append(Dimension(LR, Range(lr / search.lr_factor, lr * search.lr_factor)))
    return found


def suggest(trial: optuna.Trial, found: list[Dimension]) -> dict[str, float]:
    return {d.name: trial.suggest_float(d.name, d.range.low, d.range.high, log=d.range.log) for d in found}


def tuned(values: dict[str, Any]) -> TunedConfig:
    """A trial's values as the `tuned.SETTING` entry its students would train with."""
    return TunedConfig(params={k.removeprefix(PARAMS_PREFIX): v for k, v in values.items()
                               if k.startswith(PARAMS_PREFIX)},
                       proxy_anchor_weight=values.get(PROXY_ANCHOR_WEIGHT),
                       transfer_weight=values.get(TRANSFER_WEIGHT), lr=values.get(LR))
