"""`tkc chat`: talk to a bundle's model (a stage's output or the base) with the bundle's chat template."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from tkc.bundle.plan import ResolvedPlan

COMMANDS = "/reset clears the conversation, /exit (or Ctrl-D) quits"


class ChatSession:
    """The conversation so far and how to extend it: each user message gets a streamed assistant reply."""

    def __init__(self, engine: Any, *, system: str | None = None, **sampling: Any):
        self.engine, self.system, self.sampling = engine, system, sampling
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def reply(self, text: str) -> Iterator[str]:
        """Stream the reply to `text`; the history keeps both turns once the reply is complete."""
        self.history.append({"role": "user", "content": text})
        parts: list[str] = []
        try:
            for delta in self.engine.stream(self.messages(), **self.sampling):
                parts.append(delta)
                yield delta
        except BaseException:
            self.history.pop()  # an interrupted turn leaves no half conversation behind
            raise
        self.history.append({"role": "assistant", "content": "".join(parts)})


def escape_line(text: str) -> str:
    """A reply on one line: backslashes doubled, newlines written as \\n (the pipe protocol is one reply a line)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def command(session: ChatSession, line: str) -> bool | None:
    """Handle a /command: True to go on, False to quit; None when `line` is a message, not a command."""
    word = line.strip()
    if word in ("/exit", "/quit"):
        return False
    if word == "/reset":
        session.reset()
        return True
    return None


def pipe_loop(session: ChatSession, lines: Iterator[str], write: Callable[[str], Any]) -> None:
    """Non-interactive: one user message per input line, one reply per output line (streamed, escaped)."""
    for raw in lines:
        line = raw.rstrip("\n")
        handled = command(session, line)
        if handled is False:
            return
        if handled or not line.strip():
            continue
        for delta in session.reply(line):
            write(escape_line(delta))
        write("\n")


def repl(session: ChatSession, title: str) -> None:
    """Interactive: a rich prompt, the reply streamed token by token."""
    from rich.console import Console
    from rich.prompt import Prompt

    console = Console()
    console.print(f"[bold]tkc chat[/] · {title} · {COMMANDS}")
    while True:
        try:
            line = Prompt.ask("[bold green]you[/]", console=console)
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        handled = command(session, line)
        if handled is False:
            return
        if handled:
            console.print("[dim](conversation cleared)[/]")
            continue
        if not line.strip():
            continue
        console.print("[bold blue]model[/] ", end="")
        try:
            for delta in session.reply(line):
                console.print(delta, end="", markup=False, highlight=False)
                console.file.flush()
        except KeyboardInterrupt:
            console.print("[dim] (interrupted)[/]", end="")
        console.print()


def chat(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory written by tkc compile (and run).")],
    stage: Annotated[
        str | None,
        typer.Option(
            help="Chat with this stage's model (an eval/infer stage: the model it "
            "reads). Default: the last stage that wrote a model, else the base "
            "model."
        ),
    ] = None,
    engine: Annotated[str, typer.Option(help="Inference engine: hf or vllm.")] = "hf",
    system: Annotated[
        str | None, typer.Option(help="A system message at the start of the conversation.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy; above 0 samples (seeded).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (when temperature > 0).")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: the bundle's seed).")] = None,
    source_root: Annotated[
        Path | None,
        typer.Option(help="Where the bundle's relative model paths resolve (default: recorded at compile)."),
    ] = None,
) -> None:
    """Chat with a bundle's model; reads one message per line when stdin is not a terminal."""
    from tkc.runtime.run import hidden_packages, unused_packages

    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    # This process is the CLI's own: optional packages the bundle never uses stay unimported (as in `tkc run`).
    with hidden_packages(unused_packages(_plan_or_none(bundle))):
        session, title = open_session(bundle, stage, engine, source_root, system=system, seed=seed, **sampling)
        if sys.stdin.isatty():
            repl(session, title)
        else:
            pipe_loop(session, iter(sys.stdin), lambda s: (sys.stdout.write(s), sys.stdout.flush()))


def _plan_or_none(bundle: Path) -> ResolvedPlan | None:
    """The bundle's typed plan, or None when it cannot be read (open_session then reports why)."""
    from tkc.bundle.plan import PlanError, load_plan

    try:
        return load_plan(bundle)
    except PlanError:
        return None


def open_session(
    bundle: Path,
    stage: str | None,
    engine: str,
    source_root: Path | None,
    *,
    system: str | None,
    seed: int | None,
    **sampling: Any,
) -> tuple[ChatSession, str]:
    """Verify the bundle, pick the model, load the engine; a problem is one line on stderr and exit code 2."""
    from tkc.runtime.infer import load_engine, model_stage, open_context
    from tkc.runtime.run import verify

    problem = verify(Path(bundle))
    if problem:
        _fail(f"bundle {bundle} failed verification: {problem}")
    from tkc.bundle.plan import PlanError

    try:
        ctx = open_context(bundle, source_root)
    except PlanError as e:
        _fail(f"bundle {bundle}: resolved.json does not match the plan: {e}")
    try:
        name = model_stage(ctx, stage)
        loaded = load_engine(ctx, name, engine=engine)
    except (KeyError, RuntimeError, ValueError) as e:
        _fail(str(e.args[0] if e.args else e))
    seed = ctx.plan.seed if seed is None else int(seed)
    session = ChatSession(loaded, system=system, seed=seed, **sampling)
    return session, f"{ctx.plan.name} / {name or 'base model'} ({engine})"


def _fail(message: str) -> NoReturn:
    print(f"tkc chat: {message}", file=sys.stderr)
    raise typer.Exit(2)


if __name__ == "__main__":  # `python -m tkc.cli.chat` until `tkc chat` is registered in tkc.cli.main
    typer.run(chat)
