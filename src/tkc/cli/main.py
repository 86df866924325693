"""The `tkc` command: one module per verb; the runtime is imported only inside the verbs that train.

compile, verify and explain are plain functions (cli/params.py) that main() calls straight from argv: typer costs
about a tenth of the time `tkc compile` takes to report a typo. Everything else (the other verbs, --help, usage
errors) goes to the typer app, built on first use from the same declarations.
"""

from __future__ import annotations

import errno
import gc
import os
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

HOT_VERBS = ("compile", "verify", "explain")


def _hot_verb(name: str) -> Callable[..., int]:
    if name == "compile":
        from tkc.cli.compile import compile_
        return compile_
    if name == "verify":
        from tkc.cli.verify import verify
        return verify
    from tkc.cli.explain import explain
    return explain


def typer_command(func: Callable[..., int]) -> Callable[..., None]:
    """A plain verb as a typer command: its Arg/Opt become typer.Argument/typer.Option, its exit code typer.Exit."""
    import inspect
    from typing import Annotated

    import typer

    from tkc.cli.params import Arg, params

    def command(**kwargs: Any) -> None:
        code = func(**kwargs)
        if code:
            raise typer.Exit(code)

    sig = []
    for p in params(func):
        info = typer.Argument(help=p.decl.help) if isinstance(p.decl, Arg) else typer.Option(*p.decl.flags,
                                                                                             help=p.decl.help)
        sig.append(inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[p.hint, info],
                                     default=inspect.Parameter.empty if p.required else p.default))
    command.__signature__ = inspect.Signature(sig)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in sig}
    command.__doc__, command.__name__ = func.__doc__, func.__name__
    return command


@cache
def build_app() -> Any:
    """The typer app with every verb (imported here, so the hot verbs never pay for typer or the others)."""
    import typer

    from tkc.cli import board as board_cmd
    from tkc.cli import catalog as catalog_cmd
    from tkc.cli import chat as chat_cmd
    from tkc.cli import diff as diff_cmd
    from tkc.cli import explain as explain_cmd
    from tkc.cli import run as run_cmd
    from tkc.cli import serve as serve_cmd

    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="tkc: compile fine-tuning recipes into reproducible bundles, then run them.")
    app.command("compile")(typer_command(_hot_verb("compile")))
    app.command("verify")(typer_command(_hot_verb("verify")))
    app.command("diff")(diff_cmd.diff)
    app.command("explain")(typer_command(_hot_verb("explain")))
    app.command("schema")(explain_cmd.schema)
    app.command("run")(run_cmd.run)
    app.command("chat")(chat_cmd.chat)
    app.command("serve")(serve_cmd.serve)
    app.command("board")(board_cmd.board)
    app.add_typer(catalog_cmd.app, name="catalog", help="What the compiler knows: templates, families, profiles.")
    try:
        from tkc.cli.data import app as data_app
    except ImportError:  # pragma: no cover - the data verbs ship with the data pipeline
        return app
    app.add_typer(data_app, name="data", help="Inspect datasets as the runtime will see them.")
    return app


def __getattr__(name: str) -> Any:
    """`from tkc.cli.main import app` (tests, embedding) builds the typer app on demand."""
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_hot(argv: list[str]) -> int | None:
    """Run a hot verb straight from argv; None when typer must handle the command line (help, usage errors)."""
    if not argv or argv[0] not in HOT_VERBS or any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):
        return None
    from tkc.cli.params import parse

    func = _hot_verb(argv[0])
    kwargs = parse(func, argv[1:])
    if kwargs is None:
        return None
    try:
        return func(**kwargs)
    except KeyboardInterrupt:  # as typer does
        return 130
    except OSError as exc:  # `tkc explain r.yaml | head`: a closed pipe ends quietly, as with typer
        if exc.errno != errno.EPIPE:
            raise
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stands in for the closed pipe until exit
        return 1


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in HOT_VERBS:
        gc.disable()  # short-lived: the collector would only walk the objects its imports made
    elif argv and argv[0] == "run":
        from tkc.runtime import gcpause

        gcpause.own()  # paused from here, so the CLI's own imports count too; the runtime restarts it
        gcpause.pause()
    code = run_hot(argv)
    sys.exit(build_app()() if code is None else code)


if __name__ == "__main__":
    main()
