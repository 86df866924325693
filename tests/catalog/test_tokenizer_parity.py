"""tkc's render equals a real tokenizer's `apply_chat_template(tokenize=False)` (tokenizer built locally, no hub)."""

import pytest
from chat_conversations import COMMON, THINKING, TOOL_ROUND_TRIP

from tkc.catalog.chat import TemplateRefused, list_templates, load_template, render

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def _tokenizer(template_text: str, meta: dict):
    """A word-level tokenizer whose special tokens are the template's bos/eos."""
    vocab = {"[UNK]": 0}
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]")
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(model),
        bos_token=meta["bos_token"] or None,
        eos_token=meta["eos_token"] or None,
        unk_token="[UNK]",
    )
    tok.chat_template = template_text
    return tok


CASES = {**COMMON, "tool_round_trip": TOOL_ROUND_TRIP, **THINKING}
PAIRS = [
    (t, n)
    for t in list_templates()
    for n in ("multi_turn", "with_system", "tools_offered", "tool_round_trip")
]
PAIRS += [("qwen3", n) for n in THINKING]


@pytest.mark.parametrize(("template_id", "name"), PAIRS, ids=[f"{t}/{n}" for t, n in PAIRS])
def test_matches_apply_chat_template(template_id, name):
    text, meta = load_template(template_id)
    case = CASES[name]
    kwargs = {**meta["render_kwargs"], **case["extra"]}
    tok = _tokenizer(text, meta)
    call = {"tools": case["tools"], "add_generation_prompt": case["add_generation_prompt"], **kwargs}
    try:
        expected = tok.apply_chat_template(case["messages"], tokenize=False, **call)
    except Exception as exc:  # the vendor template refuses (or crashes on) this conversation
        with pytest.raises(TemplateRefused if "TemplateError" in type(exc).__name__ else Exception):
            render(text, case["messages"], bos_token=meta["bos_token"], eos_token=meta["eos_token"], **call)
        return
    got = render(text, case["messages"], bos_token=meta["bos_token"], eos_token=meta["eos_token"], **call)
    assert got == expected
