"""The pipeline's infrastructure behind one facade: what the research core and the stages import.

- tracking MLflow runs: ``start_run`` / ``RunLogger`` (``run_logger``), the run's agent process
  (``agent``), what a run is in MLflow (``runs``), where runs are stored (``store``), what the MLflow UI
  shows of an invocation (``views``), an exported model in the Model Registry (``models``);
- launching under torchrun (``launch``; ``endpoint`` reads ``host:port``);
- the code manifests DVC re-runs stages on (``code_manifest``).

Nothing here imports torch or MLflow at import time. No module of this package imports project code
outside it, and project code outside it imports this facade, not its modules (tests/test_import_graph.py).
"""
from pipeline.infra.agent import prestart_agent
from pipeline.infra.code_manifest import (code_digest, imported_project_modules, manifest_path, unlisted_imports,
                                          write_manifest)
from pipeline.infra.endpoint import parse_endpoint
from pipeline.infra.launch import is_main_process, relaunch_under_torchrun
from pipeline.infra.models import register_onnx_model
from pipeline.infra.run_logger import RunLogger, start_run
from pipeline.infra.runs import dotted_keys, owner_is_gone, process_owner
from pipeline.infra.store import TrackingUnavailableError, redact_uri
from pipeline.infra.views import publish_report

__all__ = ["RunLogger", "TrackingUnavailableError", "code_digest", "dotted_keys", "imported_project_modules",
           "is_main_process", "manifest_path", "owner_is_gone", "parse_endpoint", "prestart_agent", "process_owner",
           "publish_report", "redact_uri", "register_onnx_model", "relaunch_under_torchrun", "start_run", "unlisted_imports", "write_manifest"]
