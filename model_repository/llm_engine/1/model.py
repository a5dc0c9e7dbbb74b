# Generated from specs/llm.yaml by `uip repo build`; logic in python_backends/uip.
from uip.triton.models.llm_engine import LlmEngineModel as TritonPythonModel  # noqa: F401
