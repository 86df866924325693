"""LoRA linear layers whose adapter product is added by one GEMM: `addmm(base, A(x), B^T, alpha=scaling)`.

peft computes `base + B(A(x)) * scaling`: the full-width product is written, multiplied by `scaling` into a second
full-width tensor and added to the base output into a third, and the backward multiplies the full-width gradient
by `scaling` again. `addmm` accumulates the product into the base output inside the GEMM (beta = 1) and its
backward applies `alpha` on the rank-r sides only, so those full-width elementwise passes are gone. The sum is the
same (bit-identical here when `scaling` is a power of two, as with the default alpha = 2 * rank).

Only the plain case takes the fused path; everything else is peft's own forward, per call: adapters disabled
(a DPO reference), merged, several active adapters, a variant (DoRA), LoRA bias, dtype casts or autocast,
extra forward arguments (mixed-batch `adapter_names`), a base layer other than a plain `nn.Linear`, or hooks
on the B module (DeepSpeed ZeRO-3 gathers parameters in module hooks, so reading `B.weight` directly would see
an empty shard). The class is swapped on layers of exactly peft's `lora.Linear` type (not its quantized or
other subclasses); saved adapters, merging and loading are peft's, unchanged.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn


class FusedLinear(PeftLinear):
    """peft's `lora.Linear` with the plain single-adapter forward as one addmm (see the module docstring)."""

    def fused_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The adapter the fused path can run this call with, or None for peft's forward."""
        if args or kwargs or self.disable_adapters or self.merged or type(self.base_layer) is not nn.Linear:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        b = self.lora_B[name]
        if name in self.lora_variant or self.lora_bias.get(name) or b.bias is not None:
            return None
        if b._forward_hooks or b._forward_pre_hooks or torch.is_autocast_enabled(x.device.type):
            return None
        if not (x.dtype == b.weight.dtype == self.lora_A[name].weight.dtype):
            return None
        return name

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self.fused_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        h = self.lora_A[name](self.lora_dropout[name](x))
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]),
                          self.lora_B[name].weight.t(), alpha=self.scaling[name])
        return out.view(result.shape)


def fuse(model: nn.Module) -> None:
    """Swap every layer of exactly peft's `lora.Linear` type to FusedLinear."""
    for module in model.modules():
        if type(module) is PeftLinear:
            module.__class__ = FusedLinear
