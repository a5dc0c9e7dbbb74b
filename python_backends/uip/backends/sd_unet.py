"""`sd_unet` (Mono): sample [C, h, w], timestep FP32 [1] (one per sample), encoder_hidden_states
[L, D] -> noise_pred [C, h, w]. Dynamic batching merges the steps of concurrent requests (each
sends its [negative, positive] pair) into one UNet call; per-sample timesteps let requests at
different steps share a batch (`UNet` flattens the [B, 1] timesteps to [B])."""

from __future__ import annotations

from uip.backends.sd_component import SDComponentModel
from uip.sd.models import UNet


class SDUNet(SDComponentModel):
    component, inputs, output = UNet, ["sample", "timestep", "encoder_hidden_states"], "noise_pred"
