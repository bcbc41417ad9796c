"""Every loss by the name `params.yaml` uses, its declared contract, and `build`.

Classes are imported when first asked for: the names need no import at all (not even torch), and
checking a config that uses the relaxed loss imports that loss's module only. `register` adds a loss without editing this file.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.losses.contract import Loss

_REGISTRY: dict[str, str | type[Loss]] = {
    "relaxed_contrastive": "pipeline.losses.relaxed_contrastive:RelaxedContrastiveLoss",
    "contrastive": "pipeline.losses.contrastive:ContrastiveLoss",
    "rkd": "pipeline.losses.rkd:RKDLoss",
    "pkt": "pipeline.losses.pkt:PKTLoss",
    "darkrank": "pipeline.losses.darkrank:HardDarkRankLoss",
    "fitnet": "pipeline.losses.fitnet:FitNetLoss",
    "attention": "pipeline.losses.attention:AttentionTransferLoss",
    "crd": "pipeline.losses.crd:CRDLoss",
    "hinton_kd": "pipeline.losses.hinton_kd:HintonKDLoss",
    "proxy_anchor": "pipeline.losses.proxy_anchor:ProxyAnchorLoss",
    "ntxent": "pipeline.losses.ntxent:NTXentLoss",
    "moco": "pipeline.losses.moco:MoCoLoss",
    "stml": "pipeline.losses.stml:STMLLoss",
}


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def register(name: str, cls: type[Loss]) -> None:
    """Make `cls` buildable as `name`; its contract is checked here, so a bad declaration fails at once."""
    from pipeline.losses.contract import FEATURES, INPUTS, RUNTIME_ARGS, Loss, LossParams

    if not (isinstance(cls, type) and issubclass(cls, Loss)):
        raise TypeError(f"loss {name!r}: {cls!r} must subclass pipeline.losses.contract.Loss")
    if name in _REGISTRY:
        raise ValueError(f"loss name {name!r} is already registered")
    unknown = [*(set(cls.inputs) - set(INPUTS)), *(set(cls.runtime_args) - set(RUNTIME_ARGS))]
    if unknown or cls.features not in FEATURES or not issubclass(cls.Params, LossParams):
        raise ValueError(f"loss {name!r}: undeclared inputs, runtime args or features {unknown or cls.features!r}")
    _REGISTRY[name] = cls


def loss_class(name: str) -> type[Loss]:
    """The class registered as `name` (its contract is on the class); unknown names get a suggestion."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss name {name!r}; allowed: {', '.join(names())}.{hint}")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attribute)
    return entry


def build(name: str, **arguments: Any) -> Loss:
    """Instantiate loss `name`: `arguments` are its `Params` fields plus the runtime args it declares."""
    cls = loss_class(name)
    accepted = [*cls.Params.model_fields, *cls.runtime_args]
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(**arguments)


def build_with(name: str, params: Mapping[str, Any], context: Mapping[str, Any]) -> Loss:
    """Loss `name` from user `params` and the runtime values its contract asks of `context`."""
    cls = loss_class(name)
    missing = [arg for arg in cls.runtime_args if arg not in context]
    if missing:
        raise ValueError(f"loss {name!r} needs {', '.join(missing)}, which this stage does not provide")
    return build(name, **params, **{arg: context[arg] for arg in cls.runtime_args})
