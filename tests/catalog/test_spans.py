"""assistant_spans: the trained characters are exactly each assistant turn's content plus its end marker;
trained_spans: every trained turn ends with a token the model stops at, also where the template writes none."""

import jinja2
import pytest
from chat_conversations import COMMON, THINKING, TOOL_ROUND_TRIP, assistant, system, user

from tkc.bundle.chat import ChatTemplate, trained_spans
from tkc.catalog.chat import (
    SpanError,
    TemplateRefused,
    assistant_spans,
    list_templates,
    load_template,
    render,
)

# These templates end an assistant turn with the next role header, not with an end-of-turn token
# (Apertus writes <|assistant_end|> when the next user turn starts: a last turn has none); trained_spans closes
# them. GPT-OSS ends a history turn with <|end|> but the last with <|return|>: a middle turn's span stops
# before its <|end|>, which trained_spans takes (a stop token).
NO_END_MARKER = {"chatglm3", "glm4", "glm4_0414", "glm4_5", "glm4_6", "glm4_hf", "apertus", "gpt_oss"}
# Turns a template writes differently once they are last (Nemotron Nano v2 moves a final turn's tool calls to a
# second assistant header): their spans cannot be located, so training refuses the record instead of guessing
# (Falcon3 writes no assistant header for a turn that only calls tools)
UNLOCATABLE = {("nemotron_nano_v2", "tool_round_trip"), ("falcon3", "tool_round_trip")}


def _conversations(meta: dict) -> dict:
    convs = {n: COMMON[n] for n in ("multi_turn", "system_multi_turn", "newlines_unicode")}
    if meta["supports_tools"]:
        convs["tool_round_trip"] = TOOL_ROUND_TRIP
    if "enable_thinking" in meta["render_kwargs"]:
        convs.update(THINKING)
    return convs


def _spans(template_id: str, case: dict) -> tuple[str, list, dict]:
    text, meta = load_template(template_id)
    kw = {
        "bos_token": meta["bos_token"],
        "eos_token": meta["eos_token"],
        **meta["render_kwargs"],
        **case["extra"],
    }
    full, spans = assistant_spans(text, case["messages"], tools=case["tools"], **kw)
    assert full == render(text, case["messages"], tools=case["tools"], **kw)
    return full, spans, meta


CASES = [(t, n) for t in list_templates() for n in _conversations(load_template(t)[1])]


@pytest.mark.parametrize(("template_id", "name"), CASES, ids=[f"{t}/{n}" for t, n in CASES])
def test_spans_cover_content_and_end_marker(template_id, name):
    case = _conversations(load_template(template_id)[1])[name]
    if (template_id, name) in UNLOCATABLE:
        with pytest.raises(SpanError, match="cannot locate"):
            _spans(template_id, case)
        return
    try:
        full, spans, meta = _spans(template_id, case)
    except (TemplateRefused, jinja2.UndefinedError):  # test_cases.py checks the vendor fails alike (Apertus: nested tools)
        pytest.skip("the vendor template refuses or cannot render this conversation")
    turns = [i for i, m in enumerate(case["messages"]) if m["role"] == "assistant"]
    assert [i for _, _, i in spans] == turns
    ends = [0] + [e for _, e, _ in spans]
    for (start, end, i), previous_end in zip(spans, ends, strict=False):
        assert previous_end <= start < end <= len(full)
        piece = full[start:end]
        content = case["messages"][i]["content"].strip()
        assert content in piece
        others = [m["content"] for j, m in enumerate(case["messages"]) if j != i and m["content"]]
        assert not any(o.strip() and o.strip() in piece and o.strip() not in content for o in others)
        if template_id not in NO_END_MARKER:
            markers = [*meta["stop_tokens"], meta["eos_token"]]
            assert any(piece.endswith(m) for m in markers), piece
    _check_trained(template_id, case, full, spans, meta)


