"""Packing: bins, position_ids, padding figures, and per-example losses equal to unpacked on a tiny Qwen2."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tkc.runtime.data import build_stage_data, collate, padding_fraction
from tkc.runtime.data.packing import pack_rows, plan_bins

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)
needs_shared = pytest.mark.skipif(
    not H.SHARED.is_dir(), reason=f"shared demo datasets not found at {H.SHARED}"
)


def test_plan_bins_and_padding_fraction():
    bins = plan_bins([5, 3, 4, 2, 6, 1], 8)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum([5, 3, 4, 2, 6, 1][i] for i in b) <= 8 for b in bins) and len(bins) == 3
    assert padding_fraction([4, 2, 4, 4], 2) == pytest.approx(2 / 16)
    assert padding_fraction([], 4) == 0.0


def test_pack_rows_restart_positions_and_mask_first_label():
    rows = [{"input_ids": np.arange(1, n + 1, dtype=np.int32), "labels": np.arange(1, n + 1, dtype=np.int32),
             "attention_mask": np.ones(n, np.int32)} for n in (3, 4, 2)]  # fmt: skip
    packed = pack_rows(rows, 6)
    assert len(packed) == 2
    assert packed[0]["position_ids"].tolist() == [0, 1, 2, 3, 0, 1]
    assert packed[0]["labels"].tolist() == [-100, 2, 3, 4, -100, 2]
    batch = collate(packed, pad_id=0)
    assert "attention_mask" not in batch and batch["position_ids"][1].tolist() == [0, 1, 2, 0, 0, 0]
    assert batch["labels"][1].tolist() == [-100, 2, 3, -100, -100, -100]


def _segments(positions: list[int]) -> list[tuple[int, int]]:
    starts = [k for k, p in enumerate(positions) if p == 0] + [len(positions)]
    return list(zip(starts[:-1], starts[1:], strict=True))


def _loss_sum(logits, labels):
    import torch.nn.functional as F

    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum").item()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_losses_equal_unpacked(tmp_path, attn):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = H.tokenizer()
    lines = [json.dumps({"instruction": f"What is {a}+{b}?" + " Think about it." * (a % 4), "input": "",
                         "output": f"{a}+{b}={a + b}" + " That is the answer." * (b % 3)})
             for a in range(4) for b in range(5)]  # fmt: skip
    (tmp_path / "arith.jsonl").write_text("\n".join(lines) + "\n")
    e = H.entry("arith", "arith.jsonl", "alpaca", "sft", tmp_path)
    stage = H.stage("sft", ["arith"], micro_batch_size=4)
    tt = H.template_text("qwen2_5")
    plain = build_stage_data(
        H.resolved([e], cutoff_len=256), stage, tok, tmp_path, tmp_path, template_text=tt
    )
    packed = build_stage_data(H.resolved([e], cutoff_len=256, packing=True), stage, tok, tmp_path, tmp_path,
                              template_text=tt)  # fmt: skip
    assert len(packed.train) < len(plain.train)
    fracs = packed.stats["padding_fraction"]
    assert fracs["packed"] < fracs["unpacked"] and plain.stats["padding_fraction"]["packed"] is None

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=len(tok), max_position_embeddings=512)  # fmt: skip
    config._attn_implementation = attn
    model = Qwen2ForCausalLM(config).eval()
    expected = {}
    with torch.no_grad():
        for row in plain.train:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            expected[tuple(row["input_ids"])] = _loss_sum(model(input_ids=ids).logits[0], labels)
        rows = list(packed.train)
        for start in range(0, len(rows), 2):
            batch = collate(rows[start : start + 2], pad_id=tok.pad_token_id)
            # use_cache=False: transformers 5.23 only derives the packed mask when no KV cache is built
            logits = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits
            for b, row in enumerate(rows[start : start + 2]):
                for s, t in _segments(row["position_ids"]):
                    got = _loss_sum(logits[b, s:t], batch["labels"][b, s:t])
                    assert got == pytest.approx(
                        expected.pop(tuple(row["input_ids"][s:t])), rel=1e-5, abs=1e-5
                    )
    assert not expected  # every example was found in exactly one bin


def test_packed_mask_needs_use_cache_false():
    """Pins the transformers 5.23 behaviour the training loop must respect (see tkc.runtime.data.packing)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=64)  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 12))
    positions = torch.tensor([list(range(5)) + list(range(7))])
    with torch.no_grad():
        alone = model(input_ids=ids[:, 5:]).logits
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[:, 5:]
        cached = model(input_ids=ids, position_ids=positions).logits[:, 5:]
    assert torch.allclose(alone, packed, atol=1e-5)
    assert not torch.allclose(alone, cached, atol=1e-3)  # with a cache the second example sees the first
