"""What a search draws for one loss: the dimensions its class declares (`Loss.search_space`), the weight of the
Proxy-Anchor term where the paper trains the loss with one, and the learning rate, which every method gets
alike (the same log range around its setting's rate), so no method is favoured by a wider search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.config import TEACHER_OBJECTIVE, LossConfig, SearchConfig, TunedConfig
from pipeline.contracts import effective_proxy_anchor_weight
from pipeline.losses.contract import Range

if TYPE_CHECKING:
    import optuna

LR = "lr"
PROXY_ANCHOR_WEIGHT = "proxy_anchor_weight"
PARAMS_PREFIX = "params."  # a loss parameter's name in Optuna (`params.sigma`)
# The Proxy-Anchor term's weight against the transfer loss: the paper's 1, a factor of ten either way.
PROXY_ANCHOR_RANGE = Range(0.1, 10.0)


@dataclass(frozen=True)
class Dimension:
    name: str  # as Optuna and the trials summary name it
    range: Range


def dimensions(loss: LossConfig, lr: float, search: SearchConfig) -> list[Dimension]:
    """The dimensions of `loss` (its params.yaml entry) in a setting whose students train at `lr`."""
    found = []
    if loss.name != TEACHER_OBJECTIVE:
        from pipeline.losses import loss_class

        cls = loss_class(loss.name)
        for name, span in cls.search_space.items():
            if span.log and loss.params.get(name) == 0:
                continue  # a term switched off stays off (Range's docstring)
            found.append(Dimension(PARAMS_PREFIX + name, span))
        if cls.proxy_anchor and effective_proxy_anchor_weight(loss) > 0:
            found.append(Dimension(PROXY_ANCHOR_WEIGHT, PROXY_ANCHOR_RANGE))
    found.append(Dimension(LR, Range(lr / search.lr_factor, lr * search.lr_factor)))
    return found


def suggest(trial: optuna.Trial, found: list[Dimension]) -> dict[str, float]:
    return {d.name: trial.suggest_float(d.name, d.range.low, d.range.high, log=d.range.log) for d in found}


def tuned(values: dict[str, Any]) -> TunedConfig:
    """A trial's values as the `losses.NAME.tuned.SETTING` entry its students would train with."""
    return TunedConfig(params={k.removeprefix(PARAMS_PREFIX): v for k, v in values.items()
                               if k.startswith(PARAMS_PREFIX)},
                       proxy_anchor_weight=values.get(PROXY_ANCHOR_WEIGHT), lr=values.get(LR))
