"""Validate all of params.yaml and check the dataset before any training starts: stage `prepare`. It runs
first, so a typo in a student's section or a missing dataset fails in seconds, not after a teacher."""
from __future__ import annotations

from pipeline import infra
from pipeline.config import Params, flatten
from pipeline.integrity import write_json
from pipeline.stage_spec import DATA_SUMMARY, PREPARE
from pipeline.wiring.common import stage_name


def prepare(params: Params) -> None:
    from pipeline.contracts import check_contracts

    check_contracts(params)  # every loss entry too, before any stage computes

    summary = check_dataset(params)
    tags = {"setting": "all", "teacher": "", "student": "", "method": PREPARE.name, "seed": params.seed}
    with infra.start_run(stage_name(PREPARE.name), experiment=params.mlflow.experiment,
                            params=flatten({"data": params.data.model_dump(mode="json")}), tags=tags) as run:
        run.log_metrics(summary, step=0)
    write_json(DATA_SUMMARY, summary)


def check_dataset(params: Params) -> dict[str, int]:
    """Counts of the train and test splits; refuses a given data.root that does not exist, labels outside the
    set's classes, crops larger than the images, unknown class ids, and Recall@K deeper than a gallery."""
    import torch

    from pipeline.data import ImageSet, load_dataset
    from pipeline.data.loading import unseen_classes

    data = params.data
    if (given := data.given_root()) is not None and not given.exists():
        raise FileNotFoundError(f"data.root: {data.root} does not exist (a given root is never replaced by "
                                "another copy of the data set)")
    summary = {}
    for split in ("train", "test"):
        # File datasets are only listed here (decoding them is the training stages' job).
        images = load_dataset(data.name, split, root=data.root, download=data.download, protocol=data.protocol)
        labels = images.labels
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= images.num_classes):
            raise ValueError(f"{data.name} {split}: labels {int(labels.min())}..{int(labels.max())} outside the "
                             f"set's {images.num_classes} classes (0..{images.num_classes - 1})")
        summary[f"{split}_images"] = len(images)
        summary[f"{split}_classes"] = int(labels.unique().numel())
        if isinstance(images, ImageSet) and images.image_size < data.image_size:
            raise ValueError(f"data.image_size: {params.data.image_size} is larger than the {split} images "
                             f"({images.image_size} px); crops cannot upsample")
    test = images  # the last split read
    summary["num_classes"] = test.num_classes
    deepest = max(params.evaluation.retrieval.ks)
    for name, teacher in params.teachers.items():
        out_of_range = [c for c in teacher.train_classes or () if c >= test.num_classes]
        if out_of_range:
            raise ValueError(f"teachers.{name}.train_classes: {out_of_range} out of range for {params.data.name} "
                             f"({test.num_classes} classes)")
        if teacher.train_classes is None:
            gallery = len(test)
        else:
            evaluated = torch.tensor(unseen_classes(teacher.train_classes, test.num_classes), dtype=test.labels.dtype)
            gallery = int(torch.isin(test.labels, evaluated).sum())
        if deepest > gallery - 1:
            raise ValueError(f"evaluation.retrieval.ks: Recall@{deepest} needs more than the {gallery - 1} other "
                             f"images a query of teacher {name}'s evaluation gallery has")
    return summary
