"""The validation split every hyperparameter is chosen on (`params.yaml` `validation`), cut from the train split
only: nothing here loads the test split, so no choice can see it (tests/test_search.py replaces the test split
by a file that raises when read, and the search still completes).

Metric learning (Table 1) and self-taught metric learning: class-disjoint, as their test is (Musgrave et al.,
A Metric Learning Reality Check, ECCV 2020, Sec. 3.3): `validation.classes` are held out of the teacher's
train classes; the search trains on the rest and scores on the held-out classes' images. Self-supervised and
classification: a seeded `validation.fraction` of the train images is held out of every training. In a
setting without labels the fit part is unlabelled (`Setting.trained_on`): labels serve only the score.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config import Params
from pipeline.data.imageset import ImageSet, subset_classes
from pipeline.data.loading import load_images
from pipeline.setting import Setting


@dataclass(frozen=True)
class ValidationSplit:
    """What a search trains on (`fit`), what it scores (`validation`), and in words what the split is."""

    fit: ImageSet
    validation: ImageSet
    description: str


def validation_split(params: Params, setting: Setting, teacher: str) -> ValidationSplit:
    """The split of `setting` for the students of `teacher` (whose train classes a metric split divides)."""
    split = _split(params, setting, teacher)
    return ValidationSplit(setting.trained_on(split.fit), split.validation, split.description)


def _split(params: Params, setting: Setting, teacher: str) -> ValidationSplit:
    data, validation = params.data, params.validation
    if setting.unseen_classes:
        held_out = set(validation.classes)
        if not held_out:
            raise ValueError(f"validation.classes: none declared, so the {setting.value} grid has no class-disjoint "
                             "validation split to search on; hold out two or more of the teacher's train classes")
        train = load_images(data, "train")  # once: CUB-like sets are decoded here
        train_classes = params.teachers[teacher].train_classes
        if train_classes is None:  # every class of the train split (CUB, Cars, SOP: the class-disjoint half)
            train_classes = tuple(range(train.num_classes))
            if not held_out <= set(train_classes):
                raise ValueError(f"validation.classes: {sorted(held_out - set(train_classes))} are not classes of "
                                 f"{data.name}'s train split (0-{len(train_classes) - 1})")
        fit_classes = tuple(c for c in train_classes if c not in held_out)
        return ValidationSplit(
            subset_classes(train, fit_classes),
            subset_classes(train, validation.classes).subsample(validation.max_images, params.seed + 1),
            f"class-disjoint: fit on train classes {list(fit_classes)}, scored on the train images of classes "
            f"{list(validation.classes)} (the test classes are never seen)")
    classes = None if setting is Setting.CLASSIFICATION else params.teachers[teacher].train_classes
    images = load_images(data, "train", classes)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(params.seed))
    held = round(validation.fraction * len(images))
    if held < 2 or held >= len(images):
        raise ValueError(f"validation.fraction: {validation.fraction} of {len(images)} train images holds out "
                         f"{held}; it must leave two or more on each side")
    return ValidationSplit(
        images.rows(order[held:].sort().values),
        images.rows(order[:held].sort().values).subsample(validation.max_images, params.seed + 1),
        f"held-out images: {validation.fraction:g} of the train images ({held}) kept out of every training, "
        f"scored on at most {validation.max_images} of them")

