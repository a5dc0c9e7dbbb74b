"""The Triton ring: the only code that imports triton_python_backend_utils (and tritonclient
from inside a stub): `pb`, the engine streams, one adapter per served model."""

from uip.core.gpu_compiler import skip_on_cpu_host

skip_on_cpu_host()  # before any adapter imports torch._dynamo (through diffusers/transformers)
