# Generated from specs/stable_diffusion.yaml by `uip repo build`; logic in python_backends/uip.
from uip.backends.sd_vae_decoder import SDVaeDecoder as TritonPythonModel  # noqa: F401
