"""Fixed conversations every catalog template is rendered on (shared by make_cases.py and the tests)."""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from datetime import datetime

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
                "required": ["city"],
            },
        },
    }
]
# Mistral's template requires 9-character alphanumeric call ids
CALL = {
    "id": "call12345",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def _case(messages: list[dict], prompt: bool, tools: list | None = None, **extra) -> dict:
    return {"messages": messages, "tools": tools, "add_generation_prompt": prompt, "extra": extra}


COMMON = {
    "single_turn": _case([user("Hello, who are you?")], True),
    "with_system": _case([system("You are a concise assistant."), user("What is 2+2?")], True),
    "multi_turn": _case(
        [user("Hi!"), assistant("Hello! How can I help?"), user("Name a color."), assistant("Blue.")], False
    ),
    "multi_turn_prompt": _case([user("Hi!"), assistant("Hello!"), user("Name a color.")], True),
    "system_multi_turn": _case(
        [system("Be brief."), user("Hi!"), assistant("Hello!"), user("Bye."), assistant("Bye!")], False
    ),
    "newlines_unicode": _case(
        [
            user("Write two lines, please.\nThanks!"),
            assistant("  Line one: naïve café — 你好 🚀\n\nLine two:\n\tindented \"quoted\" 'text'  "),
        ],
        False,
    ),
    "empty_system": _case([system(""), user("Hi")], True),
    "non_alternating": _case([user("One."), user("Two.")], True),
    "assistant_first": _case([assistant("I speak first."), user("Hi")], True),
    "tools_offered": _case([user("What's the weather in Paris?")], True, TOOLS),
}

TOOL_ROUND_TRIP = _case(
    [
        user("What's the weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {
            "role": "tool",
            "content": '{"temperature": 21}',
            "tool_call_id": "call12345",
            "name": "get_weather",
        },
        assistant("It is 21 degrees in Paris."),
    ],
    False,
    TOOLS,
)

THINKING = {
    "thinking_history": _case(
        [
            user("What is 2+3?"),
            {"role": "assistant", "content": "5", "reasoning_content": "2 plus 3 is 5."},
            user("And 4+4?"),
            {"role": "assistant", "content": "8", "reasoning_content": "4 plus 4 is 8."},
        ],
        False,
    ),
    "thinking_off_prompt": _case([user("Hi")], True, enable_thinking=False),
    "thinking_off_history": _case(
        [user("Hi"), assistant("Hello!"), user("Bye"), assistant("Bye!")], False, enable_thinking=False
    ),
}


def cases_for(meta: dict) -> dict[str, dict]:
    """The conversations for one template: the common set, tool round trips and thinking where supported."""
    cases = dict(COMMON)
    if meta["supports_tools"]:
        cases["tool_round_trip"] = TOOL_ROUND_TRIP
    if "enable_thinking" in meta.get("render_kwargs", {}):
        cases.update(THINKING)
    return cases


# Templates that print today's date with strftime_now (Granite 3.x, SmolLM3, Apertus) render on this fixed day in
# the tests and the case files, for tkc and transformers alike (conftest.py and make_cases.py freeze the clock)
FROZEN_NOW = (2026, 1, 15)
_CLOCK_MODULES = ("tkc.bundle.chat.render", "transformers.utils.chat_template_utils")


@contextmanager
def frozen_clock():
    """datetime.now() is FROZEN_NOW in the modules whose strftime_now reads it (those importable here)."""

    class _Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(*FROZEN_NOW, tzinfo=tz)

    patched = []
    for name in _CLOCK_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # transformers not installed: only tkc's renderer runs
            continue
        patched.append((module, module.datetime))
        module.datetime = _Frozen
    try:
        yield
    finally:
        for module, original in patched:
            module.datetime = original
