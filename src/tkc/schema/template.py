"""The recipe's `template:` key: a template id, or an object with the id and the instant its renders read."""

# No `from __future__ import annotations` here: pydantic would eval each annotation string at import.

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from tkc.schema.recipe import Spec

DEFAULT_NOW = "2025-01-01T00:00:00"   # the instant a clock-reading template renders at when the recipe sets none


_NOT_ISO = "not an ISO 8601 date or date-time (e.g. 2025-01-01 or 2025-01-01T09:30:00)"


def _as_text(value: Any) -> Any:
    # a date object (from Python callers) means the same instant as its text; a number is no date
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        raise ValueError(_NOT_ISO)
    return value


def check_instant(value: str) -> str:
    """An ISO 8601 date or date-time, written back in one form: 2025-01-01 -> 2025-01-01T00:00:00."""
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(_NOT_ISO) from None
    return instant.isoformat()


Instant = Annotated[str, BeforeValidator(_as_text), AfterValidator(check_instant)]


class TemplateSpec(Spec):
    id: str = Field("auto", description="Chat template id, or auto (the tokenizer's own, else family's).")
    now: Instant | None = Field(None, description=(
        "The instant a template that reads the clock (strftime_now: GPT-OSS's 'Current date', Llama 3.x, "
        "Granite 3.3, ...) renders at, for training text and for prompts alike, as an ISO date or date-time; "
        f"default {DEFAULT_NOW} (a compile note says so). Fixed so that one bundle trains on the same tokens "
        "every day."))


def template_id(template: "str | TemplateSpec") -> str:
    """The template id of a recipe's `template:` value, either form."""
    return template if isinstance(template, str) else template.id


def template_now(template: "str | TemplateSpec") -> str | None:
    """The instant a recipe's `template:` value pins, if it pins one."""
    return None if isinstance(template, str) else template.now
