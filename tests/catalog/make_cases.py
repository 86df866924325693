"""Regenerate tests/catalog/cases/<template>.json with transformers' own chat template machinery.

Run: `.venv/bin/python tests/catalog/make_cases.py` (offline; nothing from a hub). The expected texts come
from `transformers.utils.chat_template_utils.render_jinja_template` (what `apply_chat_template` calls), so
they are independent of tkc's renderer; test_cases.py checks tkc against them and that they are current.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jinja2
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from chat_conversations import cases_for, frozen_clock  # noqa: E402

from tkc.catalog.chat import list_templates, load_template  # noqa: E402


def hf_expected(text: str, meta: dict, case: dict) -> str | dict:
    """What transformers renders for `case`, or {"error": "<ExceptionType>: <message>"}."""
    kwargs = {"bos_token": meta["bos_token"], "eos_token": meta["eos_token"], **meta.get("render_kwargs", {})}
    kwargs.update(case["extra"])
    try:
        rendered, _ = render_jinja_template(
            conversations=[case["messages"]],
            tools=case["tools"],
            chat_template=text,
            add_generation_prompt=case["add_generation_prompt"],
            **kwargs,
        )
    except jinja2.exceptions.TemplateError as exc:
        return {"error": f"{type(exc).__name__}: {exc.message}"}
    except Exception as exc:  # the vendor template crashes on this input (e.g. a type error): record that too
        return {"error": f"{type(exc).__name__}: {exc}"}
    return rendered[0]


def build_case_file(template_id: str) -> dict:
    text, meta = load_template(template_id)
    cases = {}
    for name, case in cases_for(meta).items():
        cases[name] = {**case, "expected": hf_expected(text, meta, case)}
    return {
        "template": template_id,
        "generated_by": f"tests/catalog/make_cases.py (transformers {transformers.__version__} render_jinja_template)",
        "bos_token": meta["bos_token"],
        "eos_token": meta["eos_token"],
        "render_kwargs": meta.get("render_kwargs", {}),
        "cases": cases,
    }


def dump(obj: dict) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    out = HERE / "cases"
    out.mkdir(exist_ok=True)
    with frozen_clock():
        for template_id in list_templates():
            (out / f"{template_id}.json").write_text(dump(build_case_file(template_id)), encoding="utf-8")
    print(f"wrote {len(list_templates())} case files to {out}")


if __name__ == "__main__":
    main()
