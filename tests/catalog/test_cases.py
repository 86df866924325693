"""Every catalog template renders its case file (expected text from transformers' machinery) byte for byte."""

import json
from pathlib import Path

import pytest

from tkc.catalog.chat import TemplateRefused, list_templates, load_template, render

CASES_DIR = Path(__file__).parent / "cases"
FILES = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(CASES_DIR.glob("*.json"))}
ALL = [(t, name) for t, spec in FILES.items() for name in spec["cases"]]


def _render(template_id: str, case: dict) -> str:
    text, meta = load_template(template_id)
    extra = {**meta["render_kwargs"], **case["extra"]}
    return render(
        text,
        case["messages"],
        tools=case["tools"],
        add_generation_prompt=case["add_generation_prompt"],
        bos_token=meta["bos_token"],
        eos_token=meta["eos_token"],
        **extra,
    )


def test_every_template_has_a_case_file():
    assert sorted(FILES) == list_templates()


@pytest.mark.parametrize(("template_id", "name"), ALL, ids=[f"{t}/{n}" for t, n in ALL])
def test_case(template_id, name):
    case = FILES[template_id]["cases"][name]
    expected = case["expected"]
    if isinstance(expected, str):
        assert _render(template_id, case) == expected
        return
    kind, _, message = expected["error"].partition(": ")
    if kind == "TemplateError":  # the vendor's raise_exception
        with pytest.raises(TemplateRefused) as exc:
            _render(template_id, case)
        assert exc.value.reason == message
    else:  # the vendor template crashes on this input; tkc must fail the same way, not render something
        with pytest.raises(Exception) as exc:
            _render(template_id, case)
        assert type(exc.value).__name__ == kind


@pytest.mark.parametrize("template_id", sorted(FILES))
def test_case_file_is_current(template_id):
    """The fixtures equal what transformers renders today (rerun make_cases.py after editing a template)."""
    pytest.importorskip("transformers")
    from make_cases import build_case_file, dump

    assert json.loads(dump(build_case_file(template_id))) == FILES[template_id]


# GLM-4-0414 prints the `tools` list but drops assistant tool_calls and 'tool' messages (its calls are metadata turns,
# its results 'observation' turns): it says supports_tools false so OpenAI-style tool data is refused, not trained
# as turns without their calls
TOOLS_LISTED_CALLS_DROPPED = {"glm4_0414"}


@pytest.mark.parametrize("template_id", sorted(FILES))
def test_metadata_matches_behaviour(template_id):
    _, meta = load_template(template_id)
    cases = FILES[template_id]["cases"]
    with_system = cases["with_system"]["expected"]
    if isinstance(with_system, dict):
        assert not meta["supports_system"], "the template refuses a system message"
    elif meta["supports_system"]:
        assert "You are a concise assistant." in with_system
    crashes_on_tools = isinstance(cases["tools_offered"]["expected"], dict)  # Apertus wants flat, not OpenAI, tools
    if not meta["supports_tools"] and template_id not in TOOLS_LISTED_CALLS_DROPPED and not crashes_on_tools:
        # Vendors ignore `tools` they cannot render instead of refusing: the compiler must check supports_tools
        without = {**cases["tools_offered"], "tools": None}
        assert cases["tools_offered"]["expected"] == _render(template_id, without)
    if meta.get("default_system"):
        assert meta["default_system"] in cases["single_turn"]["expected"]
