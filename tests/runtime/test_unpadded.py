"""train.padding: unpadded (each row at its own length) computes the same losses and gradients as padded batches."""

from __future__ import annotations

import importlib

import pytest
import torch

SMALL = {"max_steps": 3, "global_batch_size": 8, "micro_batch_size": 4, "save_steps": 0, "learning_rate": 1e-3}
DPO = {"loss": "sigmoid", "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5, "ftx": 0.0}
KTO = {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}
CASES = {  # name: (kind, method, datasets, options, head)
    "sft_lora": ("sft", "lora", ["alpaca"], {}, "causal_lm"),
    "sft_full": ("sft", "full", ["alpaca"], {}, "causal_lm"),
    "dpo_lora": ("dpo", "lora", ["dpo_pairs"], DPO, "causal_lm"),
    "dpo_full_ftx": ("dpo", "full", ["dpo_pairs"], {**DPO, "ftx": 0.5}, "causal_lm"),
    "kto_lora": ("kto", "lora", ["kto"], KTO, "causal_lm"),
    "rm_full": ("rm", "full", ["dpo_pairs"], {}, "seq_cls"),
}


def _bundle(rt, tmp_path, tiny_pretrained, case: str, padding: str):
    kind, method, datasets, options, _ = CASES[case]
    st = rt.stage(kind, kind, 0, datasets, options=options, method=method, padding=padding,
                  lora={"targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
                  **SMALL)
    cutoff = 512 if kind == "kto" else 160  # the kto demo conversations are long: leave some rows uncut
    plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained", cutoff_len=cutoff)
    for d in plan["datasets"].values():
        d["max_samples"] = 16
    return rt.write_bundle(tmp_path / padding, plan)


def _first_step_grads(rt, bundle, kind: str) -> tuple[float, dict[str, torch.Tensor], list[dict]]:
    """Loss and gradients of the first global batch, through the stage's own task and the loop's _one_step."""
    from tkc.runtime import loop, strategy
    from tkc.runtime.stages.common import load_rows

    ctx = rt.make_ctx(bundle)
    st = ctx.stage_by_name(kind)
    torch.manual_seed(st.train.seed)
    task, model = importlib.import_module(f"tkc.runtime.stages.{kind}").build_task(ctx, st)
    rows, _ = load_rows(ctx, st)
    per_epoch, _ = loop.plan_steps(len(rows), st.train)
    batch = [rows[i] for i in loop.batch_indices(len(rows), st.train, 0, per_epoch)]
    loss = loop._one_step(ctx, strategy.for_stage(ctx, st), model, task, batch, st.train)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss, grads, batch


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_unpadded_matches_padded(rt, tmp_path, tiny_pretrained, shared_datasets, case):
    kind = CASES[case][0]
    padded = _bundle(rt, tmp_path, tiny_pretrained, case, "longest")
    unpadded = _bundle(rt, tmp_path, tiny_pretrained, case, "unpadded")
    loss_p, grads_p, batch = _first_step_grads(rt, padded, kind)
    loss_u, grads_u, _ = _first_step_grads(rt, unpadded, kind)
    lengths = {len(v) for r in batch for k, v in r.items() if k.endswith("input_ids")}
    assert len(lengths) > 1, "the batch has no padding to skip: the comparison would prove nothing"
    assert loss_u == pytest.approx(loss_p, rel=1e-5)
    assert grads_p.keys() == grads_u.keys() and grads_p
    scale = max(g.abs().max().item() for g in grads_p.values())
    assert scale > 0
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_u[name], g, rtol=1e-4, atol=1e-5 * scale, msg=name)

    # three optimizer steps through the real loop: the same per-step losses, to float-order noise (Adam divides
    # by the root of squared gradients, so last-bit gradient differences in tiny components grow after a step:
    # packed DPO pairs sum in another order and drifted 1.2e-5 relative by step 2)
    head = CASES[case][4]
    *_, losses_p = rt.train_and_compare(padded, kind, head=head)
    *_, losses_u = rt.train_and_compare(unpadded, kind, head=head)
    assert len(losses_p) == len(losses_u) == 3
    assert losses_u == pytest.approx(losses_p, rel=1e-4)


def test_collate_unpadded_groups_equal_lengths_without_masks():
    from tkc.runtime.data.collate import collate_unpadded

    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
            {"input_ids": [1, 2, 3], "labels": [-100, -100, 3], "attention_mask": [1, 1, 1]},
            {"input_ids": [9, 8], "labels": [-100, 8], "attention_mask": [1, 1]},
            {"input_ids": [4, 4, 4], "labels": [4, 4, 4], "attention_mask": [1, 1, 1]}]
    pieces = collate_unpadded(rows, pad_id=0)
    assert [p["input_ids"].tolist() for p in pieces] == [[[5, 6, 7], [1, 2, 3]], [[9, 8]], [[4, 4, 4]]]
    assert [p["labels"].tolist() for p in pieces] == [[[-100, 6, 7], [-100, -100, 3]], [[-100, 8]], [[4, 4, 4]]]
    assert all("attention_mask" not in p for p in pieces)
    packed = collate_unpadded([{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "position_ids": [0, 1, 0]}], 0)
    assert packed[0]["position_ids"].tolist() == [[0, 1, 0]]


