"""Pass 3: the chat template: the tokenizer's own (`auto`), else the family's, else the one the recipe names."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tkc.catalog.registry import families, template_text, templates
from tkc.compiler.passes._util import source_of
from tkc.compiler.plan import FILES, Plan
from tkc.schema.diagnostics import Diagnostic, did_you_mean
from tkc.schema.template import DEFAULT_NOW, template_id, template_now

TEMPLATE_FILE = "template/chat_template.jinja"
CLOCK_CODE = "TMPL004"   # note: the template reads the clock; its renders read the default instant
_CHAT_FREE_KINDS = {"pt", "export"}


def _catalog_choice(plan: Plan) -> tuple[str | None, str]:
    """The catalog template for this model: its hub entry's, else its family's default."""
    family = plan.get("model.family")
    fam = families().get(family or "")
    if fam is None:
        return None, "default"
    hub = {k.lower(): v.template for k, v in fam.hub_models.items()}.get(plan.inputs.model.path.lower())
    if hub:
        return hub, f"family:{family}:hub_models"
    return fam.template, f"family:{family}"


_PROBE_USER = [{"role": "user", "content": "ping"}]
_PROBE_TOOL = [{"type": "function", "function": {"name": "tkc_probe_tool", "description": "probe",
                                                  "parameters": {"type": "object", "properties": {}}}}]


def _day(day: int) -> Any:
    """A strftime_now reading a fixed day, not the clock: a pass is pure (the probes' renders shadow the global)."""
    return datetime(2001, 1, day).strftime


def _renders(text: str, messages: list[dict], tools: Any = None, day: int = 1, **kw: Any) -> str | None:
    from tkc.bundle.chat import TemplateRefused, render

    try:
        return render(text, messages, tools=tools, add_generation_prompt=True, strftime_now=_day(day), **kw)
    except TemplateRefused:
        return None
    except Exception:  # noqa: BLE001 - a template that breaks on a probe does not support the feature
        return None


def probe_capabilities(text: str, bos: str, eos: str) -> tuple[bool, bool]:
    """(supports_system, supports_tools), found by rendering, not by reading the template's source."""
    system = [{"role": "system", "content": "tkc-probe-system"}, *_PROBE_USER]
    with_system = _renders(text, system, bos_token=bos, eos_token=eos)
    with_tools = _renders(text, _PROBE_USER, _PROBE_TOOL, bos_token=bos, eos_token=eos)
    return (with_system is not None and "tkc-probe-system" in with_system,
            with_tools is not None and "tkc_probe_tool" in with_tools)


_SYSTEM_MARK = "\ue010tkc-probe-system\ue011"  # private-use characters: no template strips or rewrites them


def probe_default_system(text: str, bos: str, eos: str, **kw: Any) -> str | None:
    """The system prompt a template inserts when a conversation has none, found by rendering: whatever stands,
    in the render without a system message, where a given system message would stand. None: nothing inserted
    (or no system role to compare with)."""
    found = _inserted_system(text, bos, eos, 1, kw)
    # rendered on two days: a default prompt holding today's date (Granite 3.3, Apertus) is no fixed text
    return found if found == _inserted_system(text, bos, eos, 2, kw) else None


def _inserted_system(text: str, bos: str, eos: str, day: int, kw: dict) -> str | None:
    marked = _renders(text, [{"role": "system", "content": _SYSTEM_MARK}, *_PROBE_USER], day=day, bos_token=bos,
                      eos_token=eos, **kw)
    bare = _renders(text, _PROBE_USER, day=day, bos_token=bos, eos_token=eos, **kw)
    if marked is None or bare is None or marked.count(_SYSTEM_MARK) != 1:
        return None
    head, tail = marked.split(_SYSTEM_MARK)
    if len(bare) <= len(head) + len(tail) or not (bare.startswith(head) and bare.endswith(tail)):
        return None
    return bare[len(head):len(bare) - len(tail)].strip() or None


def _auto_values(plan: Plan) -> dict[str, tuple[Any, str]]:
    facts = plan.inputs.model
    text = facts.chat_template or ""
    tokens = facts.special_tokens
    src = "derived:tokenizer_config"
    bos, eos = tokens.get("bos_token", ""), tokens.get("eos_token", "")
    system, tools = probe_capabilities(text, bos, eos)
    probed = "derived:resolve_chat_template:render_probe"
    return {
        "template.id": ("auto", _id_source(plan)), "template.source": ("tokenizer", src),
        "template.bos_token": (tokens.get("bos_token", ""), src),
        "template.eos_token": (tokens.get("eos_token", ""), src),
        "template.stop_tokens": (sorted({tokens[k] for k in ("eos_token",) if k in tokens}), src),
        "template.supports_system": (system, probed), "template.supports_tools": (tools, probed),
        "template.default_system": (probe_default_system(text, bos, eos) if system else None, probed),
        "template.render_kwargs": ({}, src),
        "template.file": (TEMPLATE_FILE, "derived:resolve_chat_template"), FILES + TEMPLATE_FILE: (text, src),
    }


def _catalog_values(tid: str, src: str) -> dict[str, tuple[Any, str]]:
    meta = templates()[tid]
    out: dict[str, tuple[Any, str]] = {"template.id": (tid, src), "template.source": (meta.source, f"template:{tid}")}
    for key in ("bos_token", "eos_token", "stop_tokens", "supports_system", "supports_tools", "default_system",
                "render_kwargs"):
        out[f"template.{key}"] = (getattr(meta, key), f"template:{tid}")
    out[FILES + TEMPLATE_FILE] = (template_text(tid), f"template:{tid}")
    out["template.file"] = (TEMPLATE_FILE, "derived:resolve_chat_template")
    return out


def resolve_chat_template(plan: Plan) -> Plan:
    kinds = {plan.get(f"stages.{i}.kind") for i in range(plan.stage_count())}
    if kinds <= _CHAT_FREE_KINDS:
        return plan.with_values({"template": (None, "derived:resolve_chat_template")})
    requested = template_id(plan.inputs.recipe.spec.template)
    if requested == "auto" and plan.inputs.model.chat_template:
        return plan.with_values(_clock(plan, _family_stops(plan, _auto_values(plan))))
    tid, src = (requested, _id_source(plan)) if requested != "auto" else _catalog_choice(plan)
    if tid is None and plan.inputs.model.config is not None and not plan.get("model.family"):
        return plan.with_diagnostics([plan.diagnostic(  # an unknown model (MODEL004) whose tokenizer has none
            "TMPL003", "no chat template: the model's tokenizer ships none and no catalog family names one",
            _id_path(plan), "set template: to a catalog id (see `tkc catalog templates`)")])
    if tid is None:
        return plan  # no family, so no family template: resolve_model_family already reported why
    if tid not in templates():
        hint = did_you_mean(tid or "", templates()) or "see `tkc catalog templates`"
        return plan.with_diagnostics([plan.diagnostic("TMPL001", f"unknown chat template {tid!r}", _id_path(plan),
                                                      hint)])
    return plan.with_values(_clock(plan, _family_stops(plan, _catalog_values(tid, src))))


def _id_path(plan: Plan) -> tuple[str, ...]:
    """Where the recipe names its template: `template:` itself, or `template.id` in the object form."""
    return ("template",) if isinstance(plan.inputs.recipe.spec.template, str) else ("template", "id")


def _id_source(plan: Plan) -> str:
    return source_of(plan, _id_path(plan))


def _clock(plan: Plan, out: dict[str, tuple[Any, str]]) -> dict[str, tuple[Any, str]]:
    """template.now, for a template that reads the clock (strftime_now): the recipe's instant, else DEFAULT_NOW.
    Its renders (training text, prompts) read that instant, so a bundle trains on the same text every day."""
    text = out[FILES + TEMPLATE_FILE][0]
    if "strftime_now" not in text:  # most templates: no need to parse (nor to import jinja2 on the hot path)
        return out
    from tkc.bundle.chat import reads_clock

    if not reads_clock(text):
        return out
    now = template_now(plan.inputs.recipe.spec.template)
    out["template.now"] = (now, source_of(plan, ("template", "now"))) if now else (DEFAULT_NOW, "default")
    return out


def template_clock_notes(plan: Plan) -> list[Diagnostic]:
    """TMPL004: the template reads the clock and the recipe pins no instant, so its renders read DEFAULT_NOW;
    or the recipe pins one that a template without a clock never reads. Notes, printed by compile and explain."""
    if plan.get("template.now") is not None and plan.provenance.get("template.now") == "default":
        return [plan.diagnostic(CLOCK_CODE, f"note: template {plan.get('template.id')!r} reads the clock "
                                f"(strftime_now): its training text and prompts carry the date of {DEFAULT_NOW}, "
                                "fixed so the bundle trains on the same text every day", _id_path(plan),
                                "set template: {id: ..., now: YYYY-MM-DD} to render at another instant")]
    if template_now(plan.inputs.recipe.spec.template) and plan.get("template.now") is None:
        return [plan.diagnostic(CLOCK_CODE, "note: set here but never used: the chat template does not read the "
                                "clock (strftime_now)", ("template", "now"), "remove template.now")]
    return []


def _family_stops(plan: Plan, out: dict[str, tuple[Any, str]]) -> dict[str, tuple[Any, str]]:
    """The template's stop tokens plus the family's own (generation ends there too: GPT-OSS's <|call|>)."""
    fam = families().get(plan.get("model.family") or "")
    stops, src = out["template.stop_tokens"]
    extra = [t for t in (fam.stop_tokens if fam else []) if t not in stops]
    if extra:
        out["template.stop_tokens"] = ([*stops, *extra], f"{src} + family:{fam.id if fam else None}")
    return out
