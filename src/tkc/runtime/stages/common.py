"""Helpers every stage uses: load its rows, pad them, token losses, save the model and the stage records."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from tkc.bundle.plan import ResolvedStage
from tkc.runtime import outputs
from tkc.runtime.context import RunContext
from tkc.runtime.loop import LoopResult, Rows


def load_rows(ctx: RunContext, stage: ResolvedStage, *, datasets: list[str] | None = None) -> tuple[Rows, Rows]:
    """Token-id rows for the stage from tkc.runtime.data (looked up at call time so tests can substitute it);
    the stage's own kind picks them (ppo, grpo and eval read unpacked sft rows: tkc.runtime.data.build.ROWS_KIND)."""
    from tkc.runtime import data

    if datasets is not None:
        stage = attrs.evolve(stage, datasets=tuple(datasets))
    built = data.build_stage_data(ctx.plan, stage, ctx.tokenizer(), ctx.source_root, ctx.outputs / ".cache",
                                  template_text=ctx.chat_template(), bundle_dir=ctx.bundle_dir)
    return list(built.train), list(built.eval or [])


Batch = dict[str, torch.Tensor]
Pieces = list[Batch]  # one micro-batch as forward-sized pieces: [padded batch], or unpadded runs of rows


def pad(rows: Rows, pad_id: int, media: Callable | None = None) -> Batch:
    """Right-pad a micro-batch with tkc.runtime.data.collate (labels -100; packed rows keep position_ids)."""
    from tkc.runtime.data import collate

    return collate(rows, pad_id, media)


def make_collate(stage: ResolvedStage, pad_id: int, *, packed: bool = False,
                 media: Callable | None = None) -> Callable[[Rows], Pieces]:
    """The stage's resolved `train.padding`: `longest` = one batch padded to its longest row; `unpadded` = each
    run of equal-length rows on its own (tkc.runtime.data.collate.collate_unpadded), no attention_mask, or with
    `packed` (token-loss stages on a model with varlen attention) every row end to end in one sequence
    (collate_packed). The loss is the same sum over the same rows either way; only the padding is not computed.
    `media`: rows' images into pixel tensors (tkc.runtime.multimodal.media_encoder); rows with media are never
    joined end to end (collate_packed leaves them to collate_unpadded)."""
    if stage.train.padding == "unpadded":
        from tkc.runtime.data.collate import collate_packed, collate_unpadded

        if packed:
            return lambda rows: collate_packed(rows, pad_id, media)
        return lambda rows: collate_unpadded(rows, pad_id, media)
    if stage.train.padding != "longest":
        raise ValueError(f"unknown train.padding {stage.train.padding!r}")
    return lambda rows: [pad(rows, pad_id, media)]


def pieces(batch: Batch | Pieces) -> Pieces:
    return [batch] if isinstance(batch, dict) else batch


def label_units(rows: Rows, key: str = "labels") -> int:
    """Number of predicted label tokens (labels are aligned with input_ids; the model predicts position t+1)."""
    return sum(sum(1 for x in r[key][1:] if x != -100) for r in rows)


def token_count(rows: Rows) -> int:
    return sum(len(v) for r in rows for k, v in r.items() if k.endswith("input_ids"))