def _trained(template_id: str, case: dict) -> tuple[str, list]:
    text, meta = load_template(template_id)
    kw = {"bos_token": meta["bos_token"], "eos_token": meta["eos_token"], **meta["render_kwargs"], **case["extra"]}
    return trained_spans(text, case["messages"], tools=case["tools"], stop_tokens=tuple(meta["stop_tokens"]), **kw)


def _check_trained(template_id: str, case: dict, full: str, spans: list, meta: dict) -> None:
    """Trained text = the rendering (+ eos); each turn starts where its span does and ends with a stop token."""
    text, trained = _trained(template_id, case)
    if template_id not in NO_END_MARKER:
        assert (text, trained) == (full, spans)
        return
    assert text in (full, full + meta["eos_token"])
    assert [(s, i) for s, _, i in trained] == [(s, i) for s, _, i in spans]
    markers = tuple(t for t in (*meta["stop_tokens"], meta["eos_token"]) if t)
    for (start, end, _), (_, raw_end, _) in zip(trained, spans, strict=True):
        assert raw_end <= end and text[start:end].endswith(markers), text[start:end]
        assert not text[raw_end:end].strip() or text[raw_end:end].strip() in markers  # nothing else added


def test_no_end_marker_lists_every_template_that_trained_spans_closes():
    changed = {t for t in list_templates() if _trained(t, COMMON["multi_turn"]) != _spans(t, COMMON["multi_turn"])[:2]}
    assert changed == NO_END_MARKER


@pytest.mark.parametrize("template_id", ["glm4", "chatglm3", "glm4_5"])
def test_glm_turns_train_on_the_next_user_header_and_a_final_eos(template_id):
    """LLaMA-Factory's efficient_eos: the next prompt's first token is trained after a middle turn, eos after the last."""
    text, meta = load_template(template_id)
    tpl = ChatTemplate(text, meta["bos_token"], meta["eos_token"], tuple(meta["stop_tokens"]))
    msgs = [user("Hi"), assistant("Hello"), user("Q"), assistant("A")]
    full, spans = tpl.spans(msgs)
    assert full == tpl.render(msgs) + meta["eos_token"]
    assert [full[s:e].rsplit("Hello", 1)[-1].rsplit("A", 1)[-1] for s, e, _ in spans] == ["<|user|>", meta["eos_token"]]
    # the prompt the model is asked to continue at inference is unchanged
    assert tpl.prompt(msgs[:3]) == tpl.render(msgs[:3], add_generation_prompt=True)


def test_end_markers_and_unknown_stop_tokens_leave_spans_alone():
    text, _ = load_template("qwen2_5")
    msgs = [user("Hi"), assistant("Hello"), user("Q"), assistant("A")]
    assert trained_spans(text, msgs, eos_token="<|im_end|>", stop_tokens=("<|im_end|>",)) == assistant_spans(text, msgs)
    # a ChatML tokenizer whose eos is <|endoftext|> (template: auto on a base model): turns end with <|im_end|>,
    # which is no stop token here, and no stop token follows a turn: nothing is appended
    assert trained_spans(text, msgs, eos_token="<|endoftext|>", stop_tokens=("<|endoftext|>",)) == assistant_spans(
        text, msgs, eos_token="<|endoftext|>"
    )
    # GLM-4 without stop tokens or eos: nothing to close the turn with
    glm, _ = load_template("glm4")
    assert trained_spans(glm, msgs) == assistant_spans(glm, msgs)


def test_chatml_spans_exact():
    text, _ = load_template("qwen2_5")
    msgs = [system("S"), user("Hi"), assistant("Hello"), user("Q"), assistant("A\n")]
    full, spans = assistant_spans(text, msgs)
    assert [full[s:e] for s, e, _ in spans] == ["Hello<|im_end|>", "A\n<|im_end|>"]
    assert full[: spans[0][0]].endswith("<|im_start|>assistant\n")
    assert full[spans[0][1] :].startswith(
        "\n<|im_start|>user\nQ"
    )  # the newline after the marker is not trained


