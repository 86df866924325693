"""DEAD001: a value the recipe sets that no stage uses is reported by `tkc compile` with both locations (exit 0;
--strict refuses it); EXPORT001: merge_adapter: false on a stage that trains no adapter."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "demo.yaml"


def test_top_level_rate_every_stage_overrides_is_reported(tkc):
    code, out, err = tkc("compile", DEMO, "--check")
    assert code == 0 and "DEAD001" not in err
    plain = out.strip()
    code, out, err = tkc("compile", DEMO, "--check", "--set", "train.learning_rate=0.000777")
    assert code == 0 and out.strip() == plain          # the same bundle: the value is dead
    assert "--set:1:1: DEAD001 train.learning_rate: note: set here but never used, every training stage sets its " \
           "own learning_rate: 'pretrain' at recipes/demo.yaml:27, 'sft' at recipes/demo.yaml:32" in err
    code, out, err = tkc("compile", DEMO, "--check", "--strict", "--set", "train.learning_rate=0.000777")
    assert code == 2 and "DEAD001" in err and "--strict refuses" in err and not out.strip()


def test_key_one_stage_uses_is_not_dead(tkc):
    code, _, err = tkc("compile", DEMO, "--check", "--set", "train.lr_scheduler=linear", "--set",
                       "train.epochs=3")   # epochs: both stages set it; lr_scheduler: neither does
    assert code == 0
    assert "train.epochs: note" in err and "train.lr_scheduler" not in err
    assert err.count("DEAD001") == 1


def test_finetuning_block_and_non_training_stage(tkc, demo_copy):
    recipe = demo_copy / "demo.yaml"
    text = recipe.read_text().replace("    init_from: pretrain\n    datasets: [arith_sft]\n",
                                      "    init_from: pretrain\n    datasets: [arith_sft]\n"
                                      "    finetuning: {method: full}\n")
    text = text.replace("    max_new_tokens: 6\n", "    max_new_tokens: 6\n    train: {learning_rate: 0.5}\n")
    recipe.write_text(text)
    code, _, err = tkc("compile", recipe, "--check")
    assert code == 0
    lines = [x for x in err.splitlines() if "DEAD001" in x]
    # the top-level finetuning block (method, lora rank/alpha/targets) is replaced by both stages' own blocks
    assert [x.split(": DEAD001 ")[1].split(":")[0] for x in lines] == [
        "stages[3].train.learning_rate", "finetuning.method", "finetuning.lora.rank", "finetuning.lora.alpha",
        "finetuning.lora.targets"]
    assert "demo.yaml:42:3: DEAD001 finetuning.method: note: set here but never used, every training stage sets " \
           "its own block: 'pretrain' at " in err
    assert "demo.yaml:26, 'sft' at " in err and "demo.yaml:32 (remove it" in err
    assert "stage 'eval' (eval) does not train" in err


def test_export_unmerged_needs_a_lora_stage(tkc, demo_copy):
    recipe = demo_copy / "demo.yaml"
    base = recipe.read_text()
    recipe.write_text(base.replace("    max_new_tokens: 6\n", "    max_new_tokens: 6\n"
                                   "  - {kind: export, name: out, init_from: pretrain, merge_adapter: false}\n"
                                   "  - {kind: export, name: out2, init_from: sft, merge_adapter: false}\n"))
    code, _, err = tkc("compile", recipe, "--check")
    assert code == 2
    assert "EXPORT001 stages[4].merge_adapter: export stage 'out': merge_adapter: false saves the LoRA adapter " \
           "of 'pretrain', which trains no adapter (method: full)" in err
    assert err.count("EXPORT001") == 1     # sft is a LoRA stage: out2 is fine


def test_explain_shows_the_dead_setting_note(tkc):
    code, out, err = tkc("explain", DEMO, "learning_rate", "--set", "train.learning_rate=0.000777")
    assert code == 0 and "stages.0.train.learning_rate" in out
    assert "DEAD001 train.learning_rate: note: set here but never used" in err
    code, out, err = tkc("explain", DEMO, "seed", "--set", "train.learning_rate=0.000777")
    assert code == 0 and "DEAD001" not in err   # a note about another key stays out of a filtered listing
