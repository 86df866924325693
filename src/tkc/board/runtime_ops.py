"""What needs the runtime (torch): chat with a stage, export a stage, inspect one tokenized row. Imported lazily,
on the first such request, so the board starts without torch."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tkc.board.bundles import runnable_bundle, stage_names_or_404, verify_problems
from tkc.board.security import BoardError, relative, scrub, workspace_path

ROLES = ("system", "user", "assistant")
MAX_TOKENS = 1024
MAX_MESSAGES, MAX_CHAT_CHARS = 200, 100_000   # a conversation the board tokenizes (the model truncates further)
MAX_ENGINES = 2
_ENGINES: dict[tuple[str, str, str | None], Any] = {}
_LOCK = threading.Lock()
_EXPORTING = threading.Lock()


def _verified(bundle: Path) -> None:
    problems = verify_problems(bundle)
    if problems:
        raise BoardError(409, "unverified", "the bundle failed verification (tkc verify)", problems=problems)


def _messages(value: Any) -> list[dict[str, str]]:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise BoardError(400, "bad_request", "messages: a non-empty list of {role: system|user|assistant, "
                         "content: string}", field="messages")
    if len(value) > MAX_MESSAGES or sum(len(m["content"]) for m in value) > MAX_CHAT_CHARS:
        raise BoardError(400, "bad_request", f"messages: a conversation is at most {MAX_MESSAGES} messages and "
                         f"{MAX_CHAT_CHARS} characters; start a new chat", field="messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _max_tokens(value: Any) -> int:
    if value is None:
        return 128
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOKENS:
        raise BoardError(400, "bad_request", f"max_tokens: an integer in 1..{MAX_TOKENS}", field="max_tokens")
    return value


def _engine(bundle: Path, stage: str | None) -> tuple[Any, int]:
    """One engine per bundle hash + stage, loaded on first use (the runtime imported here)."""
    from tkc.bundle.io import read_manifest
    from tkc.bundle.plan import PlanError
    from tkc.runtime.infer import load_engine, model_stage, open_context

    key = (str(bundle), read_manifest(bundle)["bundle_hash"], stage)
    with _LOCK:
        if key not in _ENGINES:
            while len(_ENGINES) >= MAX_ENGINES:  # the oldest model leaves memory first
                _ENGINES.pop(next(iter(_ENGINES)))[0].close()
            try:
                ctx = open_context(bundle)
                _ENGINES[key] = (load_engine(ctx, model_stage(ctx, stage)), ctx.plan.seed)
            except (PlanError, KeyError, RuntimeError, ValueError) as exc:
                raise BoardError(400, "bad_request", str(exc.args[0] if exc.args else exc)) from None
        return _ENGINES[key]


def open_chat(workspace: Path, body: dict[str, Any]) -> Iterator[str]:
    """Checked and loaded before the response starts; the iterator yields the event-stream lines."""
    bundle = runnable_bundle(workspace, body.get("bundle"))
    stage = body.get("stage")
    if stage is not None:
        stage_names_or_404(bundle, stage)
    messages, max_tokens = _messages(body.get("messages")), _max_tokens(body.get("max_tokens"))
    _verified(bundle)
    engine, seed = _engine(bundle, stage)

    def events() -> Iterator[str]:
        try:
            for delta in engine.stream(messages, max_new_tokens=max_tokens, temperature=0.0, seed=seed):
                yield f"data: {json.dumps({'delta': delta}, ensure_ascii=False)}\n\n"
        except Exception as exc:  # noqa: BLE001 - reported in the stream: the status line is already sent
            error = scrub({"message": str(exc), "code": "failed"}, workspace)
            yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"

    return events()


def _export_source(ctx: Any, bundle: Path, stage: str | None) -> str:
    from tkc.runtime.infer import model_stage

    try:
        name = model_stage(ctx, stage)
    except (KeyError, RuntimeError) as exc:
        raise BoardError(409, "conflict", str(exc.args[0] if exc.args else exc), field="stage") from None
    if name is None:
        raise BoardError(409, "conflict", "stage: no stage of this bundle has written a model yet; run it first",
                         field="stage")
    return name


def _export_target(workspace: Path, value: Any) -> Path:
    """A new folder for an export: inside the workspace, outside bundles and .tkc-board/, not existing, and
    without the `.tmp-<name>` sibling save_model_dir would clear first (never delete or overwrite user data)."""
    from tkc.board.workspace import BOARD_DIR, inside_bundle

    out = workspace_path(workspace, value, "out")
    if out == workspace.resolve() or inside_bundle(workspace, out) or BOARD_DIR in Path(relative(workspace,
                                                                                                  out)).parts:
        raise BoardError(400, "bad_request", f"out: {value} is the workspace, inside a bundle or {BOARD_DIR}/; "
                         "choose a new folder elsewhere in the workspace", field="out")
    for taken in (out, out.with_name(f".tmp-{out.name}")):
        if os.path.lexists(taken):
            raise BoardError(409, "conflict", f"out: {relative(workspace, taken)} exists; the board never "
                             "overwrites or removes it (choose another out)", field="out")
    return out


def export(workspace: Path, body: dict[str, Any]) -> dict[str, Any]:
    """The stage's model (LoRA merged) with tokenizer and template, as the export stage writes it."""
    bundle = runnable_bundle(workspace, body.get("bundle"))
    stage = body.get("stage")
    if stage is not None:
        stage_names_or_404(bundle, stage)
    out = _export_target(workspace, body["out"]) if body.get("out") is not None else None
    _verified(bundle)
    from tkc.runtime.checkpoint import save_model_dir
    from tkc.runtime.infer import open_context
    from tkc.runtime.model import load_stage_output

    ctx = open_context(bundle)
    name = _export_source(ctx, bundle, stage)
    out = out or _export_target(workspace, f"exports/{bundle.name}-{name}")
    model, template = load_stage_output(ctx, name), ctx.chat_template()

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder), safe_serialization=True)
        ctx.tokenizer().save_pretrained(str(folder))
        if template is not None:
            (folder / "chat_template.jinja").write_text(template, encoding="utf-8")

    with _EXPORTING:  # one export at a time: two to one out would share save_model_dir's temp folder
        _export_target(workspace, relative(workspace, out))
        out.parent.mkdir(parents=True, exist_ok=True)
        save_model_dir(out, write)
    return {"ok": True, "path": relative(workspace, out), "stage": name}


