"""`tkc run`: verify the bundle, check the environment, seed everything, run each stage in order, resume exactly.

Exit codes:
  0    every selected stage finished (stages with outputs/<stage>/DONE are skipped)
  1    a stage raised an error (Python's exit status for an uncaught exception)
  2    the bundle is invalid (verify_bundle failed, resolved.json unreadable, unknown stage), or its model folder
       differs from the files it recorded, or a path it reads lies outside its read roots
  3    outputs or checkpoints belong to a different bundle hash: refused rather than mixing two plans; or the ranks
       of a multi-process run were started from different bundles (every rank stops: tkc.runtime.fingerprint)
  4    the environment drifted from resolved.environment.pins (versions, extra behaviour-changing packages,
       installed files against their RECORD; tkc.runtime.envcheck) and --allow-env-drift was not given; or the
       ranks' environments differ (python, torch, CUDA, driver, tkc, a pinned package; every rank stops); or
       this machine lacks the device a stage names (cuda, npu), or a deterministic cuda stage lacks
       CUBLAS_WORKSPACE_CONFIG (tkc.runtime.device.check_devices)
  75   a checkpoint or a stage's model could not be written (disk full, quota, file-size limit): the half-written
       files were removed, earlier checkpoints are intact; free space and `tkc run` again resumes from the last one
  143  SIGTERM: a checkpoint was written at the current optimizer step; `tkc run` again resumes exactly
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tkc.bundle import run_lock as bundle_run_lock
from tkc.bundle.plan import (
    PlanError,
    ResolvedGrpoOptions,
    ResolvedPlan,
    ResolvedPpoOptions,
    ResolvedStage,
    load_plan,
)
from tkc.runtime.context import (
    EXIT_BAD_BUNDLE,
    EXIT_BUNDLE_CHANGED,
    EXIT_ENV_MISMATCH,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SAVE_FAILED,
    BundleChanged,
    RunContext,
    SaveFailed,
    load_bundle_hash,
    resolve_source_root,
)
from tkc.runtime.envcheck import environment_drift, format_mismatches
from tkc.runtime.model_files import ModelFilesChanged, PathOutsideRoots
from tkc.runtime.stage_manifest import StageOutputsChanged

STAGE_MODULES = {"pt": "pt", "sft": "sft", "rm": "rm", "dpo": "dpo", "kto": "kto", "ppo": "ppo", "eval": "eval",
                 "infer": "infer", "export": "export", "grpo": "grpo"}


def verify(bundle_dir: Path) -> str | None:
    """Run tkc.bundle.verify_bundle when it exists; return an error message or None."""
    try:
        from tkc.bundle import verify_bundle  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        result = verify_bundle(bundle_dir)
    except Exception as e:  # the verifier reports problems by raising
        return str(e)
    problems = getattr(result, "problems", None) or (result if isinstance(result, list) else None)
    return "; ".join(map(str, problems)) if problems else None


def set_cpu_threads(plan: ResolvedPlan) -> int:
    """Intra-op threads from the plan (`launch.cpu_threads`, the profile's unless the recipe sets it).

    The compiler pins it because float reductions run in a thread-count-dependent order: with the same count,
    CPU runs are bit-identical across hosts. The cpu profile gives its node 2 threads (its 2 cores; split among
    the processes when a launcher starts several): on a quiet 2-core machine the bench's tiny-model training ran
    1.5-1.75x faster than at 1 thread. Threads that share busy cores with other processes spin and slow down, so
    a recipe sharing its machine can set `launch.cpu_threads: 1`.
    """
    import torch

    threads = plan.launch.cpu_threads
    torch.set_num_threads(threads)
    return threads


def unused_packages(plan: ResolvedPlan | None) -> list[str]:
    """Installed optional packages this bundle never uses, which would otherwise load as a side effect.

    peft imports bitsandbytes whenever it is installed: ~1 CPU-second before the first LoRA step on the bench box
    (its ops are wrapped in torch.compile, which loads inductor, functorch and networkx) and a printed failed
    `kernels` lookup. transformers' unwrap_model (at save) imports deepspeed whenever it is installed, which prints
    "Setting accelerator to CPU". Kept importable when a stage quantizes, when a reward model comes from another
    bundle (whose stages may quantize), or when the launcher is deepspeed. None (a bundle the caller could not
    read, and reports): both hidden.
    """
    if plan is None:
        return ["bitsandbytes", "deepspeed"]
    quantized = any(st.finetuning is not None and st.finetuning.quantization is not None for st in plan.stages)
    foreign = any(isinstance(st.options, (ResolvedPpoOptions, ResolvedGrpoOptions)) and st.options.reward_bundle
                  for st in plan.stages)  # fmt: skip
    hidden = [] if quantized or foreign else ["bitsandbytes"]
    if plan.launch.kind != "deepspeed":
        hidden.append("deepspeed")
    return hidden


@contextmanager
def hidden_packages(names: list[str]) -> Iterator[list[str]]:
    """Make `names` unimportable while inside: sys.modules[name] = None, so `import` raises ImportError and
    importlib.util.find_spec returns None (how transformers, peft and accelerate ask whether a package exists).
    A package already imported stays. Restored on exit; availability that a library cached meanwhile stays cached,
    which is why only `tkc run`'s own process (the CLI) asks for this.
    """
    hid = [n for n in names if n not in sys.modules]
    for n in hid:
        sys.modules[n] = None  # type: ignore[assignment]
    try:
        yield hid
    finally:
        for n in hid:
            if n in sys.modules and sys.modules[n] is None:
                del sys.modules[n]


def seed_everything(seed: int, deterministic: bool) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:  # on cuda, CUBLAS_WORKSPACE_CONFIG was checked at start (tkc.runtime.device.check_devices)
        # What torch.use_deterministic_algorithms(True) does, without its import of torch._inductor.config (which
        # loads dynamo, sympy and fx: ~1.3 s before the first step): inductor's flag comes from the environment
        # when something imports it later, or is set now when something already has.
        os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"
        inductor = sys.modules.get("torch._inductor.config")
        if inductor is not None:
            inductor.deterministic = True
        torch._C._set_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _install_sigterm(ctx: RunContext) -> None:
    def handler(signum, frame):
        ctx.stop_requested = True  # the loop checkpoints after the current optimizer step and exits 143

    signal.signal(signal.SIGTERM, handler)


def _run_stage(ctx: RunContext, stage: ResolvedStage) -> int:
    from tkc.runtime import outputs

    if outputs.is_done(ctx, stage):
        ctx.log(f"[{stage.name}] already done (outputs/{stage.name}/DONE); skipping")
        return EXIT_OK
    if stage.kind not in STAGE_MODULES:
        print(f"tkc run: stage {stage.name!r}: kind {stage.kind!r} is not implemented by this runtime "
              f"(available: {', '.join(sorted(STAGE_MODULES))})")
        return EXIT_BAD_BUNDLE
    module = importlib.import_module(f"tkc.runtime.stages.{STAGE_MODULES[stage.kind]}")
    ctx.log(f"== stage {stage.index}: {stage.name} ({stage.kind})")
    return module.run(ctx, stage)


def _select(plan: ResolvedPlan, stage: str | None) -> list[ResolvedStage]:
    stages = sorted(plan.stages, key=lambda s: s.index)
    if stage is None:
        return stages
    chosen = [s for s in stages if s.name == stage]
    if not chosen:
        raise KeyError(f"no stage {stage!r}; the bundle has {[s.name for s in stages]}")
    return chosen


def no_stdin() -> None:
    """Point stdin (fd 0 and sys.stdin) at /dev/null: nothing `tkc run` loads can ever wait on a question."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process


def check_env(plan: ResolvedPlan, allow_drift: bool) -> tuple[int | None, list[str]]:
    """(exit code to stop with, or None; the drift `--allow-env-drift` lets through, for the run records).

    The packages `tkc run` hides for the run (unused_packages) are not drift: they cannot be imported. In-process
    callers (tests) own their interpreter and are judged as the `tkc run` process would be.
    """
    drift = environment_drift(dict(plan.environment.pins), unused_packages(plan))
    if not drift:
        return None, []
    print("tkc run: " + format_mismatches(drift, plan.environment.file))
    if not allow_drift:
        print("tkc run: refusing to run in an environment that differs from the bundle's pins "
              "(--allow-env-drift runs anyway and records the differences in each stage's run_record.json)")
        return EXIT_ENV_MISMATCH, [str(d) for d in drift]  # a multi-process run shows it to every rank
    print("tkc run: --allow-env-drift: running anyway; the differences go into each stage's run_record.json")
    return None, [str(d) for d in drift]


def run_bundle(bundle_dir: Path, *, stage: str | None = None, source_root: Path | None = None,
               allow_env_drift: bool = False, strict_env: bool = False, own_process: bool = False) -> int:
    """Run the bundle's stages (or one), skipping finished ones and resuming interrupted ones; returns an exit code.

    own_process: the caller owns the interpreter (`tkc run`), so optional packages the bundle does not use are
    hidden for the whole run (see unused_packages): faster start-up, no import-time noise; the C heap keeps
    freed memory for reuse (tkc.runtime.memory); each stage starts with the garbage collector paused until
    its model is loaded (tkc.runtime.gcpause); and stdin reads /dev/null (no library can ever prompt).
    strict_env: accepted for old command lines and ignored; refusing drift is the default now.
    """
    bundle_dir = Path(bundle_dir).resolve()
    problem = verify(bundle_dir)
    if problem:
        print(f"tkc run: bundle {bundle_dir} failed verification: {problem}")
        return EXIT_BAD_BUNDLE
    try:  # structured once, before any process starts work: a plan that does not fit is named by its key path
        plan = load_plan(bundle_dir)
    except PlanError as e:
        print(f"tkc run: bundle {bundle_dir}: resolved.json does not match the plan: {e}")
        return EXIT_BAD_BUNDLE
    refused, drift = check_env(plan, allow_env_drift)
    from tkc.runtime.dist import dist_info_from_env

    if refused is not None and not dist_info_from_env().enabled:
        return refused  # under a launcher the rank joins first: every rank stops with it (tkc.runtime.fingerprint)
    from tkc.runtime.device import check_devices

    no_device = check_devices(plan, [s for s in plan.stages if stage is None or s.name == stage],
                              dist_info_from_env().local_rank)
    if no_device is not None:  # the bundle is sound; this machine is not the one it was compiled for
        print(f"tkc run: refusing to run: {no_device}")
        return EXIT_ENV_MISMATCH
    if own_process:
        no_stdin()
        from tkc.runtime import gcpause
        from tkc.runtime.memory import keep_freed_memory

        keep_freed_memory()  # before torch allocates: every step reuses the last one's pages
        gcpause.own()  # each stage starts with the garbage collector paused, until its model is loaded
        gcpause.pause()
    with run_lock(bundle_dir, enabled=not dist_info_from_env().enabled) as holder:
        if holder is not None:
            print(f"tkc run: refusing to run: {holder}")
            return EXIT_BUNDLE_CHANGED
        with hidden_packages(unused_packages(plan) if own_process else []):
            return _run_verified(bundle_dir, plan, stage, source_root, drift, refused is not None)


@contextmanager
def run_lock(bundle_dir: Path, *, enabled: bool) -> Iterator[str | None]:
    """tkc.bundle.run_lock held for the block: yields None while this process holds it, else why not. Ranks under
    a launcher take none (each rank of one run is a `tkc run`)."""
    if not enabled:
        yield None
        return
    fd, why = bundle_run_lock.acquire(bundle_dir)
    if fd is None:
        yield why
        return
    try:
        yield None
    finally:
        os.close(fd)


def _run_verified(bundle_dir: Path, plan: ResolvedPlan, stage: str | None, source_root: Path | None,
                  drift: list[str] | None = None, env_refused: bool = False) -> int:
    from tkc.runtime import gcpause
    from tkc.runtime.data.errors import BadRecord, DataError
    from tkc.runtime.dist import init_distributed, shutdown_distributed
    from tkc.runtime.fingerprint import check_ranks_agree, join_failed

    set_cpu_threads(plan)
    try:
        dist = init_distributed(plan.launch.backend)
    except RuntimeError as e:  # e.g. a rank that never joined: the wait ends at TKC_DIST_TIMEOUT_S
        print(f"tkc run: could not join the process group: {join_failed(e)}")
        return EXIT_FAILED
    ctx = RunContext(bundle_dir, plan, resolve_source_root(bundle_dir, source_root), load_bundle_hash(bundle_dir),
                     dist=dist, env_drift=[] if env_refused else list(drift or []))
    disagree = check_ranks_agree(ctx, list(drift or []) if env_refused else [])  # before any stage trains
    if disagree is not None:
        shutdown_distributed(dist)
        return disagree
    try:
        selected = _select(plan, stage)
    except KeyError as e:
        print(f"tkc run: {e}")
        shutdown_distributed(dist)
        return EXIT_BAD_BUNDLE
    _install_sigterm(ctx)
    try:
        ctx.model_path()  # the model folder checked against the bundle before any stage starts (exit 2 if changed)
        for st in selected:
            train = st.train  # stages that do not train (eval, infer, export) use the run's seed
            seed_everything(train.seed if train else plan.seed, train.deterministic if train else True)
            gcpause.pause()
            try:
                code = _run_stage(ctx, st)
            finally:
                gcpause.stage_done()
            if code != EXIT_OK:
                return code
        return EXIT_OK
    except BundleChanged as e:
        print(f"tkc run: refusing to run: {e}")
        return EXIT_BUNDLE_CHANGED
    except PlanError as e:  # a bundle this one reads (its reward model's) has a resolved.json that does not fit
        print(f"tkc run: {e}")
        return EXIT_BAD_BUNDLE
    except (ModelFilesChanged, PathOutsideRoots) as e:  # nothing was loaded from the folder
        print(f"tkc run: refusing to run: {e}")
        return EXIT_BAD_BUNDLE
    except StageOutputsChanged as e:  # a finished stage's outputs changed since it finished: named, nothing loaded
        print(f"tkc run: {e}")
        return EXIT_BAD_BUNDLE
    except SaveFailed as e:  # disk full mid-save: what was written, what is intact, how to resume; no traceback
        print(f"tkc run: {e}")
        return EXIT_SAVE_FAILED
    except (BadRecord, DataError) as e:  # a record or a data file the stage cannot use: positioned, no traceback
        print(f"tkc run: {e}")
        return EXIT_BAD_BUNDLE
    finally:
        shutdown_distributed(dist)