def test_logits_to_keep_matches_full_logits(tiny_pretrained, monkeypatch):
    """The LM head on label positions only gives the loss (and gradients) of full logits, padded or not."""
    from transformers import AutoModelForCausalLM

    from tkc.runtime.data.collate import collate, collate_unpadded
    from tkc.runtime.stages import common

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_pretrained, dtype=torch.float32)
    assert common.keeps_logits(model)
    g = torch.Generator().manual_seed(1)
    rows = []
    for n, start in ((12, 4), (7, 2), (15, 9)):
        ids = torch.randint(1, 600, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * start + ids[start:], "attention_mask": [1] * n})

    def full_logits_loss(batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        logps = torch.log_softmax(logits, -1).gather(2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return -(logps * (labels != -100)).sum()

    def grads_of(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    expected = full_logits_loss(collate(rows, 0))
    g_expected = grads_of(expected)
    for batch in ([collate(rows, 0)], collate_unpadded(rows, 0)):
        got = common.lm_loss_sum(model, batch)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        scale = max(g.abs().max().item() for g in g_expected)
        for a, b in zip(grads_of(got), g_expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
    # the fallback for a forward without logits_to_keep slices full logits the same way
    monkeypatch.setattr(common, "_forward_keeps_logits", lambda cls: False)
    assert not common.keeps_logits(model)
    assert common.lm_loss_sum(model, collate_unpadded(rows, 0)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_shared_prompt_matches_separate_forwards(tiny_pretrained):
    """DPO pairs run their common prompt once: same log-probs and gradients as two full forwards."""
    from transformers import AutoModelForCausalLM

    from tkc.runtime.data.collate import collate_unpadded
    from tkc.runtime.stages import common

    model = AutoModelForCausalLM.from_pretrained(tiny_pretrained, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    rows = []
    for prompt, good, bad in ((20, 9, 14), (11, 6, 6), (30, 12, 3)):
        p = torch.randint(1, 600, (prompt,), generator=g).tolist()
        c, r = torch.randint(1, 600, (good,), generator=g).tolist(), torch.randint(1, 600, (bad,), generator=g).tolist()
        rows.append({"chosen_input_ids": p + c, "chosen_labels": [-100] * prompt + c,
                     "rejected_input_ids": p + r, "rejected_labels": [-100] * prompt + r})
    pieces = collate_unpadded(rows, 0)
    assert [common.shared_prompt(model, b)[1] for b in pieces] == [19, 10, 29]  # up to the token before the labels

    def run(share: bool):
        model.zero_grad(set_to_none=True)
        out = common.pair_logps(model, pieces, 0, share_prompt=share)
        (out[0].sum() - 0.5 * out[1].sum()).backward()
        return [t.detach() for t in out], [p.grad.clone() for p in model.parameters()]

    (vals_s, grads_s), (vals, grads) = run(True), run(False)
    for a, b in zip(vals_s, vals, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    scale = max(x.abs().max().item() for x in grads)
    for a, b in zip(grads_s, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