def _segments(tokenizer: Any, ids: list[int], labels: list[int]) -> list[dict[str, Any]]:
    """Runs of trained / masked tokens, decoded, as `tkc data inspect` highlights them."""
    out, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != -100) != (labels[start] != -100):
            out.append({"text": tokenizer.decode(ids[start:k]), "trained": labels[start] != -100})
            start = k
    return out


def _inspect_stage(plan: Any, dataset: Any) -> Any:
    trainable = [s for s in plan.stages if s.kind in ("pt", "sft", "rm", "dpo", "kto") and s.datasets]
    for st in trainable:
        if dataset is None or dataset in st.datasets:
            return st
    raise BoardError(400, "bad_request", f"dataset: no training stage reads {dataset!r}", field="dataset")


def inspect(workspace: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Row `row` of the first training stage reading `dataset`, tokenized as the run will (temp recipe copy)."""
    from tkc.board.workspace import compile_confined, recipe_path, temp_copy, text_field
    from tkc.bundle.plan import structure_plan
    from tkc.schema.diagnostics import CompileError

    recipe = recipe_path(workspace, body.get("recipe_path"), "recipe_path")
    row = body.get("row", 0)
    if not isinstance(row, int) or isinstance(row, bool) or row < 0:
        raise BoardError(400, "bad_request", "row: a non-negative integer", field="row")
    with temp_copy(recipe, text_field(body)) as tmp:
        try:
            compiled = compile_confined(workspace, tmp, relative(workspace, recipe))
        except CompileError as exc:
            raise BoardError(400, "invalid", "the recipe does not compile: validate it first",
                             diagnostics=[d.render() for d in exc.diagnostics]) from None
    return _inspect_row(compiled, _inspect_stage(structure_plan(compiled.resolved), body.get("dataset")), row)


def _inspect_row(compiled: Any, stage: Any, row: int) -> dict[str, Any]:
    import tempfile

    from tkc.bundle.plan import structure_plan
    from tkc.runtime.data import BadRecord, DataError, build_stage_data
    from tkc.runtime.data.tokenizer import load_tokenizer
    from tkc.runtime.model_files import ModelFilesChanged, PathOutsideRoots

    plan = structure_plan(compiled.resolved)
    template = next((v.decode("utf-8") for k, v in compiled.files.items() if k.startswith("template/")), None)
    cache = Path(tempfile.mkdtemp(prefix="tkc-board-inspect-"))
    try:
        tokenizer = load_tokenizer(plan, compiled.source_root)
        data = build_stage_data(plan, stage, tokenizer, compiled.source_root, cache, template_text=template,
                                workers=1)
    except (BadRecord, DataError, ModelFilesChanged, PathOutsideRoots, OSError, ValueError) as exc:
        raise BoardError(400, "bad_request", f"stage {stage.name}: {exc}") from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if row >= len(data.train):
        raise BoardError(400, "bad_request", f"row: stage {stage.name} has {len(data.train)} train rows",
                         field="row")
    prefix = "chosen_" if stage.kind in ("rm", "dpo") else ""
    item = data.train[row]
    ids, labels = list(item[f"{prefix}input_ids"]), list(item[f"{prefix}labels"])
    return {"stage": stage.name, "row": row, "text": tokenizer.decode(ids), "segments": _segments(tokenizer, ids,
                                                                                                  labels)}