def test_llama2_strips_content_and_keeps_the_space_before_eos():
    text, _ = load_template("llama2")
    full, spans = assistant_spans(
        text, [user("Hi"), assistant("  Yo  "), user("Q"), assistant("A")], bos_token="<s>", eos_token="</s>"
    )
    assert [full[s:e] for s, e, _ in spans] == [" Yo </s>", " A </s>"]


def test_qwen3_thinking_history_uses_the_final_text():
    """Qwen3 drops an earlier turn's reasoning once a later user turn exists: spans follow the final text."""
    text, _ = load_template("qwen3")
    msgs = THINKING["thinking_history"]["messages"]
    first_alone = render(text, msgs[:2])
    full, spans = assistant_spans(text, msgs)
    assert "2 plus 3 is 5." in first_alone and not full.startswith(first_alone)  # the fallback path is taken
    assert [full[s:e] for s, e, _ in spans] == [
        "5<|im_end|>",
        "<think>\n4 plus 4 is 8.\n</think>\n\n8<|im_end|>",
    ]
    assert [i for _, _, i in spans] == [1, 3]


def test_qwen3_thinking_off_history():
    text, _ = load_template("qwen3")
    msgs = THINKING["thinking_off_history"]["messages"]
    full, spans = assistant_spans(text, msgs, enable_thinking=False)
    assert [full[s:e] for s, e, _ in spans] == ["Hello!<|im_end|>", "Bye!<|im_end|>"]
    assert full[: spans[0][0]].endswith("<|im_start|>assistant\n")


def test_phi3_5_middle_turn_excludes_the_final_eos():
    text, meta = load_template("phi3_5")
    full, spans = assistant_spans(text, COMMON["multi_turn"]["messages"], eos_token=meta["eos_token"])
    assert [full[s:e] for s, e, _ in spans] == [
        "Hello! How can I help?<|end|>",
        "Blue.<|end|>\n<|endoftext|>",
    ]


def test_mistral_v3_moved_system_prompt_falls_back_to_the_content():
    text, _ = load_template("mistral_v3")
    msgs = COMMON["system_multi_turn"]["messages"]
    full, spans = assistant_spans(text, msgs, bos_token="<s>", eos_token="</s>")
    assert [full[s:e] for s, e, _ in spans] == ["Hello!</s>", "Bye!</s>"]


GENERATION_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_generation_markers_match_transformers():
    msgs = COMMON["multi_turn"]["messages"]
    full, spans = assistant_spans(GENERATION_CHATML, msgs)
    assert [full[s:e] for s, e, _ in spans] == ["Hello! How can I help?<|im_end|>", "Blue.<|im_end|>"]
    hf = pytest.importorskip("transformers.utils.chat_template_utils")
    rendered, indices = hf.render_jinja_template(
        [msgs], chat_template=GENERATION_CHATML, return_assistant_tokens_mask=True
    )
    assert rendered[0] == full
    assert [(s, e) for s, e, _ in spans] == [tuple(x) for x in indices[0]]


def test_a_turn_the_template_drops_is_an_error():
    # Renders only the last assistant turn, so earlier ones cannot be located (and must not be guessed)
    text = "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] + '|' }}{% endif %}{% endfor %}"
    with pytest.raises(SpanError, match="turn 1"):
        assistant_spans(text, [user("a"), assistant("b"), user("c"), assistant("d")])


def test_catalog_render_training_shows_the_closing_tokens(tkc, tmp_path):
    """`tkc catalog render --mode training --show-spans` shows what the data encoder trains on (ChatTemplate.spans)."""
    conv = tmp_path / "conv.json"
    conv.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, '
                    '{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}')  # fmt: skip
    code, out, err = tkc("catalog", "render", "glm4", conv, "--mode", "training", "--show-spans")
    assert code == 0, err
    assert out.endswith("<|assistant|>⟦\nA<|endoftext|>⟧")
    assert "<|assistant|>⟦\nHello<|user|>⟧\nQ" in out
