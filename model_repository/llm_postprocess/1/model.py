# Generated from specs/llm.yaml by `uip repo build`; logic in python_backends/uip.
from uip.triton.models.llm_postprocess import LlmPostprocessModel as TritonPythonModel  # noqa: F401
