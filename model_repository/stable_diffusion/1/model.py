# Generated from specs/stable_diffusion.yaml by `uip repo build`; logic in python_backends/uip.
from uip.triton.models.stable_diffusion import StableDiffusion as TritonPythonModel  # noqa: F401
