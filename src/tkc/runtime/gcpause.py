"""Python's cyclic garbage collector, paused while a `tkc run` stage starts up.

Importing torch, transformers and a model class creates a few hundred thousand long-lived objects (modules,
classes, functions). CPython runs a full collection several times while they pile up, and each one traverses
everything made so far, none of which is garbage. BENCHMARKS.md's launch-to-first-step figures are measured
with the pause.

`pause()` stops the collector when a stage starts; `model_ready()`, called by the model loaders once the
heavy imports and the model exist, moves everything made so far into the permanent generation
(`gc.freeze()`) and restarts the collector, so that later collections in the training loop do not traverse
the start-up objects either. `stage_done()` puts them back under the collector (`gc.unfreeze()`), so what the
finished stage leaves behind in reference cycles (a model held by its own hooks) can still be freed before
the next stage loads its model.

Only for a process tkc owns (`tkc run`): pause() is a no-op unless `own()` was called, and a collector that
someone else disabled is left alone.
"""

from __future__ import annotations

import gc

_owned = False
_paused = False


def own() -> None:
    """This interpreter is `tkc run`'s own: pause() may stop the collector."""
    global _owned
    _owned = True


def pause() -> None:
    """Stop the collector until model_ready() or stage_done() (only in tkc's own process, only if it runs)."""
    global _paused
    if _owned and not _paused and gc.isenabled():
        gc.disable()
        _paused = True


def model_ready() -> None:
    """The heavy imports and the model are done: freeze what start-up made and restart the collector."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False


def stage_done() -> None:
    """Restart the collector if a stage never got to model_ready(), and let it see the frozen objects again."""
    global _paused
    if _paused:
        gc.enable()
        _paused = False
    if _owned:
        gc.unfreeze()


def paused() -> bool:
    return _paused
