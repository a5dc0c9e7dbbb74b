# Generated from specs/stable_diffusion.yaml by `uip repo build`; logic in python_backends/uip.
from uip.backends.sd_unet import SDUNet as TritonPythonModel  # noqa: F401
