# Generated from specs/stable_diffusion.yaml by `uip repo build`; logic in python_backends/uip.
from uip.triton.models.sd_parts import SDVaeDecoder as TritonPythonModel  # noqa: F401
