"""Unified inference platform: Triton model repositories and Python backends from one spec."""

__version__ = "0.1.0"
