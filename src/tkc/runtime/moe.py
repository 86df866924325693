"""Mixture-of-experts training: the router's load-balancing loss added to the LM loss as transformers adds it.

transformers' MoE causal LMs (Qwen2/3-MoE, Mixtral, ...), given `output_router_logits=True` and labels, return
`loss = mean CE + router_aux_loss_coef * load_balancing_loss_func(router_logits, num_experts, top_k,
attention_mask)`. tkc computes its own token loss (a sum the loop divides by the global label count), so the aux
loss is added per micro-batch weighted by that micro-batch's label count: one micro-batch gives exactly
transformers' loss; under gradient accumulation each micro-batch's aux loss counts as much as its tokens do.
A micro-batch run as several forwards (unpadded pieces) has its router logits concatenated first, so the aux
loss is the micro-batch's, as one padded forward would give. The coefficient is the plan's (model.moe).
"""

from __future__ import annotations

import sys

import torch

from tkc.runtime.attention import unwrap

# one forward's router logits: (per-layer [tokens, experts] logits, its attention mask or None, its token count)
RouterRecord = tuple[tuple[torch.Tensor, ...], torch.Tensor | None, int]


def _balancing_fn(model):
    """The model's own transformers module's load_balancing_loss_func (the computation transformers uses)."""
    base = unwrap(model)
    fn = getattr(sys.modules[type(base).__module__], "load_balancing_loss_func", None)
    if fn is None or not hasattr(base, "num_experts"):
        raise RuntimeError(f"{type(base).__name__} computes no router auxiliary loss; the family's moe "
                           "aux_loss_coef must be 0")
    return base, fn


def aux_loss(model, records: list[RouterRecord]) -> torch.Tensor:
    """load_balancing_loss_func over every forward of one micro-batch (logits concatenated layer by layer)."""
    base, fn = _balancing_fn(model)
    layers = len(records[0][0])
    gate = tuple(torch.cat([logits[i] for logits, _, _ in records]) for i in range(layers))
    mask = None
    if any(m is not None for _, m, _ in records):
        device = gate[0].device
        mask = torch.cat([m.reshape(-1) if m is not None else torch.ones(n, dtype=torch.long, device=device)
                          for _, m, n in records])
    return fn(gate, base.num_experts, base.num_experts_per_tok, mask)


def moe_loss_sum(coef: float):
    """A Task.loss_sum: the summed token loss plus coef * the micro-batch's aux loss * its label count."""
    from tkc.runtime.stages.common import label_logps, pieces

    def loss_sum(model, batch) -> torch.Tensor:
        records: list[RouterRecord] = []
        parts = [label_logps(model, b, router=records) for b in pieces(batch)]
        nll = -sum(s.sum() for s, _ in parts)
        labels = sum(int(n.sum()) for _, n in parts)
        return nll + coef * aux_loss(model, records).to(nll.dtype) * labels

    return loss_sum
