# Generated from specs/embedding.yaml by `uip repo build`; logic in python_backends/uip.
from uip.triton.models.embedding import EmbeddingModel as TritonPythonModel  # noqa: F401
