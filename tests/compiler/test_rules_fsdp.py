"""FSDP2 at compile: the decoder layer class FSDP shards comes from the family's data (model.decoder_layer, with
its provenance; a family that names none says so); plans FSDP2 cannot train are errors at the recipe line, all at
once: FSDP001 (QLoRA), FSDP002 (fp16, no loss scaling); the same stages in bf16 and plain LoRA compile."""

from __future__ import annotations

import json

from tkc.catalog.registry import families
from tkc.compiler.passes.resolve_model_family import _decoder_layer

RECIPE = """\
extends: [base/tiny_cpu.yaml]
name: fsdp
hardware: a100_80g_x8
launch: {kind: fsdp}
stages:
  - kind: sft
    datasets: [arith_sft]
    finetuning:
      method: lora
      quantization: {bits: 4}
  - kind: sft
    name: full
    datasets: [arith_sft]
    finetuning: {method: full}
    train: {precision: fp16}
"""


def _lines(err: str, code: str) -> list[str]:
    return [line for line in err.splitlines() if f" {code} " in line]


def test_fsdp_rules_are_reported_at_once(demo_copy, tkc):
    recipe = demo_copy / "fsdp.yaml"
    recipe.write_text(RECIPE)
    code, out, err = tkc("compile", recipe, "-o", demo_copy / "out")
    assert code == 2, (out, err)
    assert "Traceback" not in err and not (demo_copy / "out").exists()
    qlora = _lines(err, "FSDP001")
    assert len(qlora) == 1 and f"{recipe.name}:10:" in qlora[0] and "stage 'sft'" in qlora[0], err
    fp16 = _lines(err, "FSDP002")
    assert len(fp16) == 1 and f"{recipe.name}:15:" in fp16[0] and "stage 'full'" in fp16[0], err


def test_fsdp_bf16_lora_compiles_with_the_family_decoder_layer(demo_copy, tkc):
    recipe = demo_copy / "fsdp.yaml"
    recipe.write_text(RECIPE.replace("      quantization: {bits: 4}\n", "").replace("fp16", "bf16"))
    code, out, err = tkc("compile", recipe, "-o", demo_copy / "out")
    assert code == 0, err
    resolved = json.loads((demo_copy / "out" / "resolved.json").read_text())
    assert resolved["model"]["decoder_layer"] == "Qwen2DecoderLayer"
    assert (demo_copy / "out" / "launch" / "accelerate_fsdp.yaml").is_file()
    code, out, _ = tkc("explain", recipe, "model.decoder_layer")
    assert code == 0 and '"Qwen2DecoderLayer"' in out and "[family:qwen2]" in out, out


def test_every_transformers_family_names_its_decoder_layer():
    fams = families()
    for fid, fam in fams.items():
        value, source = _decoder_layer(fid, fams)
        # baichuan: two layer classes across its remote-code checkpoints; llava: its text decoder is any model
        # (text_config.model_type). Both are found at run
        if fid in ("baichuan", "llava"):
            assert value is None and "the runtime finds the layer list" in source
        else:
            assert value == fam.decoder_layer and value and source == f"family:{fid}", fid
    assert _decoder_layer("llama", fams) == ("LlamaDecoderLayer", "family:llama")
