"""The training loop's pure parts: step plan, data order, lr schedule, micro-batching, exact loss scaling."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch

from tkc.bundle.plan import ResolvedTrain
from tkc.runtime import loop

# the loop reads the typed plan's train block (tkc.bundle.plan.ResolvedTrain)
TRAIN = ResolvedTrain(
    learning_rate=1.0, lr_scheduler="cosine", warmup_ratio=0.1, epochs=2.0, max_steps=None, global_batch_size=8,
    micro_batch_size=4, gradient_accumulation_steps=2, world_size=1, padding="longest", seed=7, precision="fp32",
    gradient_checkpointing=False, save_steps=0, save_total_limit=1, logging_steps=1, eval_steps=None,
    weight_decay=0.0, max_grad_norm=1.0, neftune_alpha=None, optimizer="adamw_torch", adam_beta1=0.9,
    adam_beta2=0.999, adam_epsilon=1e-8, deterministic=True,
)


def test_plan_steps_drops_incomplete_batch_and_honours_max_steps():
    assert loop.plan_steps(20, TRAIN) == (2, 4)
    assert loop.plan_steps(20, attrs.evolve(TRAIN, max_steps=3)) == (2, 3)
    assert loop.plan_steps(20, attrs.evolve(TRAIN, epochs=1.5)) == (2, 3)
    with pytest.raises(RuntimeError, match="fewer than one global batch"):
        loop.plan_steps(5, TRAIN)


def test_data_order_is_a_pure_function_of_seed_and_step():
    per_epoch = 3
    epoch0 = [i for s in range(3) for i in loop.batch_indices(24, TRAIN, s, per_epoch)]
    assert sorted(epoch0) == list(range(24))  # each row once per epoch
    epoch1 = [i for s in range(3, 6) for i in loop.batch_indices(24, TRAIN, s, per_epoch)]
    assert sorted(epoch1) == list(range(24)) and epoch1 != epoch0  # reshuffled per epoch
    assert loop.batch_indices(24, TRAIN, 4, per_epoch) == loop.batch_indices(24, TRAIN, 4, per_epoch)
    assert loop.batch_indices(24, attrs.evolve(TRAIN, seed=8), 0, per_epoch) != loop.batch_indices(24, TRAIN, 0, per_epoch)


def test_lr_schedule_warmup_then_decay():
    total = 20
    f = [loop.lr_factor(TRAIN, s, total) for s in range(total)]
    assert loop.warmup_steps(TRAIN, total) == 2 and f[:2] == [0.5, 1.0]
    assert f[2] == 1.0 and all(a >= b for a, b in zip(f[2:], f[3:], strict=False)) and f[-1] < 0.02
    lin = attrs.evolve(TRAIN, lr_scheduler="linear", warmup_ratio=0.0)
    assert loop.lr_factor(lin, 10, 20) == 0.5
    assert loop.lr_factor(attrs.evolve(TRAIN, lr_scheduler="constant", warmup_ratio=0.0), 19, 20) == 1.0


class _Ctx:
    def __init__(self, rank=0, world=1):
        from tkc.runtime.dist import DistInfo

        self.dist = DistInfo(rank=rank, world_size=world)


def _cpu_strategy():
    """The one-process strategy without a bundle: the CPU (what Strategy.__init__ reads from the plan)."""
    from tkc.runtime.strategy import Strategy

    strat = Strategy.__new__(Strategy)
    strat.device = torch.device("cpu")
    return strat


def test_micro_batches_split_ranks_then_micro():
    rows = [{"i": i} for i in range(8)]
    assert [[r["i"] for r in mb] for mb in loop.micro_batches(_Ctx(), rows, TRAIN)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    two = attrs.evolve(TRAIN, micro_batch_size=2)
    assert [[r["i"] for r in mb] for mb in loop.micro_batches(_Ctx(1, 2), rows, two)] == [[4, 5], [6, 7]]
    with pytest.raises(RuntimeError, match="not a multiple"):
        loop.micro_batches(_Ctx(), rows[:6], TRAIN)


def _rows(n=8):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 5 + i % 4  # ragged: padding and label counts differ per row
        ids = torch.randint(0, 50, (length,), generator=g).tolist()
        labels = [-100] * 2 + ids[2:]
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * length})
    return rows


@pytest.mark.parametrize("micro", [1, 2, 4])
def test_gradient_accumulation_is_exact(micro):
    """Mean over the global batch's label tokens, whatever the micro-batch size (up to float rounding)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tkc.runtime.stages.common import label_units, lm_loss_sum, pad, token_count

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = Qwen2ForCausalLM(cfg)
    task = loop.Task(lm_loss_sum, label_units, token_count, lambda rows: pad(rows, 0))
    rows = _rows()

    def grads(m, micro_size):
        m = copy.deepcopy(m)
        params = list(m.parameters())
        train = attrs.evolve(TRAIN, micro_batch_size=micro_size, max_grad_norm=0.0)
        loss = loop._one_step(_Ctx(), _cpu_strategy(), m, task, rows, train)
        return loss, [p.grad.clone() for p in params]

    ref_loss, ref = grads(model, 8)
    loss, got = grads(model, micro)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
