# Generated from specs/llm_bls.yaml by `uip repo build`; logic in python_backends/uip.
from uip.triton.models.llm_bls import LlmBlsModel as TritonPythonModel  # noqa: F401
