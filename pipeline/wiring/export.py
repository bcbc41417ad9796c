"""Export one trained embedding model and measure what it costs deployed: stage families `teacher_export`,
`transfer_export` and `metric_transfer_export` (issue 30).

The ONNX graph (uint8 images in, the evaluated embedding out; `pipeline.deploy.graph`) is checked against the
PyTorch model on the test images before it is written; its int8 variant follows. Both are scored (MAP@R,
Recall@1 by the evaluation's retrieval) and timed under ONNX Runtime; the gallery indexes are built on the
float model's test embeddings. Everything lands in `deploy.json` and on the stage's MLflow run, and the float
model is registered in the MLflow Model Registry as `EXPERIMENT.MODEL_ID`.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import infra
from pipeline.config import Params, flatten
from pipeline.metrics import MAP_AT_R
from pipeline.replica import Replica
from pipeline.stage_spec import (DEPLOY_METRICS, EXPORT, MODEL, ONNX, ONNX_INT8, TEACHER_EXPORT, deploy_dir, select,
                                 teacher_dir, teacher_id)
from pipeline.wiring.common import stage_name

EXAMPLE = "input_example.npy"  # two test images: the registered model's input example
KIND_TAG, EXPORT_KIND = "kind", "export"  # the MLflow tag that sets an export run apart from its model's training


def export_teacher(params: Params, name: str) -> None:
    config = params.teacher(name)
    tags = {"setting": config.setting.value, "teacher": name, "student": "", "method": config.method,
            "seed": params.seed}
    export(params, teacher_dir(name) / MODEL, teacher_id(name), name, f"{TEACHER_EXPORT.name}@{name}",
           TEACHER_EXPORT.keys(teacher=name), tags)


def export_student(params: Params, replica: Replica) -> None:
    family = EXPORT[replica.setting]
    export(params, replica.folder / MODEL, replica.name, replica.teacher, replica.stage_of(family.name),
           family.keys(teacher=replica.teacher), replica.tags)


def export(params: Params, checkpoint: Path, model_id: str, teacher: str, stage: str, keys: list[str],
           tags: dict) -> dict[str, float]:
    """Export `checkpoint` (model `model_id`, evaluated on `teacher`'s evaluation classes), measure, record."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist; run the stage that trains {model_id} first")
    import numpy as np
    import torch

    from pipeline.data.loading import evaluation_classes, load_images
    from pipeline.deploy.flops import flops_per_image
    from pipeline.deploy.graph import Deployable, embed, export_onnx, session
    from pipeline.deploy.index import index_costs
    from pipeline.deploy.latency import latency_ms
    from pipeline.deploy.quantize import quantize_int8
    from pipeline.eval.retrieval import retrieval_metrics
    from pipeline.integrity import write_json
    from pipeline.models.loading import count_parameters, load_saved_model
    from pipeline.train.fingerprint import file_sha256

    deploy, distance = params.deploy, params.evaluation.retrieval.distance
    test = load_images(params.data, "test", evaluation_classes(params, teacher))
    train = load_images(params.data, "train", params.teachers[teacher].train_classes)
    calibration = train.subsample(deploy.calibration_images, params.seed).images
    model, _ = load_saved_model(checkpoint)
    deployable = Deployable(model, test, params.data.image_size)
    source = file_sha256(checkpoint)
    out = deploy_dir(model_id)
    logged = select(params.model_dump(mode="json"), keys)
    # The model's own tags, so filtering by method finds its export beside its training; `kind` tells them apart.
    with infra.start_run(stage_name(stage), experiment=params.mlflow.experiment, params=flatten(logged),
                         tags={**tags, KIND_TAG: EXPORT_KIND}) as run:
        check = export_onnx(deployable, test, out / ONNX, source, distance)
        quantize_int8(out / ONNX, out / ONNX_INT8, calibration, source)
        with torch.inference_mode():
            one = deployable.preprocess(test.images[:1])
        record: dict[str, float] = {
            "parameters": count_parameters(model), "flops": flops_per_image(model, one),
            **{f"onnx_check.{key}": value for key, value in check.items()}}
        embeddings = {}
        for variant, file in (("fp32", ONNX), ("int8", ONNX_INT8)):
            x = embeddings[variant] = embed(session(out / file, source_sha256=source), test.images)
            scores = retrieval_metrics(torch.from_numpy(x), test.labels, ks=(1,), distance=distance, nmi=False)
            record.update({f"{variant}.{MAP_AT_R}": scores[MAP_AT_R], f"{variant}.recall@1": scores["recall@1"],
                           f"{variant}.file_bytes": (out / file).stat().st_size})
            timed = latency_ms(out / file, test.images, deploy.batch_sizes, deploy.threads, deploy.repeats)
            record.update({f"{variant}.{key}": value for key, value in timed.items() if key != "all_cores"})
            record["all_cores"] = timed["all_cores"]
        record.update({f"index.{key}": value
                       for key, value in index_costs(embeddings["fp32"], distance, deploy.index).items()})
        run.log_metrics(record, step=0)
        if deploy.registry:
            np.save(out / EXAMPLE, test.images[:2].numpy())
            registered = run.call_in_agent(infra.register_onnx_model, run.run_id, str((out / ONNX).resolve()),
                                           str((out / EXAMPLE).resolve()), f"{params.mlflow.experiment}.{model_id}",
                                           {k: str(v) for k, v in tags.items()})
            (out / EXAMPLE).unlink(missing_ok=True)
            run.set_tags({"registered_model": f"{params.mlflow.experiment}.{model_id}",
                          "registered_version": (registered or {}).get("version", "")})
        write_json(out / DEPLOY_METRICS, record)
    return record
