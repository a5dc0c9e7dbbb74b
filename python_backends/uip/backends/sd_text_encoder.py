"""`sd_text_encoder` (Mono): input_ids INT64 [L] -> last_hidden_state [L, D] (dynamic batching)."""

from __future__ import annotations

from uip.sd.models import TextEncoder, setup
from uip.serving import pb


class SDTextEncoder:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings, self.device, dtype = setup(args)
        self.model = TextEncoder(self.settings.artifact_dir(), self.device, dtype)

    def _run(self, input_ids):
        return {"last_hidden_state": self.model(input_ids)}

    def execute(self, requests):
        return pb.execute_batched(requests, ["input_ids"], self._run, self.device)

    def finalize(self) -> None:
        self.model = None
