"""Packed token rows (collate_packed + tkc.runtime.attention): the rows of a micro-batch end to end in one forward,
each attending to itself only, give the loss and gradients of one forward per row."""

from __future__ import annotations

import pytest
import torch

from tkc.runtime import attention
from tkc.runtime.data.collate import collate_packed, collate_unpadded
from tkc.runtime.stages import common


def _rows(seed: int, shape=((12, 4), (7, 2), (15, 9), (9, 0)), vocab: int = 600) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n, start in shape:
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * start + ids[start:], "attention_mask": [1] * n})
    return rows


def _tiny(arch: str, **extra):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = cls(vocab_size=640, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def _loss_and_grads(model, pieces):
    model.zero_grad(set_to_none=True)
    loss = common.lm_loss_sum(model, pieces)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    scale = max(g.abs().max().item() for g in grads_b.values())
    for name, g in grads_b.items():
        torch.testing.assert_close(grads_a[name], g, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_collate_packed_lays_rows_end_to_end():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
            {"input_ids": [9, 8], "labels": [9, 8], "attention_mask": [1, 1]},
            {"input_ids": [4, 4, 4, 4], "labels": [4, 4, 4, 4], "attention_mask": [1] * 4}]
    (piece,) = collate_packed(rows, pad_id=0)
    assert piece["input_ids"].tolist() == [[5, 6, 7, 9, 8, 4, 4, 4, 4]]
    # each row's first label is dropped: no row predicts the next row's first token
    assert piece["labels"].tolist() == [[-100, 6, 7, -100, 8, -100, 4, 4, 4]]
    assert piece["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert piece["cu_seq_lens"].tolist() == [0, 3, 5, 9]
    assert "attention_mask" not in piece
    # what it cannot lay end to end goes to collate_unpadded
    packed_rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "position_ids": [0, 1, 0]}]
    assert "cu_seq_lens" not in collate_packed(packed_rows, 0)[0]
    pairs = [{"chosen_input_ids": [1, 2], "chosen_labels": [-100, 2], "rejected_input_ids": [1, 3],
              "rejected_labels": [-100, 3]}]
    assert collate_packed(pairs, 0)[0].keys() == collate_unpadded(pairs, 0)[0].keys()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_packed_forward_matches_one_forward_per_row(arch):
    model = _tiny(arch)
    rows = _rows(1)
    per_row = _loss_and_grads(model, collate_unpadded(rows, 0))
    assert attention.enable(model) and attention.enabled(model)
    packed = collate_packed(rows, 0)
    assert len(packed) == 1 and "cu_seq_lens" in packed[0]
    _assert_same(_loss_and_grads(model, packed), per_row)
    # without the varlen path, transformers' own block-diagonal mask from position_ids gives the same (slower)
    model.config._attn_implementation = "sdpa"
    _assert_same(_loss_and_grads(model, packed), per_row)


def test_attention_really_stays_inside_each_row():
    """A packed forward whose boundaries are ignored would let row 2 attend to row 1: a different loss."""
    model = _tiny("qwen2")
    rows = _rows(3)
    attention.enable(model)
    packed = collate_packed(rows, 0)
    separate = common.lm_loss_sum(model, packed).item()
    one_sequence = dict(packed[0], cu_seq_lens=torch.tensor([0, packed[0]["input_ids"].size(1)]))
    assert common.lm_loss_sum(model, [one_sequence]).item() != pytest.approx(separate, rel=1e-4)


def test_packed_with_gradient_checkpointing_and_lora():
    """Checkpointing recomputes each layer during backward, with the same varlen path (the choice lives on the
    model, not around the forward call)."""
    from peft import LoraConfig, get_peft_model

    model = _tiny("qwen2")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                             init_lora_weights=False))
    model.train()
    rows = _rows(4)
    per_row = _loss_and_grads(model, collate_unpadded(rows, 0))
    assert attention.enable(model)
    _assert_same(_loss_and_grads(model, collate_packed(rows, 0)), per_row)


