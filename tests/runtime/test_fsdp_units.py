"""FSDP2's pieces that need no process group: which modules become FSDP units (the plan's decoder layer class,
else the layer list, said so), one forward per micro-batch (unpadded pieces padded into one, the same loss), the
bundle's fsdp settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tkc.runtime.strategy.fsdp import one_piece, read_settings, sharded_units

TINY = Path(__file__).resolve().parents[2] / "recipes" / "assets" / "tiny-qwen2"


@pytest.fixture(scope="module")
def model():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY), attn_implementation="sdpa").eval()


def test_units_are_the_family_decoder_layers_else_the_layer_list(model):
    units, note = sharded_units(model, "Qwen2DecoderLayer")
    assert units == list(model.model.layers) and note is None
    units, note = sharded_units(model, None)
    assert units == list(model.model.layers)
    assert "names no decoder_layer" in note and "4 modules (Qwen2DecoderLayer)" in note
    units, note = sharded_units(model, "LlamaDecoderLayer")  # a family that does not match this model's code
    assert units == list(model.model.layers) and "has no LlamaDecoderLayer" in note


def test_units_of_a_lora_model_are_its_decoder_layers(model):
    import copy

    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    units, note = sharded_units(peft, "Qwen2DecoderLayer")
    assert len(units) == 4 and note is None
    trainable = {p.requires_grad for u in units for p in u.parameters()}
    assert trainable == {True, False}  # frozen base and trainable adapters in one unit: FSDP2 allows it


def _row(n: int, start: int) -> dict[str, torch.Tensor]:
    ids = torch.arange(start, start + n)[None]
    labels = ids.clone()
    labels[0, : n // 2] = -100
    return {"input_ids": ids, "labels": labels}


def test_unpadded_pieces_become_one_forward_with_the_same_loss(model):
    from tkc.runtime.stages.common import lm_loss_sum

    pieces = [_row(7, 3), _row(12, 40), _row(5, 90)]  # collate_unpadded: no attention_mask, one piece per length
    merged = one_piece(pieces, pad_id=627)
    assert len(merged) == 1 and merged[0]["input_ids"].shape == (3, 12)
    assert merged[0]["attention_mask"].sum(1).tolist() == [7, 12, 5]
    assert merged[0]["labels"][0, 7:].eq(-100).all() and merged[0]["input_ids"][2, 5:].eq(627).all()
    with torch.no_grad():
        torch.testing.assert_close(lm_loss_sum(model, merged), lm_loss_sum(model, pieces), rtol=1e-5, atol=1e-5)


def test_pair_pieces_get_a_mask_per_side_and_packed_batches_stay():
    pair = [{"chosen_input_ids": torch.ones(1, 4, dtype=torch.long), "chosen_labels": torch.ones(1, 4, dtype=torch.long),
             "rejected_input_ids": torch.ones(1, 6, dtype=torch.long),
             "rejected_labels": torch.ones(1, 6, dtype=torch.long)}]
    merged = one_piece(pair, pad_id=0)[0]
    assert merged["chosen_attention_mask"].tolist() == [[1, 1, 1, 1]]  # padded path: one forward for both sides
    assert merged["rejected_attention_mask"].shape == (1, 6)
    packed = [{"input_ids": torch.ones(1, 9, dtype=torch.long), "cu_seq_lens": torch.tensor([0, 4, 9])}]
    assert one_piece(packed, pad_id=0) is packed
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    assert one_piece(batch, pad_id=0) is batch


def _stage(index: int):
    from types import SimpleNamespace

    return SimpleNamespace(index=index)


def test_settings_come_from_the_bundle(tmp_path):
    launch = tmp_path / "launch"
    launch.mkdir()
    (launch / "accelerate_fsdp.yaml").write_text(yaml.safe_dump({"fsdp_config": {"fsdp_offload_params": False}}))
    (launch / "accelerate_fsdp-01-dpo.yaml").write_text(yaml.safe_dump({"fsdp_config": {"fsdp_offload_params": True}}))
    assert read_settings(tmp_path, _stage(0))["fsdp_offload_params"] is False
    assert read_settings(tmp_path, _stage(1))["fsdp_offload_params"] is True
    (launch / "accelerate_fsdp.yaml").unlink()
    with pytest.raises(RuntimeError, match="no launch/accelerate_fsdp.yaml"):
        read_settings(tmp_path, _stage(0))
