"""Launching tritonserver: the command and environment, one server, MPI ranks."""