def test_sliding_window_rows_match():
    model = _tiny("qwen2", use_sliding_window=True, sliding_window=5, max_window_layers=0)
    assert model.config.layer_types[0] == "sliding_attention"
    rows = _rows(5)
    per_row = _loss_and_grads(model, collate_unpadded(rows, 0))
    assert attention.enable(model)
    _assert_same(_loss_and_grads(model, collate_packed(rows, 0)), per_row)


def test_models_outside_the_attention_interface_are_not_given_it():
    model = _tiny("qwen2")
    model.config._attn_implementation = "eager"
    assert not attention.supports(model) and not attention.enable(model)
    assert model.config._attn_implementation == "eager"


def test_the_choice_is_not_saved(tmp_path):
    import json

    model = _tiny("llama")
    attention.enable(model)
    model.save_pretrained(tmp_path)
    assert attention.NAME not in (tmp_path / "config.json").read_text()
    assert "attn_implementation" not in json.loads((tmp_path / "config.json").read_text())


def test_sft_task_packs_rows_unless_neftune(rt, tmp_path, tiny_pretrained, shared_datasets):
    """The sft stage collates unpadded micro-batches as one packed piece; NEFTune (noise scaled by the sequence
    length) keeps one forward per row."""
    from tkc.runtime.stages import sft

    for neftune, want in ((None, True), (5.0, False)):
        st = rt.stage("sft", "sft", 0, ["alpaca"], method="lora", padding="unpadded", neftune_alpha=neftune,
                      max_steps=1, global_batch_size=4, micro_batch_size=4, save_steps=0)
        plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained", cutoff_len=160)
        ctx = rt.make_ctx(rt.write_bundle(tmp_path / str(neftune), plan))
        stage = ctx.stage_by_name("sft")
        task, model = sft.build_task(ctx, stage)
        rows, _ = common.load_rows(ctx, stage)
        pieces = task.collate(rows[:4])
        assert ("cu_seq_lens" in pieces[0]) is want, neftune
        assert attention.enabled(model) is want


# --- DPO pairs: packed prompts, then packed continuations over each pair's cached prompt (packed_pair_logps) ---

