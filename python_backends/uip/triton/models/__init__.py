"""TritonPythonModel classes, one module per served model; `model.py` shims import these."""
