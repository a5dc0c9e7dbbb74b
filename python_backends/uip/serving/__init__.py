"""The thin layer between pure backend logic and Triton's Python backend (pb_utils)."""
