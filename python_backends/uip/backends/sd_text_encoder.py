"""`sd_text_encoder` (Mono): input_ids INT64 [L] -> last_hidden_state [L, D] (dynamic batching)."""

from __future__ import annotations

from uip.backends.sd_component import SDComponentModel
from uip.sd.models import TextEncoder


class SDTextEncoder(SDComponentModel):
    component, inputs, output = TextEncoder, ["input_ids"], "last_hidden_state"
