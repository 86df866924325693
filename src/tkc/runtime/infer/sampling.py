"""Per-row pieces of BatchingEngine's decode step: seeded generators, temperature/top-p sampling, KV padding."""

from __future__ import annotations

import torch

from tkc.runtime.infer.engine import SamplingParams


def row_generator(params: SamplingParams, index: int, device: torch.device) -> torch.Generator | None:
    """Choice `index`'s own generator, seeded (seed + index): its samples do not depend on its batch mates."""
    if params.temperature == 0:
        return None
    return torch.Generator(device=device).manual_seed(params.seed + index)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Temperature, then top-p (the smallest set of tokens whose mass reaches top_p, as transformers' warper)."""
    scores = logits / params.temperature
    if not torch.isfinite(scores[torch.isfinite(logits)]).all():  # a temperature so small the logits overflow:
        return int(logits.argmax())  # its limit, greedy (softmax of inf - inf was nan: multinomial raised)
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - params.top_p)
        remove[-1] = False  # keep at least the most likely token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = scores.softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros on the left of `dim` up to `width` (masked positions: their values are never attended to)."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
