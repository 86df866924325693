"""Variable-length causal attention: a micro-batch's rows laid end to end in one sequence, each attending only to
itself, so the linear layers run once over every real token (no padding, one forward instead of one per row).

transformers routes a model's attention through `config._attn_implementation` at every call (models with
`_supports_attention_backend`). `enable(model)` points it at `NAME`: sdpa itself (same masks, same function)
except for a call that carries row boundaries, as transformers' own flash-attention varlen keyword arguments
(`cu_seq_lens_q` / `cu_seq_lens_k`, passed down to every attention call). Such a call runs torch's causal SDPA on
each row's slice (`varlen_sdpa`). Positions restart at 0 on every row (`position_ids`), so rotary embeddings
see what they see for the row alone. A call that also carries `tkc_prefix` continues cached prefixes (DPO: a
micro-batch's prompts packed in one forward, then its chosen and rejected continuations in another): each row
attends to its own prefix's keys, then causally to itself (`prefixed_varlen_sdpa`). The choice stays on the
model for the whole stage, so gradient checkpointing's recomputation takes the same path, and it is not saved:
transformers leaves `_attn_implementation` out of config.json.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "tkc_varlen"


def varlen_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: q (1, heads, T, d), k/v (1, kv_heads, T, d) -> (1, T, heads, d).
    Rows without a prefix: prefixed_varlen_sdpa with every prefix empty."""
    rows = kwargs["cu_seq_lens_q"].numel() - 1
    return prefixed_varlen_sdpa(module, query, key, value, attention_mask,
                                **{**kwargs, "tkc_prefix": torch.zeros(rows, 2, dtype=torch.long)})


def prefixed_varlen_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                         dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                         **kwargs) -> tuple[torch.Tensor, None]:
    """Packed rows that continue cached prefixes (DPO continuations after their packed prompts): the cache holds
    the P prefix tokens end to end, then this call's C tokens. Row j is query[cu_seq_lens_q[j]:...]; it attends to
    its prefix `tkc_prefix[j]` = (start, end) in the first P keys, then causally to itself, as if the prefix and
    the row were one sequence (sliding windows kept: at most `window` tokens back, as transformers' masks)."""
    for extra in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(extra) is not None:
            raise ValueError(f"varlen attention does not support {extra!r}")
    if query.size(0) != 1:
        raise ValueError(f"varlen attention takes one packed row, got a batch of {query.size(0)}")
    bounds, prefix = kwargs["cu_seq_lens_q"].tolist(), kwargs["tkc_prefix"].tolist()
    window = kwargs.get("sliding_window")
    past = key.size(2) - query.size(2)
    gqa = query.size(1) != key.size(1)
    outs = []
    for (s, e), (ps, pe) in zip(zip(bounds[:-1], bounds[1:], strict=True), prefix, strict=True):
        n, p = e - s, pe - ps
        if p:
            k = torch.cat([key[:, :, ps:pe], key[:, :, past + s:past + e]], dim=2)
            v = torch.cat([value[:, :, ps:pe], value[:, :, past + s:past + e]], dim=2)
        else:
            k, v = key[:, :, past + s:past + e], value[:, :, past + s:past + e]
        mask = None
        if p or (window is not None and n > window):  # query i sits at p + i: keys up to it, `window` back at most
            back = (torch.arange(n, device=query.device)[:, None] + p) - torch.arange(p + n, device=query.device)
            mask = (back >= 0) if window is None else (back >= 0) & (back < window)
        outs.append(F.scaled_dot_product_attention(query[:, :, s:e], k, v, attn_mask=mask, dropout_p=dropout,
                                                   is_causal=mask is None, scale=scaling, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def sdpa_or_varlen(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, **kwargs):
    """varlen_sdpa for a packed call without a cache, prefixed_varlen_sdpa for packed rows continuing cached
    prefixes (the masks transformers built for either are not used), else sdpa."""
    if kwargs.get("tkc_prefix") is not None:
        return prefixed_varlen_sdpa(module, query, key, value, None, **kwargs)
    if kwargs.get("cu_seq_lens_q") is not None and query.size(2) == key.size(2):
        return varlen_sdpa(module, query, key, value, None, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, sdpa_or_varlen)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # masks exactly as for sdpa


def unwrap(model):
    """The transformers model inside a DDP and/or PEFT wrapper."""
    inner = getattr(model, "module", model)  # DDP
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT


def supports(model) -> bool:
    """Whether the model's attention goes through transformers' attention interface on sdpa (text decoders of
    transformers 5: Llama, Qwen2/3, Mistral, Gemma, ...), the only attention this function stands in for."""
    base = unwrap(model)
    config = getattr(base, "config", None)
    return (bool(getattr(type(base), "_supports_attention_backend", False)) and config is not None
            and getattr(config, "_attn_implementation", None) == "sdpa" and not getattr(config, "sub_configs", None)
            and getattr(config, "attn_logit_softcapping", None) is None)


def enable(model) -> bool:
    """Give the model sdpa_or_varlen when it supports() it; True when it did (or had it already)."""
    if enabled(model):
        return True
    if not supports(model):
        return False
    _register()
    unwrap(model).config._attn_implementation = NAME
    return True


def enabled(model) -> bool:
    return getattr(getattr(unwrap(model), "config", None), "_attn_implementation", None) == NAME


def forward_kwargs(cu_seq_lens: torch.Tensor) -> dict:
    """The keyword arguments a packed forward passes the model along with input_ids and position_ids."""
    longest = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest,
            "max_length_k": longest}
