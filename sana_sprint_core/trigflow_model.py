"""TrigFlow wrapper: turns the flow-velocity DiT into the TrigFlow model F (SANA-Sprint Prop. 3.1)."""

from __future__ import annotations

from torch import Tensor, nn

from . import trigflow
from .dit import SanaSprintDiT
from .dit_layers import at_least_fp32


class TrigFlowModel(nn.Module):
    """F(x_s / sigma_d, s) from a Sana flow model, lossless (Prop. 3.1).

    Input x_in = x_s / sigma_d (the caller divides), s (B,) TrigFlow time in radians. Output F in
    sigma_d-normalised units: the caller multiplies by sigma_d. The transform runs in fp32 (the
    input dtype of the sampler); only the DiT forward runs in the model's compute dtype.
    """

    def __init__(self, dit: SanaSprintDiT):
        super().__init__()
        self.dit = dit

    def forward(
        self,
        x_in: Tensor,
        s: Tensor,
        context: Tensor,
        mask: Tensor | None = None,
        guidance: Tensor | None = None,
        **dit_kwargs,
    ) -> Tensor:
        tau = trigflow.flow_time(at_least_fp32(s))  # (B,), kept fp32: the sinusoid is taken in fp32
        tau_b = trigflow.bcast(tau, x_in)
        x_flow = at_least_fp32(x_in) * trigflow.flow_input_scale(tau_b)
        dtype = self.dit.compute_dtype
        v = self.dit(x_flow.to(dtype), tau, context.to(dtype), mask, guidance, **dit_kwargs)
        return trigflow.trigflow_output(x_flow, v.to(x_flow.dtype), tau_b)
