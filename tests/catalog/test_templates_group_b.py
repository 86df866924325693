"""Group B templates (Phi, Granite, Nemotron, Tulu): the behaviour their vendor texts need from tkc's renderer."""

from chat_conversations import FROZEN_NOW, assistant, user

from tkc.catalog.chat import assistant_spans, load_template, render


def test_phi4_mini_spans_keep_the_end_marker_glued_to_the_next_header():
    """Phi-4-mini writes `<|end|><|user|>` with nothing between: a middle turn's span still ends at `<|end|>`."""
    text, meta = load_template("phi4_mini")
    msgs = [user("Hi"), assistant("Hello"), user("Q"), assistant("A")]
    full, spans = assistant_spans(text, msgs, eos_token=meta["eos_token"])
    assert [full[s:e] for s, e, _ in spans] == ["Hello<|end|>", "A<|end|><|endoftext|>"]
    assert full[: spans[0][0]].endswith("<|assistant|>")


def test_dated_templates_render_on_the_frozen_day():
    """Granite 3.3 writes today's date into its default system prompt; tests and case files pin the day."""
    text, _ = load_template("granite3_3")
    out = render(text, [user("Hi")], add_generation_prompt=True)
    assert FROZEN_NOW == (2026, 1, 15)
    assert out.startswith(
        "<|start_of_role|>system<|end_of_role|>Knowledge Cutoff Date: April 2024. "
        "Today's Date: January 15, 2026. You are Granite, developed by IBM."
    )


def test_tulu3_differs_from_olmo2_only_by_the_leading_bos():
    msgs = [user("Hi"), assistant("Hello")]
    tulu = render(load_template("tulu3")[0], msgs, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    olmo = render(load_template("olmo2")[0], msgs, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    assert tulu == "<|user|>\nHi\n<|assistant|>\nHello<|end_of_text|>"
    assert olmo == "<|begin_of_text|>" + tulu


def test_default_system_probe_reads_no_clock():
    """`template: auto` probes render on fixed days: a default prompt holding today's date is no fixed text (None),
    a date elsewhere in the render (SmolLM3's metadata block) does not hide the fixed prompt."""
    from tkc.catalog.registry import template_text, templates
    from tkc.compiler.passes.resolve_chat_template import probe_default_system

    def probe(tid: str):
        meta = templates()[tid]
        return probe_default_system(template_text(tid), meta.bos_token, meta.eos_token, **meta.render_kwargs)

    assert probe("granite3_3") is None and probe("apertus") is None
    assert probe("smollm3") == templates()["smollm3"].default_system
    assert probe("smollm3").startswith("You are a helpful AI assistant named SmolLM")