@functools.cache
def _forward_keeps_logits(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def keeps_logits(model) -> bool:
    """Whether the (DDP- / PEFT-wrapped) model's forward takes `logits_to_keep` (transformers' CausalLM heads do)."""
    from tkc.runtime.attention import unwrap

    return _forward_keeps_logits(type(unwrap(model)))


def label_logps(model, batch: Batch, prefix: str = "", *, past: list | None = None, start: int = 0,
                router: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (sum of log p(label) over its counted next tokens, how many), after the causal shift.

    Only the positions some row predicts a label from go through the LM head and log-softmax (`logits_to_keep`
    with their indices; full logits sliced the same way for a model without it): prompt tokens cost no vocab
    projection. `prefix` picks `chosen_` / `rejected_` columns of a pair batch. `past` holds the keys/values of
    the first `start` tokens (shared_prompt), which are then not run again; no label is predicted from them.
    `router`: a MoE model's router logits are appended to it (tkc.runtime.moe), with the mask and token count.
    """
    kwargs = {k: batch[prefix + k] for k in ("attention_mask", "position_ids") if prefix + k in batch}
    if "cu_seq_lens" in batch:  # rows end to end (collate_packed): each attends to itself only
        from tkc.runtime.attention import forward_kwargs

        kwargs.update(forward_kwargs(batch["cu_seq_lens"]))
    target = F.pad(batch[prefix + "labels"][:, 1:], (0, 1), value=-100)[:, start:]  # position t predicts t+1
    cols = (target != -100).any(0).nonzero().squeeze(-1)
    if past is not None:
        from transformers import DynamicCache

        kwargs["past_key_values"] = DynamicCache(ddp_cache_data=past)  # a fresh cache: the forward appends to it
    ids, use_cache = batch[prefix + "input_ids"][:, start:], past is not None
    if "pixel_values" in batch or "input_features" in batch:  # media: pixels (+ modality ids) or audio features
        from tkc.runtime.multimodal import media_kwargs

        kwargs.update(media_kwargs(model, batch, ids))
    if router is not None:
        kwargs["output_router_logits"] = True
    if keeps_logits(model):
        out = model(input_ids=ids, **kwargs, use_cache=use_cache, logits_to_keep=cols)
        logits = out.logits
    else:
        out = model(input_ids=ids, **kwargs, use_cache=use_cache)
        logits = out.logits[:, cols]
    if router is not None:
        router.append((out.router_logits, kwargs.get("attention_mask"), ids.numel()))
    target = target[:, cols]
    mask = target != -100
    logps = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1), mask.sum(-1)


def prompt_len(c_ids: torch.Tensor, c_labels: torch.Tensor, r_ids: torch.Tensor, r_labels: torch.Tensor) -> int:
    """Leading tokens every chosen and rejected row of a piece (rows, T) share, up to the token before either
    side's first label (the continuation starts before any label); 0 when that leaves nothing."""
    n = min(c_ids.size(1), r_ids.size(1))
    same = int((c_ids[:, :n] == r_ids[:, :n]).all(0).long().cumprod(0).sum())
    firsts = [int(f[0]) for f in ((lab != -100).any(0).nonzero() for lab in (c_labels, r_labels)) if len(f)]
    start = min([same, *firsts]) - 1
    return start if start >= 1 else 0


def shared_prompt(model, b: Batch) -> tuple[list | None, int]:
    """Keys/values of the leading tokens an unpadded pair piece's chosen and rejected rows share (up to the token
    before either side's first label), run once for both sides; (None, 0) when there is nothing to share.
    Causal attention makes those tokens' states independent of what follows, so the result is unchanged."""
    c = b["chosen_input_ids"]
    start = prompt_len(c, b["chosen_labels"], b["rejected_input_ids"], b["rejected_labels"])
    if start < 1 or not keeps_logits(model):
        return None, 0
    from transformers import DynamicCache

    # full layers: a cache the model made from its config would keep only a sliding layer's last `window` tokens,
    # which the continuation's fresh cache (label_logps) would then take for the first ones
    out = model(input_ids=c[:, :start], past_key_values=DynamicCache(), use_cache=True,
                logits_to_keep=torch.zeros(0, dtype=torch.long, device=c.device))
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers], start


def lm_loss_sum(model, batch: Batch | Pieces) -> torch.Tensor:
    """Summed next-token cross-entropy over label tokens (the loop divides by the global label count)."""
    return -sum(label_logps(model, b)[0].sum() for b in pieces(batch))


def save_model(ctx: RunContext, stage: ResolvedStage, model) -> None:
    """outputs/<stage>/model/: adapter or full weights (safetensors), tokenizer, chat template. Every rank calls:
    under sharding (ZeRO-3, FSDP) the strategy gathers the whole weights to the main rank, which writes them."""
    strat = ctx.strategies.get(stage.name)
    state = strat.full_state_dict(model) if strat is not None else None
    if not ctx.dist.is_main:
        return
    from tkc.runtime.checkpoint import save_model_dir

    template = ctx.chat_template()
    extra = {} if state is None else {"state_dict": state}

    def write(folder) -> None:
        model.save_pretrained(str(folder), safe_serialization=True, **extra)
        ctx.tokenizer().save_pretrained(str(folder))
        if template is not None:
            (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
        from tkc.runtime.multimodal import save_processor

        save_processor(ctx, folder)  # a vision-language model's image processor

    # atomic (a full disk leaves no half-written model/, raises SaveFailed), adapter_config.json byte-stable
    save_model_dir(ctx.stage_dir(stage) / "model", write)


def finish(ctx: RunContext, stage: ResolvedStage, result: LoopResult, metrics: dict[str, Any]) -> None:
    """metrics.json, loss.png, run_record.json, then DONE (last, so a crash before it reruns the stage)."""
    if ctx.dist.is_main:
        out = ctx.stage_dir(stage)
        losses = [r["loss"] for r in result.records if "loss" in r]
        metrics = {"steps": result.steps, "tokens_seen": result.tokens_seen,
                   "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
                   "eval_loss": result.eval_loss, **metrics}
        outputs.write_json(out / "metrics.json", metrics)
        outputs.plot_loss(out / "loss.png", result.records, f"{stage.name} ({stage.kind})")
        outputs.write_json(out / "run_record.json", outputs.run_record(
            ctx, stage, wall_s=result.wall_s, tokens_seen=result.tokens_seen, steps=result.steps,
            resumed_from=result.resumed_from))
    outputs.mark_done(ctx, stage)


def sequence_logps(model, batch: Batch | Pieces, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, in row order: (sum of label-token log-probs, number of label tokens, at least 1)."""
    parts = [label_logps(model, b, prefix) for b in pieces(batch)]
    return torch.cat([s for s, _ in parts]), torch.cat([n for _, n in parts]).clamp(min=1)


def concat_pairs(batch: Batch, pad_id: int) -> Batch:
    """Chosen rows then rejected rows in one padded batch, so a pair costs one forward pass."""
    width = max(batch["chosen_input_ids"].size(1), batch["rejected_input_ids"].size(1))

    def both(key: str, value: int) -> torch.Tensor:
        return torch.cat([F.pad(batch[f"{side}_{key}"], (0, width - batch[f"{side}_{key}"].size(1)), value=value)
                          for side in ("chosen", "rejected")])

    media: dict[str, torch.Tensor] = {k: torch.cat([batch[k], batch[k]]) for k in (
        "pixel_values", "image_grid_thw", "input_features", "feature_attention_mask") if k in batch}
    return {"input_ids": both("input_ids", pad_id), "attention_mask": both("attention_mask", 0),
            "labels": both("labels", -100), **media}  # a pair's one image list, for its chosen and rejected rows


def pair_forward(fn, batch: Batch | Pieces, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(batch, prefix) -> per-row tensor, for the chosen rows and the rejected rows of pair pieces.

    A padded piece (it has attention masks) runs chosen and rejected as one batch (concat_pairs); an unpadded
    piece runs each side at its own length.
    """
    chosen, rejected = [], []
    for b in pieces(batch):
        if "chosen_attention_mask" in b:
            both, n = fn(concat_pairs(b, pad_id), ""), b["chosen_input_ids"].size(0)
            chosen.append(both[:n])
            rejected.append(both[n:])
        else:
            chosen.append(fn(b, "chosen_"))
            rejected.append(fn(b, "rejected_"))
    return torch.cat(chosen), torch.cat(rejected)


def pair_logps(model, batch: Batch | Pieces, pad_id: int, *, share_prompt: bool = False) -> tuple[torch.Tensor, ...]:
    """(chosen log-probs, rejected log-probs, chosen counts, rejected counts) per pair, summed over label tokens.
    share_prompt: unpadded pieces run their common prompt once (shared_prompt) for both sides; on a model with
    tkc's varlen attention, all pieces' prompts and then all continuations each run as one forward
    (packed_pair_logps)."""
    from tkc.runtime.attention import enabled

    if (share_prompt and enabled(model) and keeps_logits(model)
            and all("chosen_attention_mask" not in b for b in pieces(batch))):
        return packed_pair_logps(model, batch)
    prompts = {id(b): shared_prompt(model, b) for b in pieces(batch)
               if share_prompt and "chosen_attention_mask" not in b}

    def fn(b: Batch, prefix: str) -> torch.Tensor:
        past, start = prompts.get(id(b), (None, 0))
        s, n = label_logps(model, b, prefix, past=past, start=start)
        return torch.stack([s, n.clamp(min=1).to(s.dtype)], -1)

    c, r = pair_forward(fn, batch, pad_id)
    return c[:, 0], r[:, 0], c[:, 1], r[:, 1]


def packed_pair_logps(model, batch: Batch | Pieces) -> tuple[torch.Tensor, ...]:
    """pair_logps with share_prompt for unpadded pair pieces, in two forwards on a model with tkc's varlen
    attention: every pair's shared prompt end to end (each attending to itself), then every chosen and rejected
    continuation end to end, each attending to its own pair's cached prompt and causally to itself (positions
    continue from the prompt). The same log-probs as one pair at a time, with the linear layers run once over a
    micro-batch's tokens instead of once per piece and side."""
    from transformers import DynamicCache

    from tkc.runtime.attention import forward_kwargs

    pairs = [(b["chosen_input_ids"][i], b["chosen_labels"][i], b["rejected_input_ids"][i], b["rejected_labels"][i])
             for b in pieces(batch) for i in range(b["chosen_input_ids"].size(0))]
    dev = pairs[0][0].device  # what this function makes goes where the batch is (the stage's device)
    starts = [prompt_len(*(t[None] for t in p)) for p in pairs]
    past, bounds = None, torch.tensor([0, *starts]).cumsum(0)
    if any(starts):
        prompts = [c[:n] for (c, *_), n in zip(pairs, starts, strict=True) if n]
        cu = torch.tensor([0, *(len(p) for p in prompts)], device=dev).cumsum(0)
        positions = torch.cat([torch.arange(len(p), device=dev) for p in prompts])
        # full layers, as in shared_prompt (a sliding layer's cache would keep the packed sequence's last tokens)
        out = model(input_ids=torch.cat(prompts)[None], position_ids=positions[None], past_key_values=DynamicCache(),
                    use_cache=True, logits_to_keep=torch.zeros(0, dtype=torch.long, device=dev), **forward_kwargs(cu))
        past = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    ids, targets, positions, prefix = [], [], [], []
    for (c, cl, r, rl), n, ps in zip(pairs, starts, bounds[:-1].tolist(), strict=True):
        for tokens, labels in ((c, cl), (r, rl)):  # segment 2i: chosen of pair i, 2i + 1: its rejected
            ids.append(tokens[n:])
            targets.append(F.pad(labels[1:], (0, 1), value=-100)[n:])  # position t predicts t + 1
            positions.append(torch.arange(n, tokens.numel(), device=dev))
            prefix.append((ps, ps + n))
    cu = torch.tensor([0, *(len(x) for x in ids)], device=dev).cumsum(0)
    target = torch.cat(targets)
    cols = (target != -100).nonzero().squeeze(-1)
    kwargs = {"cu_seq_lens_q": cu, "tkc_prefix": torch.tensor(prefix, device=dev)}
    if past is not None:
        kwargs["past_key_values"] = DynamicCache(ddp_cache_data=past)
    logits = model(input_ids=torch.cat(ids)[None], position_ids=torch.cat(positions)[None],
                   use_cache=past is not None, logits_to_keep=cols, **kwargs).logits[0]
    logps = torch.gather(F.log_softmax(logits.float(), dim=-1), 1, target[cols].unsqueeze(-1)).squeeze(-1)
    segment = torch.searchsorted(cu, cols, right=True) - 1
    sums = torch.zeros(len(ids), dtype=logps.dtype, device=dev).index_add(0, segment, logps)
    counts = torch.zeros(len(ids), dtype=logps.dtype, device=dev).index_add(0, segment, torch.ones_like(logps)).clamp(min=1)
    return sums[0::2], sums[1::2], counts[0::2], counts[1::2]


class Reference:
    """The frozen reference policy: the LoRA model with its adapter disabled, or a frozen copy of the start weights."""

    def __init__(self, model, *, lora: bool, dtype: torch.dtype = torch.float32):
        """`model` is already on the stage's device, so the frozen copy is too; `dtype`: the copy's (frozen weights
        in the stage's compute dtype, as LoRA's frozen base; fp32 on the CPU)."""
        import copy

        self.lora = lora
        self.model = model if lora else copy.deepcopy(model).eval().requires_grad_(False).to(dtype)

    @torch.no_grad()
    def __call__(self, fn, *args, **kwargs):
        """fn(model, *args, **kwargs) with the reference weights, e.g. reference(sequence_logps, batch)."""
        from contextlib import nullcontext

        with self.model.disable_adapter() if self.lora else nullcontext():
            return fn(self.model, *args, **kwargs)


def train_stage(ctx: RunContext, stage: ResolvedStage, model, task, *, describe: str, extra: dict | None = None) -> int:
    """Optimizer, rows, the loop, then model + records + DONE: the tail every training stage shares."""
    from tkc.runtime import loop
    from tkc.runtime.model import build_optimizer, count_params

    optimizer = build_optimizer(model, stage)
    train_rows, eval_rows = load_rows(ctx, stage)
    trainable, total = count_params(model)
    ctx.log(f"[{stage.name}] {describe}: {len(train_rows)} rows, {trainable:,}/{total:,} trainable params")
    result = loop.train(ctx, stage, model, optimizer, task, train_rows, eval_rows)
    if result.exit_code:
        return result.exit_code
    save_model(ctx, stage, model)
    finish(ctx, stage, result, {"trainable_params": trainable, "total_params": total, **(extra or {})})
    return 0
