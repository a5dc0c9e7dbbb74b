"""The Triton ring: the only code that imports triton_python_backend_utils (and tritonclient
from inside a stub): `pb`, the engine streams, one adapter per served model."""
