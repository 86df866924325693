"""`tkc data inspect`: datasets as the runtime will see them (counts, token lengths, truncation, label masks)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from tkc.bundle.plan import ResolvedPlan

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Inspect datasets as the runtime will see them."
)

_TRAINABLE = ("pt", "sft", "rm", "dpo", "kto")


@app.callback()
def _group() -> None:
    """Inspect datasets as the runtime will see them."""
    # a callback keeps `data` a command group even while it has a single verb: `tkc data inspect ...`


def default_cache_dir() -> Path:
    """Content-addressed, so one cache serves every bundle: $TKC_CACHE_DIR/data or ~/.cache/tkc/data."""
    return Path(os.environ.get("TKC_CACHE_DIR") or Path.home() / ".cache" / "tkc") / "data"


def _check_intact(target: Path) -> None:
    """The bundle's files match its manifest, as `tkc run` checks before it reads them; else exit 2 naming them."""
    from tkc.bundle.io import MANIFEST, check_bundle

    if not (target / MANIFEST).is_file():
        print(f"tkc data inspect: {target} is not a bundle (no {MANIFEST})", file=sys.stderr)
        raise typer.Exit(2) from None
    problems = check_bundle(target)
    if problems:
        print(f"tkc data inspect: bundle {target} failed verification:\n" +
              "\n".join(f"  {p.render()}" for p in problems), file=sys.stderr)
        raise typer.Exit(2) from None