def _pairs(seed: int, shape=((6, 5, 4), (3, 7, 7), (0, 6, 5), (9, 4, 4), (5, 8, 8)), vocab: int = 600) -> list[dict]:
    """(prompt length, chosen length, rejected length) -> pair rows; labels on the responses only. Pair 3 has no
    prompt (its sides differ from the first token); pairs 4 and 5 give equal-length pieces of two rows."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for p, c, r in shape:
        prompt = torch.randint(1, vocab, (p,), generator=g).tolist()
        row = {}
        for side, n in (("chosen", c), ("rejected", r)):
            resp = torch.randint(1, vocab, (n,), generator=g).tolist()
            row[f"{side}_input_ids"] = prompt + resp
            row[f"{side}_labels"] = [-100] * p + resp
        if p == 0:
            row["rejected_input_ids"][0] = row["chosen_input_ids"][0] % (vocab - 1) + 1
            row["rejected_labels"][0] = row["rejected_input_ids"][0]
        rows.append(row)
    return rows


def _pair_logps_and_grads(model, batch, mode: str):
    """mode: packed (packed_pair_logps), shared (one piece at a time, its prompt run once), whole (each side's
    whole sequence on its own: what the other two must equal)."""
    model.zero_grad(set_to_none=True)
    if mode == "packed":
        assert attention.enable(model)
    else:
        model.config._attn_implementation = "sdpa"
    out = common.pair_logps(model, batch, 0, share_prompt=mode != "whole")
    assert attention.enabled(model) is (mode == "packed")
    (out[0] * 0.7 - out[1] * 1.3).sum().backward()
    return [t.detach() for t in out], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_pairs(a, b):
    for x, y in zip(a[0], b[0], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    _assert_same((0.0, a[1]), (0.0, b[1]))


@pytest.mark.parametrize("arch,extra", [("qwen2", {}), ("llama", {}),
                                        ("qwen2", {"use_sliding_window": True, "sliding_window": 5,
                                                   "max_window_layers": 0})])
def test_packed_pairs_match_each_side_on_its_own(arch, extra):
    """Also the one-piece-at-a-time path: with a sliding window it used to lose early prompt keys (the prompt's
    cache, made from the config, kept only a sliding layer's last tokens)."""
    model = _tiny(arch, **extra)
    batch = collate_unpadded(_pairs(1), 0)
    assert len(batch) == 4 and max(b["chosen_input_ids"].size(0) for b in batch) == 2  # one piece of two pairs
    whole = _pair_logps_and_grads(model, batch, "whole")
    assert whole[0][2].tolist() == [5, 7, 5, 4, 8]  # chosen label counts
    _assert_same_pairs(_pair_logps_and_grads(model, batch, "shared"), whole)
    _assert_same_pairs(_pair_logps_and_grads(model, batch, "packed"), whole)


def test_packed_pairs_with_lora_and_its_reference():
    from tkc.bundle.plan import ResolvedLora
    from tkc.runtime.model import apply_lora

    lora = ResolvedLora(rank=4, alpha=8.0, dropout=0.0, targets=("q_proj", "v_proj"), variant="lora", init="default",
                        plus_ratio=None, modules_to_save=())  # fmt: skip
    model = apply_lora(_tiny("qwen2"), lora, task_type="CAUSAL_LM", quantized=False)
    for m in model.modules():
        if hasattr(m, "lora_B"):
            for b in m.lora_B.values():
                torch.nn.init.normal_(b.weight, std=0.1)
    model.train()
    batch = collate_unpadded(_pairs(2), 0)
    _assert_same_pairs(_pair_logps_and_grads(model, batch, "packed"), _pair_logps_and_grads(model, batch, "whole"))
    reference = common.Reference(model, lora=True)
    got = reference(common.pair_logps, batch, 0, share_prompt=True)
    model.config._attn_implementation = "sdpa"
    want = reference(common.pair_logps, batch, 0, share_prompt=True)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_packed_continuations_really_attend_to_their_own_prompt():
    """Shifting every continuation's prefix to the next pair's prompt changes the log-probs."""
    model = _tiny("qwen2")
    batch = collate_unpadded(_pairs(3), 0)
    attention.enable(model)
    with torch.no_grad():
        right = common.packed_pair_logps(model, batch)[0]
        original = attention.prefixed_varlen_sdpa

        def wrong(module, q, k, v, mask, **kw):
            return original(module, q, k, v, mask, **{**kw, "tkc_prefix": kw["tkc_prefix"].roll(2, 0)})

        try:
            attention.prefixed_varlen_sdpa = wrong
            shifted = common.packed_pair_logps(model, batch)[0]
        finally:
            attention.prefixed_varlen_sdpa = original
    assert not torch.allclose(right, shifted, rtol=1e-4)


DPO = {"loss": "sigmoid", "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5, "ftx": 0.0}


def test_dpo_task_packs_pairs_unless_checkpointing_or_neftune(rt, tmp_path, tiny_pretrained, shared_datasets):
    from tkc.runtime.stages import dpo

    for name, extra, want in (("plain", {}, True), ("gc", {"gradient_checkpointing": True}, False),
                              ("neft", {"neftune_alpha": 5.0}, False)):
        st = rt.stage("dpo", "dpo", 0, ["dpo_pairs"], method="lora", padding="unpadded", max_steps=1,
                      global_batch_size=2, micro_batch_size=2, save_steps=0, options=dict(DPO), **extra)
        plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained", cutoff_len=160)
        ctx = rt.make_ctx(rt.write_bundle(tmp_path / name, plan))
        _, model = dpo.build_task(ctx, ctx.stage_by_name("dpo"))
        assert attention.enabled(model) is want, name
