# Generated from specs/stable_diffusion.yaml by `uip repo build`; logic in python_backends/uip.
from uip.triton.models.sd_parts import SDUNet as TritonPythonModel  # noqa: F401
