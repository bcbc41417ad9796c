"""An exported model handed to deployment the way the MLflow ecosystem takes one: logged as an MLflow model
(the ONNX flavour, with its signature and an input example) on the export stage's run, and registered in the
Model Registry under a stable name carrying the run's tags, so `mlflow models serve -m models:/NAME/latest`
serves it. Runs in the run's agent (`RunLogger.call_in_agent`): the stage never imports MLflow.
"""
from __future__ import annotations

from collections.abc import Mapping


def register_onnx_model(run_id: str, onnx_path: str, example_path: str, name: str,
                        tags: Mapping[str, str]) -> dict[str, str]:
    """Log the ONNX model at `onnx_path` on run `run_id` and register it as `name`; `example_path`: a .npy batch
    of input images (the input example, and with the model's output on it the signature). The model's URI and
    registered version."""
    import mlflow
    import numpy as np
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    from pipeline.infra.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    example = np.load(example_path)
    opened = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    output = opened.run(None, {opened.get_inputs()[0].name: example})[0]
    info = mlflow.onnx.log_model(onnx.load(onnx_path), name="model", run_id=run_id,
                                 signature=infer_signature(example, output), input_example=example,
                                 registered_model_name=name, tags={k: str(v) for k, v in tags.items()},
                                 onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False)
    client = mlflow.MlflowClient(tracking_uri())
    version = str(info.registered_model_version)
    for key, value in tags.items():  # on the model, for the registry's list and search; on the version
        client.set_registered_model_tag(name, key, str(value))
        client.set_model_version_tag(name, version, key, str(value))
    return {"model_uri": info.model_uri, "version": version}
