"""`tkc chat`: talk to a bundle's model (a stage's output or the base) with the bundle's chat template."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from tkc.bundle.plan import ResolvedPlan

COMMANDS = "/reset clears the conversation, /exit (or Ctrl-D) quits"
MAX_LINE_BYTES = 1 << 20  # a longer message is refused with a message, before any tokenizing

# Terminal escape sequences, complete: CSI (ESC [ or 8-bit CSI ... final byte), strings (ESC ] OSC, P DCS, X, ^,
# _ ended by BEL or ST), and other escapes (ESC c, ESC ( B, ...). What is left of one at the end of a delta
# (INCOMPLETE) waits for the next delta. CONTROL: C0 (but tab and newline), DEL and C1 characters (8-bit string
# introducers among them: removed alone, so what follows them is shown as text, never hidden).
ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_].*?(?:\x07|\x1b\\)"
    r"|\x1b[ -/]*[0-OQ-WYZ\\`a-~]",  # not [, ], P, X, ^, _: those begin the sequences above
    re.DOTALL,
)
INCOMPLETE = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*\Z|\x1b[\]PX^_].*\Z|\x1b[ -/]*\Z", re.DOTALL)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
HOLD_MAX = 4096  # an unfinished escape string longer than this is dropped, not held


def sanitize(text: str) -> str:
    """Model output made safe for a terminal: escape sequences and control characters (but \\n, \\t) removed."""
    return "".join(sanitized([text]))


def sanitized(deltas: Iterable[str]) -> Iterator[str]:
    """sanitize() over a stream: an escape sequence split across deltas is removed whole; the joined output
    equals sanitize() of the joined input; an escape left unfinished at the end is dropped."""
    pending = ""
    for delta in deltas:
        text = ANSI.sub("", pending + delta)
        m = INCOMPLETE.search(text)
        cut = m.start() if m else len(text)
        pending = text[cut:] if len(text) - cut <= HOLD_MAX else ""
        if out := CONTROL.sub("", text[:cut]):
            yield out


class ChatSession:
    """The conversation so far and how to extend it: each user message gets a streamed assistant reply."""

    def __init__(self, engine: Any, *, system: str | None = None, images: tuple = (), placeholder: str = "",
                 audios: tuple = (), audio_placeholder: str = "", **sampling: Any):
        self.engine, self.system, self.sampling = engine, system, sampling
        self.history: list[dict] = []
        # --image/--audio: the media go with the conversation's first user message, a placeholder each before its text
        self.images, self.placeholder = tuple(images), placeholder
        self.audios, self.audio_placeholder = tuple(audios), audio_placeholder

    def reset(self) -> None:
        self.history = []

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def conversation(self, text: str | None = None) -> Any:
        """What the engine is sent: the messages (and `text` as the next user message); with images, a MediaPrompt
        whose first user message carries their placeholders."""
        messages = [*self.messages(), *([{"role": "user", "content": text}] if text is not None else [])]
        if not self.images and not self.audios:
            return messages
        from tkc.runtime.infer.engine import MediaPrompt

        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        head = self.placeholder * len(self.images) + self.audio_placeholder * len(self.audios)
        messages[first] = {**messages[first], "content": head + messages[first]["content"]}
        return MediaPrompt(messages, self.images, self.audios)

    def prompt(self, text: str) -> str:
        """The exact text the model would continue if `text` were sent now (the template applied)."""
        return self.engine.render(self.conversation(text))

    def refusal(self, text: str) -> str | None:
        """Why `text` cannot be sent (too long for the limit or the model's context), or None."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_LINE_BYTES:
            return f"the message is {size} bytes, over the {MAX_LINE_BYTES}-byte limit; not sent"
        context = self.engine.max_context()
        tokens = self.engine.count_tokens(self.conversation(text))
        budget = self.sampling.get("max_new_tokens", 0)
        if tokens + budget > context:
            return (
                f"the conversation would be {tokens} tokens; with --max-new-tokens {budget} that is over the "
                f"model's context of {context} tokens; not sent (/reset starts a new conversation)"
            )
        return None

    def reply(self, text: str) -> Iterator[str]:
        """Stream the reply to `text`; the history keeps both turns once the reply is complete."""
        self.history.append({"role": "user", "content": text})
        parts: list[str] = []
        try:
            for delta in self.engine.stream(self.conversation(), **self.sampling):
                parts.append(delta)
                yield delta
        except BaseException:
            self.history.pop()  # an interrupted turn leaves no half conversation behind
            raise
        self.history.append({"role": "assistant", "content": "".join(parts)})


def escape_line(text: str) -> str:
    """Text on one line, reversibly: backslashes doubled, newlines and carriage returns as \\n and \\r, any
    other control character (but tab) as \\xNN (the pipe protocol is one reply, or shown prompt, a line)."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def command(session: ChatSession, line: str) -> bool | None:
    """Handle a /command: True to go on, False to quit; None when `line` is a message, not a command."""
    word = line.strip()
    if word in ("/exit", "/quit"):
        return False
    if word == "/reset":
        session.reset()
        return True
    return None


def pipe_loop(
    session: ChatSession, lines: Iterator[str], write: Callable[[str], Any], *, show_prompt: bool = False
) -> None:
    """Non-interactive: one user message per input line, one reply per output line (streamed, sanitized and
    escaped); with show_prompt, the exact rendered prompt (escaped) on a line before each reply. A message
    that cannot be sent gets an empty reply line and the reason on stderr."""
    for raw in lines:
        line = raw.rstrip("\n")
        handled = command(session, line)
        if handled is False:
            return
        if handled or not line.strip():
            continue
        problem = session.refusal(line)
        if show_prompt:
            write(escape_line(session.prompt(line) if problem is None else "") + "\n")
        if problem is not None:
            print(f"tkc chat: {problem}", file=sys.stderr)
        else:
            for delta in sanitized(session.reply(line)):
                write(escape_line(delta))
        write("\n")


def visible(text: str) -> str:
    """`text` with control characters (but newline, tab) shown as escapes (\\x1b), so a shown prompt is exact."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def repl(session: ChatSession, title: str, *, show_prompt: bool = False) -> None:
    """Interactive: a rich prompt, the reply streamed token by token (sanitized)."""
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
        if (problem := session.refusal(line)) is not None:
            console.print(f"[red]{problem}[/]", markup=True, highlight=False)
            continue
        if show_prompt:
            console.print("[dim]--- prompt ---[/]")
            console.print(visible(session.prompt(line)), markup=False, highlight=False)
            console.print("[dim]--- end of prompt ---[/]")
        console.print("[bold blue]model[/] ", end="")
        try:
            for delta in sanitized(session.reply(line)):
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
    show_prompt: Annotated[
        bool,
        typer.Option(
            help="Before each reply, print the exact prompt the model continues (the bundle's template "
            "applied to the conversation); piped, it is one escaped line before each reply line."
        ),
    ] = False,
    source_root: Annotated[
        Path | None,
        typer.Option(help="Where the bundle's relative model paths resolve (default: recorded at compile)."),
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(help="An image the conversation is about (repeat for several; a multimodal bundle): it goes "
                     "with the first message, bounded like training images."),
    ] = None,
    audio: Annotated[
        list[Path] | None,
        typer.Option(help="A PCM WAV file the conversation is about (repeat for several; an audio-language "
                     "bundle such as Qwen2-Audio): it goes with the first message."),
    ] = None,
) -> None:
    """Chat with a bundle's model; reads one message per line when stdin is not a terminal."""
    from tkc.runtime.run import hidden_packages, unused_packages

    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    # This process is the CLI's own: optional packages the bundle never uses stay unimported (as in `tkc run`).
    with hidden_packages(unused_packages(_plan_or_none(bundle))):
        session, title = open_session(
            bundle, stage, engine, source_root, system=system, seed=seed, images=tuple(image or ()),
            audios=tuple(audio or ()), **sampling,
        )
        try:
            if sys.stdin.isatty():
                repl(session, title, show_prompt=show_prompt)
            else:
                write = lambda s: (sys.stdout.write(s), sys.stdout.flush())  # noqa: E731
                pipe_loop(session, iter(sys.stdin), write, show_prompt=show_prompt)
        finally:
            # the batching engine's scheduler thread must be joined before the interpreter exits: left running, it
            # was torn down inside torch and the process aborted ("terminate called without an active exception")
            close = getattr(session.engine, "close", None)
            if close is not None:
                close()


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
    images: tuple[Path, ...] = (),
    audios: tuple[Path, ...] = (),
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
    media: dict[str, Any] = {}
    if images or audios:
        from tkc.runtime.infer.media import read_media

        try:
            media = read_media(ctx, loaded, images, audios)
        except ValueError as e:
            _fail(f"--{'image' if images else 'audio'}: {e}")
    session = ChatSession(loaded, system=system, seed=seed, **media, **sampling)
    return session, f"{ctx.plan.name} / {name or 'base model'} ({engine})"


def _fail(message: str) -> NoReturn:
    print(f"tkc chat: {message}", file=sys.stderr)
    raise typer.Exit(2)


if __name__ == "__main__":  # `python -m tkc.cli.chat` until `tkc chat` is registered in tkc.cli.main
    typer.run(chat)
