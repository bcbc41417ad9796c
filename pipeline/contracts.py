"""params.yaml's loss entries held to the contracts their losses declare (`pipeline.losses.contract`):
a registered name usable in its section, typed and in-range params, no label-reading loss in a grid
without labels (self-supervised, self-taught), a self-taught method in the self-taught grid only.

Separate from the schema (`pipeline.config`) on purpose: checking a loss imports its module, and a stage
must import only the losses it trains with. The `prepare` stage, which DVC re-runs on any change to
params.yaml, checks every entry before anything computes; a transfer or classifier stage checks its
own. The other stages never import a loss module, so a loss edit neither re-runs nor re-fingerprints them.
"""
from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches
from pathlib import Path

from pydantic import ValidationError

from pipeline.config import TEACHER_OBJECTIVE, ConfigError, DistillationMethodConfig, LossConfig, Params, load_params
from pipeline.losses.contract import Loss, describe_error
from pipeline.losses.registry import loss_class, names
from pipeline.setting import TRANSFER_SETTINGS, Setting


def _registered(name: str, where: str) -> type[Loss]:
    if name not in names():
        hint = get_close_matches(name, names(), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{where}: unknown loss {name!r}{suggestion}; allowed: {', '.join(names())}")
    return loss_class(name)


def _check_params(where: str, cls: type[Loss], params: dict) -> None:
    try:
        cls.Params.model_validate(params)
    except ValidationError as err:
        error = err.errors()[0]
        key, reason = describe_error(error)
        if error["type"] == "extra_forbidden":
            fields = list(cls.Params.model_fields)
            hint = get_close_matches(key, fields, n=1)
            reason += f"; did you mean {hint[0]!r}?" if hint else ""
            reason += f" (allowed here: {', '.join(fields) or 'none'})"
        raise ConfigError(f"{where}.params.{key}: {reason}") from None


def effective_proxy_anchor_weight(loss: LossConfig) -> float:
    """The weight of the Proxy-Anchor term on the student embedding: as set, else the paper's choice the
    loss declares (1 for FitNet, Attention and CRD, 0 otherwise; Kim et al. 2021, Sec. 4.1)."""
    if loss.proxy_anchor_weight is not None:
        return loss.proxy_anchor_weight
    if loss.name == TEACHER_OBJECTIVE:
        return 0.0
    return 1.0 if loss_class(loss.name).proxy_anchor else 0.0


def uses_labels(loss: LossConfig) -> bool:
    """Whether training with this entry reads class labels (not allowed in the self-supervised setting)."""
    if loss.name == TEACHER_OBJECTIVE:
        return False
    cls = loss_class(loss.name)
    return cls.reads_labels(cls.Params(**loss.params)) or effective_proxy_anchor_weight(loss) > 0


def check_loss(loss: LossConfig, where: str) -> None:
    if loss.name == TEACHER_OBJECTIVE:
        return
    cls = _registered(loss.name, f"{where}.name")
    if cls.role not in ("transfer", "supervised", "self_taught") or cls.features not in ("embedding", "pooled", "stage_maps"):
        raise ConfigError(f"{where}.name: {loss.name!r} is not a transfer loss (a teacher's objective or a "
                          "classifier term)")
    _check_params(where, cls, loss.params)
    for setting, tuned in loss.tuned.items():  # the search's values, as its students will train with them
        _check_params(f"{where}.tuned.{setting}", cls, {**loss.params, **tuned.params})


def check_method(method: DistillationMethodConfig, where: str) -> None:
    """A classification term compares the penultimate (pooled) features or the logits of both classifiers
    and reads no labels."""
    if method.loss is None:
        return
    cls = _registered(method.loss, f"{where}.loss")
    if cls.role != "transfer" or cls.features not in ("embedding", "pooled", "logits") or "labels" in cls.inputs:
        raise ConfigError(f"{where}.loss: {method.loss!r} is not a classification transfer term (it needs "
                          "embeddings or logits of both classifiers and no labels)")
    _check_params(where, cls, method.params)
    for setting, tuned in method.tuned.items():  # the search's values, as its students will train with them
        _check_params(f"{where}.tuned.{setting}", cls, {**method.params, **tuned.params})


def check_contracts(params: Params, losses: Iterable[str] | None = None, methods: Iterable[str] | None = None,
                    source: str = "params.yaml") -> None:
    """Check the `losses` and `classification.methods` entries named (None: all of them); the first
    problem is a ConfigError of one line naming the file and the dotted key."""
    try:
        for key in params.losses if losses is None else [k for k in losses if k in params.losses]:
            check_loss(params.losses[key], f"losses.{key}")
            for setting in TRANSFER_SETTINGS:
                if key not in params.transfer.of(setting).grid.loss:
                    continue
                entry = params.losses[key].in_setting(setting)
                if not setting.labels and uses_labels(entry):
                    raise ConfigError(
                        f"transfer.{setting}.grid.loss: {key!r} reads class labels (a Proxy-Anchor, triplet "
                        f"or label term), which the {setting.title} setting does not have; set its "
                        "proxy_anchor_weight: 0 (or darkrank params.triplet_weight: 0), or move it to "
                        "transfer.metric_learning.grid")
                if (setting is not Setting.SELF_TAUGHT and entry.name != TEACHER_OBJECTIVE
                        and loss_class(entry.name).role == "self_taught"):
                    raise ConfigError(
                        f"transfer.{setting}.grid.loss: {key!r} ({entry.name}) trains a student against its own "
                        "momentum teacher, not from a frozen one: it goes in transfer.self_taught.grid")
        chosen = params.classification.methods
        for key in chosen if methods is None else [k for k in methods if k in chosen]:
            check_method(chosen[key], f"classification.methods.{key}")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_checked(path: str | Path = "params.yaml", losses: Iterable[str] | None = None,
                 methods: Iterable[str] | None = None) -> Params:
    """`pipeline.config.load_params` plus the contracts of the entries named (None: all)."""
    params = load_params(path)
    check_contracts(params, losses, methods, source=str(path))
    return params
