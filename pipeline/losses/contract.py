"""The one contract every loss declares on its class, as pytorch-metric-learning keeps one `forward`
contract in `BaseMetricLossFunction`: what the loss reads, what the stage must supply to build it, and a
typed model of the parameters a user may set in `params.yaml`.

Validation (`pipeline.config`), the objectives (`pipeline.train.objectives`, `.classification`) and the
recipes read these declarations; nothing outside `pipeline/losses/` keeps lists of loss names.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

# What a loss's `forward` takes, in order: rows of the student and the teacher, class labels, dataset indices.
INPUTS = ("student", "teacher", "labels", "indices")
# What the student / teacher rows are: embeddings (an embedding model's head output, a classifier's
# penultimate features), the pooled backbone features before any head (CRD, as the label-relaxation code
# applies it), the backbone's stage maps, or classifier logits.
FEATURES = ("embedding", "pooled", "stage_maps", "logits")
# Constructor arguments only the stage knows (model shapes, dataset size, the class of every training
# item where the setting has labels, else None, the section's views per image); never set in params.yaml.
RUNTIME_ARGS = ("student_channels", "teacher_channels", "student_dim", "teacher_dim", "n_data",
                "num_classes", "embedding_dim", "dataset_labels", "views")
Role = Literal["transfer", "teacher", "supervised", "self_taught"]


@dataclass(frozen=True)
class Range:
    """One dimension of a loss's search space (pipeline/search): a float between `low` and `high`, drawn on a
    log scale where `log`. A log range cannot hold 0, so a weight params.yaml sets to 0 (a term switched off,
    as DarkRank's triplet term in the self-supervised setting) stays off and is not searched."""

    low: float
    high: float
    log: bool = True


class LossParams(BaseModel):
    """Typed, user-settable parameters of one loss. Strict: `sigma: true` or `sigma: "1"` is refused
    (an int is accepted for a float), and so is an unknown key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def describe_error(error: Mapping[str, Any]) -> tuple[str, str]:
    """(dotted key inside the params, one-line reason) of one pydantic error of a `LossParams` model."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return key, "unknown parameter"
    shown = "" if isinstance(error.get("input"), (dict, list)) else f" (got {error.get('input')!r})"
    return key, f"{error['msg'].removeprefix('Value error, ')}{shown}"


class Loss(nn.Module):
    """Base of every loss in the registry; subclasses override the class attributes below.

    - `role`: `transfer` (student from a frozen teacher), `teacher` (trains a teacher: NT-Xent, MoCo,
      Proxy-Anchor), `supervised` (labels only, e.g. the label contrastive loss) or `self_taught` (a student
      and its own momentum teacher, no labels: STML, whose `student` is its two heads f and g).
    - `inputs`: the positional arguments of `forward`, named from `INPUTS`.
    - `features`: what the student and teacher rows are (`FEATURES`).
    - `proxy_anchor`: the paper trains this baseline together with a Proxy-Anchor term on the student
      embedding (FitNet, Attention, CRD; Kim et al. 2021, Sec. 4.1).
    - `runtime_args`: constructor arguments the stage supplies (`RUNTIME_ARGS`).
    - `Params`: the typed model of every other constructor argument, with the same defaults.
    - `search_space`: the `Params` fields the hyperparameter search draws (pipeline/search), each a `Range`
      around the authors' default; the search adds the learning rate, and the Proxy-Anchor weight where
      `proxy_anchor`, alike for every loss.
    """

    role: ClassVar[Role] = "transfer"
    inputs: ClassVar[tuple[str, ...]] = ("student", "teacher")
    features: ClassVar[str] = "embedding"
    proxy_anchor: ClassVar[bool] = False
    runtime_args: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[LossParams]] = LossParams
    search_space: ClassVar[Mapping[str, Range]] = {}
    params: LossParams  # this instance's validated values (set by the subclass's constructor)

    @classmethod
    def inputs_for(cls, params: LossParams) -> tuple[str, ...]:
        """`forward`'s inputs under these parameters; a term switched off by a zero weight reads nothing."""
        return cls.inputs

    @classmethod
    def reads_labels(cls, params: LossParams) -> bool:
        return "labels" in cls.inputs_for(params)

    def __getattr__(self, name: str) -> Any:
        """A user parameter reads from `self.params`, the one place it is kept (`loss.temperature` is
        `loss.params.temperature`); everything else as nn.Module finds it."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            params = self.__dict__.get("params")
            if isinstance(params, LossParams) and name in type(params).model_fields:
                return getattr(params, name)
            raise

    def extra_repr(self) -> str:
        """The user parameters, from the one place they are kept (`self.params`, where a loss has them)."""
        params = getattr(self, "params", None)
        return ", ".join(f"{k}={v!r}" for k, v in params) if isinstance(params, LossParams) else ""

    @classmethod
    def checked_params(cls, **values: Any) -> LossParams:
        """The constructor's user parameters validated by `Params`; a bad one is a one-line ValueError."""
        try:
            return cls.Params(**values)
        except ValidationError as err:
            key, reason = describe_error(err.errors()[0])
            raise ValueError(f"{cls.__name__}: {key}: {reason}") from None

    @property
    def active_inputs(self) -> tuple[str, ...]:
        """What `forward` takes for this instance's parameters (the objectives pass exactly these)."""
        return type(self).inputs_for(self.params)
