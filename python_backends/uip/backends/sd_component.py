"""The SD tensor models' shared Triton layer: load one pipeline part, run it under dynamic
batching (`pb.execute_batched`), one output tensor."""

from __future__ import annotations

from uip.sd.models import setup
from uip.serving import pb


class SDComponentModel:
    component: type  # uip.sd.models.TextEncoder, UNet or VaeDecoder
    inputs: list[str]  # the model's input tensors, in the component's call order
    output: str

    def initialize(self, args: dict[str, str]) -> None:
        self.settings, self.device, dtype = setup(args)
        self.model = self.component(self.settings.artifact_dir(), self.device, dtype)

    def _run(self, **tensors):
        return {self.output: self.model(*(tensors[n] for n in self.inputs))}

    def execute(self, requests):
        return pb.execute_batched(requests, self.inputs, self._run, self.device)

    def finalize(self) -> None:
        self.model = None
