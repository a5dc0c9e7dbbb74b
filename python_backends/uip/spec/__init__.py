"""The deployment spec: schema, loading and rendering into a Triton model repository."""

from uip.spec.schema import DeploymentSpec, ModelSpec, SpecError, load_spec, load_specs

__all__ = ["DeploymentSpec", "ModelSpec", "SpecError", "load_spec", "load_specs"]
