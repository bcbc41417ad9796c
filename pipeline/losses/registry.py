"""Build a loss by name, so params.yaml can pick one; every name, its class and its call order."""

import difflib
import inspect

from torch import nn

from pipeline.losses.attention import AttentionTransferLoss
from pipeline.losses.contrastive import ContrastiveLoss
from pipeline.losses.crd import CRDLoss
from pipeline.losses.darkrank import HardDarkRankLoss
from pipeline.losses.fitnet import FitNetLoss
from pipeline.losses.hinton_kd import HintonKDLoss
from pipeline.losses.moco import MoCoLoss
from pipeline.losses.ntxent import NTXentLoss
from pipeline.losses.pkt import PKTLoss
from pipeline.losses.proxy_anchor import ProxyAnchorLoss
from pipeline.losses.relaxed_contrastive import RelaxedContrastiveLoss
from pipeline.losses.rkd import RKDLoss

# name -> class; the comment gives the call order.
_REGISTRY: dict[str, type[nn.Module]] = {
    "relaxed_contrastive": RelaxedContrastiveLoss,  # loss(student, teacher)
    "contrastive": ContrastiveLoss,  # loss(student, labels)
    "rkd": RKDLoss,  # loss(student, teacher)
    "pkt": PKTLoss,  # loss(student, teacher)
    "darkrank": HardDarkRankLoss,  # loss(student, teacher, labels)
    "fitnet": FitNetLoss,  # loss(student_maps, teacher_maps)
    "attention": AttentionTransferLoss,  # loss(student_maps, teacher_maps)
    "crd": CRDLoss,  # loss(student, teacher, index)
    "hinton_kd": HintonKDLoss,  # loss(student_logits, teacher_logits)
    "proxy_anchor": ProxyAnchorLoss,  # loss(embeddings, labels)
    "ntxent": NTXentLoss,  # loss(view0, view1)
    "moco": MoCoLoss,  # loss(query, key)
}

NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Transfer losses that the paper trains together with a Proxy-Anchor term on the student embedding:
# training adds `proxy_anchor(student_embedding, labels)` to these (weight 1), nothing else does.
NEEDS_PROXY_ANCHOR: frozenset[str] = frozenset({"fitnet", "attention", "crd"})


def build(name: str, **params: object) -> nn.Module:
    """Instantiate the loss registered as `name` with keyword `params` (its constructor arguments)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss name {name!r}; allowed: {', '.join(NAMES)}.{hint}")
    cls = _REGISTRY[name]
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(**params)