def _load_target(target: Path, source_root: Path | None) -> tuple[ResolvedPlan, str | None, Path, Path | None]:
    """(typed plan, template text, source root, bundle dir) from a bundle folder or a recipe file."""
    from tkc.bundle.plan import PlanError, load_plan, structure_plan

    if target.is_dir():
        _check_intact(target)
        try:
            plan = load_plan(target)  # structured as `tkc run` does: a plan that does not fit is named by key path
        except PlanError as exc:
            print(f"tkc data inspect: {target}: resolved.json does not match the plan: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        tpl = target / (plan.template.file if plan.template else "template/chat_template.jinja")
        volatile = target / "volatile.json"
        if source_root is None:
            recorded = json.loads(volatile.read_text()).get("source_root") if volatile.is_file() else None
            source_root = Path(recorded) if recorded else target
        return plan, tpl.read_text(encoding="utf-8") if tpl.is_file() else None, source_root, target
    from tkc.cli._common import report
    from tkc.compiler import compile_recipe
    from tkc.schema.diagnostics import CompileError

    try:
        compiled = compile_recipe(target, source_root=source_root)
    except CompileError as exc:
        raise typer.Exit(report(exc)) from None
    files = {k: v for k, v in compiled.files.items() if k.startswith("template/")}
    text = next(iter(files.values())).decode("utf-8") if files else None
    return structure_plan(compiled.resolved), text, compiled.source_root, None


def _histogram(lengths: list[int], bins: int) -> list[str]:
    if not lengths:
        return ["  (no rows)"]
    lo, hi = min(lengths), max(lengths)
    width = -(-(hi - lo + 1) // bins)
    counts = [0] * -(-(hi - lo + 1) // width)
    for n in lengths:
        counts[(n - lo) // width] += 1
    top = max(counts)
    return [f"  {lo + i * width:>6}-{lo + (i + 1) * width - 1:<6} {c:>7}  {'#' * round(40 * c / top)}"
            for i, c in enumerate(counts)]  # fmt: skip


MARKS = ("⟦", "⟧")  # trained spans in plain text (a file, a pipe, a CI log), where colour does not show


def _highlight(tokenizer, ids: list[int], labels: list[int], plain: bool = False, media: tuple[str, ...] = ()) -> str:
    """Decode runs of trained / untrained tokens; trained runs in bold green, or between ⟦ ⟧ in plain text; runs of
    a media token (the expanded placeholders) shown as `<|image_pad|>×64`."""
    from rich.markup import escape

    from tkc.bundle.media import compress_runs

    out, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != -100) != (labels[start] != -100):
            text = escape(compress_runs(tokenizer.decode(ids[start:k]), media))
            trained = labels[start] != -100
            if plain:
                out.append(f"{MARKS[0]}{text}{MARKS[1]}" if trained else text)
            else:
                out.append(f"[bold green]{text}[/]" if trained else f"[dim]{text}[/]")
            start = k
    return "".join(out)


def _cut_lines(s: dict, limit: int = 10) -> list[str]:
    """What truncation did, per row (the build keeps the first 50 changed rows)."""
    lines = []
    for c in s.get("cuts", [])[:limit]:
        text = (f"    cut {c['where']}: {c['turns_dropped']} earlier turn(s) dropped, {c['prompt_tokens_cut']} prompt "
                f"and {c['response_tokens_cut']} response tokens cut")  # fmt: skip
        lines.append(text + (f"; row dropped: {c['dropped']}" if c.get("dropped") else ""))
    more = s["truncated"] - len(lines)
    return lines + ([f"    ... and {more} more truncated row(s)"] if more > 0 else [])


def _print_stage(console, stage: Any, data: Any, tokenizer, bins: int, example: int,
                 media: tuple[str, ...] = ()) -> None:
    s = data.stats
    console.print(f"[bold]stage {stage.name}[/] ({stage.kind})  cache {'hit' if s['cache_hit'] else 'built'}:"
                  f" {data.cache_path}")  # fmt: skip
    for name, d in s["datasets"].items():
        console.print(
            f"  dataset {name}: {d['records']} records, {d['converted']} converted, {d.get('skipped', 0)} skipped"
        )
    for reason in s["skipped"]["reasons"][:5]:
        console.print(
            f"    skipped {reason['file']}:{reason['line']}: {reason['message']} (expected {reason['expected']})"
        )
    console.print(f"  examples: train {s['examples']['train']}, eval {s['examples']['eval']}; rows: train "
                  f"{s['rows']['train']}, eval {s['rows']['eval']}")  # fmt: skip
    console.print(f"  truncated to cutoff: {s['truncated']}; dropped (nothing to train): {s['dropped_no_labels']}; "
                  f"dropped (tool definition cut): {s.get('dropped_tool_defs', 0)}")  # fmt: skip
    for line in _cut_lines(s):
        console.print(line, markup=False, highlight=False)
    pad = s["padding_fraction"]
    packed = "n/a" if pad["packed"] is None else f"{pad['packed']:.1%}"
    console.print(f"  tokens: {s['tokens']['total']} ({s['tokens']['trained']} trained); padding at batch "
                  f"{pad['batch_size']}: unpacked {pad['unpacked']:.1%}, packed {packed}")  # fmt: skip
    prefix = "chosen_" if stage.kind in ("rm", "dpo") else ""
    lengths = [len(x) for x in data.train[f"{prefix}input_ids"]]
    console.print(f"  token length histogram ({prefix or ''}input_ids):", markup=False)
    for line in _histogram(lengths, bins):
        console.print(line, markup=False)
    if len(data.train):
        row = data.train[min(example, len(data.train) - 1)]
        plain = not console.is_terminal
        legend = f"trained {MARKS[0]}between these marks{MARKS[1]}, the rest masked" if plain else \
            "[bold green]trained[/], [dim]masked[/]"  # fmt: skip
        console.print(f"  example row {min(example, len(data.train) - 1)} ({legend}):")
        console.print(
            _highlight(tokenizer, row[f"{prefix}input_ids"], row[f"{prefix}labels"], plain, media), highlight=False
        )


@app.command()
def inspect(
    target: Annotated[
        Path, typer.Argument(help="A recipe .yaml (compiled in memory) or a bundle directory.")
    ],
    stage: Annotated[
        str | None, typer.Option(help="Only this stage (default: every training stage).")
    ] = None,
    source_root: Annotated[Path | None, typer.Option(help="Where relative data/model paths resolve.")] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Tokenized-data cache (default: a bundle's outputs/.cache, the one `tkc run` "
            "reads; for a recipe $TKC_CACHE_DIR/data or ~/.cache/tkc/data)."
        ),
    ] = None,  # fmt: skip
    bins: Annotated[int, typer.Option(help="Histogram bins.")] = 10,
    example: Annotated[int, typer.Option(help="Which train row to show.")] = 0,
) -> None:
    """Record counts, token-length histogram, truncation, and one example with its trained tokens highlighted."""
    from rich.console import Console
    from rich.markup import escape

    from tkc.runtime.data import BadRecord, DataError, build_stage_data
    from tkc.runtime.data.tokenizer import load_tokenizer

    console = Console(soft_wrap=True)  # a file or CI log keeps each line whole (no wrapping at 80 columns)
    plan, template_text, root, bundle_dir = _load_target(target, source_root)
    from tkc.runtime.model_files import ModelFilesChanged, PathOutsideRoots

    try:
        tokenizer = load_tokenizer(plan, root)  # the model folder checked against the bundle first
    except (ModelFilesChanged, PathOutsideRoots) as exc:
        console.print(f"[bold red]tkc data inspect:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    stages = [s for s in plan.stages if s.kind in _TRAINABLE and s.datasets]
    if stage is not None:
        stages = [s for s in stages if s.name == stage]
        if not stages:
            raise typer.BadParameter(f"no training stage named {stage!r}", param_hint="--stage")
    if cache_dir is None:
        cache_dir = bundle_dir / "outputs" / ".cache" if bundle_dir is not None else default_cache_dir()
    for st in stages:
        try:
            data = build_stage_data(plan, st, tokenizer, root, cache_dir,
                                    template_text=template_text, bundle_dir=bundle_dir)  # fmt: skip
        except (BadRecord, DataError) as exc:
            console.print(f"[bold red]stage {st.name}:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
        mm = plan.model.multimodal
        _print_stage(console, st, data, tokenizer, bins, example, tuple(e.token for e in mm.media.values()) if mm else ())
