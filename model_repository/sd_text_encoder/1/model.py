# Generated from specs/stable_diffusion.yaml by `uip repo build`; logic in python_backends/uip.
from uip.backends.sd_text_encoder import SDTextEncoder as TritonPythonModel  # noqa: F401
