"""Cross-field rules: a table of small named checks with stable codes; all violations are reported at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tkc.bundle.hub_cache import COMMIT_RE
from tkc.compiler.dataset_formats import check_stage_dataset_kind
from tkc.compiler.inputs import is_bundle_ref
from tkc.compiler.plan import Plan
from tkc.compiler.rules_deepspeed import (
    deepspeed_loop_stages,
    qlora_under_zero3,
    zero3_same_forwards,
    zero3_whole_copies,
)
from tkc.compiler.rules_export import export_unmerged_needs_lora
from tkc.compiler.rules_fsdp import fsdp_no_fp16, fsdp_no_quantization
from tkc.compiler.rules_memory import memory_fits
from tkc.compiler.rules_moe import moe_needs_moe_family
from tkc.compiler.rules_multimodal import media_needs_multimodal
from tkc.compiler.rules_multimodal_train import (
    lora_needs_language_model,
    no_packing_with_media,
    switches_need_multimodal,
)
from tkc.schema.diagnostics import did_you_mean
from tkc.schema.stages import TRAINING_KINDS

Violation = tuple[tuple[str | int, ...], str, str | None]   # (recipe key path, message, hint)
_PACKABLE = {"pt", "sft"}


def _stages(plan: Plan) -> Iterator[tuple[int, str, str]]:
    for i in range(plan.stage_count()):
        yield i, plan.get(f"stages.{i}.kind"), plan.get(f"stages.{i}.name")


def _train_key(plan: Plan, i: int, key: str) -> tuple[str | int, ...]:
    """Where a stage's train value was set: the stage's own train block, else the top-level one."""
    stage_path = ("stages", i, "train", key)
    return stage_path if stage_path in plan.inputs.recipe.positions else ("train", key)


def batch_divisible(plan: Plan) -> Iterator[Violation]:
    for i, _, name in _stages(plan):
        p = f"stages.{i}.train."
        if p + "global_batch_size" not in plan.values:
            continue
        gbs, world, micro = (plan.get(p + k) for k in ("global_batch_size", "world_size", "micro_batch_size"))
        if gbs % (world * micro):
            yield (_train_key(plan, i, "global_batch_size"), f"stage {name!r}: global batch {gbs} is not divisible by "
                   f"devices ({world}) x micro batch ({micro})", f"use a multiple of {world * micro}")


def vllm_needs_gpu(plan: Plan) -> Iterator[Violation]:
    for i, kind, name in _stages(plan):
        if kind == "infer" and plan.get(f"stages.{i}.options.engine") == "vllm" and \
                plan.get("hardware.accelerator") not in ("cuda", "rocm"):
            yield (("stages", i, "engine"), f"stage {name!r}: vLLM needs a CUDA/ROCm profile, not "
                   f"{plan.get('hardware.accelerator')!r}", "use engine: hf")


def packing_stage(plan: Plan) -> Iterator[Violation]:
    if not plan.get("data.packing"):
        return
    for _i, kind, name in _stages(plan):
        if kind in TRAINING_KINDS and kind not in _PACKABLE:
            yield (("data", "packing"), f"stage {name!r} ({kind}) cannot train on packed sequences",
                   "packing applies to pt and sft; set packing: false")


def padding_stage(plan: Plan) -> Iterator[Violation]:
    for i, kind, name in _stages(plan):
        if kind in ("ppo", "grpo") and plan.get(f"stages.{i}.train.padding") == "unpadded":
            yield (_train_key(plan, i, "padding"), f"stage {name!r} ({kind}) pads its own rollouts",
                   "padding: unpadded applies to pt, sft, rm, dpo and kto; use auto or longest")


def dataset_refs(plan: Plan) -> Iterator[Violation]:
    known = list(plan.inputs.datasets)
    for i, kind, name in _stages(plan):
        for ds in plan.get(f"stages.{i}.datasets") or []:
            if ds not in known:
                yield (("stages", i, "datasets"), f"stage {name!r} uses unknown dataset {ds!r}",
                       did_you_mean(ds, known))
            elif (msg := check_stage_dataset_kind(kind, ds, plan.get(f"datasets.{ds}.kind"))):
                yield (("stages", i, "datasets"), msg, None)
        if kind in TRAINING_KINDS and not plan.get(f"stages.{i}.datasets"):
            yield (("stages", i), f"stage {name!r} ({kind}) has no dataset it can train on", None)


def _rm_stages(plan: Plan, before: int) -> list[str]:
    return [plan.get(f"stages.{j}.name") for j in range(before) if plan.get(f"stages.{j}.kind") == "rm"]


def stage_refs(plan: Plan) -> Iterator[Violation]:
    names = [plan.get(f"stages.{i}.name") for i in range(plan.stage_count())]
    for i, kind, name in _stages(plan):
        src = plan.get(f"stages.{i}.init_from")
        if src is not None and src not in names[:i]:
            yield (("stages", i, "init_from"), f"stage {name!r} starts from {src!r}, which is not an earlier stage",
                   did_you_mean(src, names[:i]))
        if kind == "ppo":
            rm = plan.get(f"stages.{i}.options.reward_model")
            if not is_bundle_ref(rm) and rm not in _rm_stages(plan, i):
                yield (("stages", i, "reward_model"), f"ppo reward_model {rm!r} is neither an earlier rm stage "
                       "nor a bundle path (path/to/bundle or path/to/bundle:stage)", did_you_mean(rm, names[:i]))


def grpo_reward(plan: Plan) -> Iterator[Violation]:
    names = [plan.get(f"stages.{i}.name") for i in range(plan.stage_count())]
    for i, kind, name in _stages(plan):
        if kind != "grpo":
            continue
        rm, fn = plan.get(f"stages.{i}.options.reward_model"), plan.get(f"stages.{i}.options.reward_function")
        if (rm is None) == (fn is None):
            yield (("stages", i), f"grpo stage {name!r} needs exactly one of reward_model, reward_function", None)
        elif rm is not None and not is_bundle_ref(rm) and rm not in _rm_stages(plan, i):
            yield (("stages", i, "reward_model"), f"grpo reward_model {rm!r} is neither an earlier rm stage nor "
                   "a bundle path (path/to/bundle or path/to/bundle:stage)", did_you_mean(rm, names[:i]))
        gbs, n = plan.get(f"stages.{i}.train.global_batch_size"), plan.get(f"stages.{i}.options.num_generations")
        if gbs % n:
            yield (_train_key(plan, i, "global_batch_size"), f"grpo stage {name!r}: global batch {gbs} is not a "
                   f"multiple of num_generations ({n})", f"use a multiple of {n}")


def _set_in_recipe(plan: Plan, *paths: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    return next((p for p in paths if p in plan.inputs.recipe.positions), None)


def rollout_one_process(plan: Plan) -> Iterator[Violation]:
    """ppo and grpo generate, score and update in one process: a launch over several devices cannot run them."""
    for i, kind, name in _stages(plan):
        world = plan.get(f"stages.{i}.train.world_size")
        if kind in ("ppo", "grpo") and isinstance(world, int) and world > 1:
            where = _set_in_recipe(plan, ("launch", "kind"), ("hardware", "profile"), ("hardware",)) or ("stages", i)
            yield (where, f"stage {name!r} ({kind}) runs in one process, but this launch runs {world} "
                   f"({plan.get('launch.kind')} over {plan.get('hardware.profile')})",
                   f"set launch.kind: local, or compile the {kind} stage for a single-device hardware profile")


def grpo_beta_needs_lora(plan: Plan) -> Iterator[Violation]:
    """The KL reference is the policy with its adapter switched off, so beta > 0 needs a LoRA policy."""
    for i, kind, name in _stages(plan):
        beta, method = plan.get(f"stages.{i}.options.beta"), plan.get(f"stages.{i}.finetuning.method")
        if kind == "grpo" and beta and method != "lora":
            yield (("stages", i, "beta"), f"grpo stage {name!r}: beta {beta} (a KL reference to the start policy) "
                   f"needs finetuning method lora, not {method!r}: the reference is the policy with its adapter off",
                   "set finetuning.method: lora for this stage, or beta: 0")


def precision_supported(plan: Plan) -> Iterator[Violation]:
    for i, _, name in _stages(plan):
        prec = plan.get(f"stages.{i}.train.precision")
        if prec in ("bf16", "fp16") and not plan.get(f"hardware.supports_{prec}"):
            yield (_train_key(plan, i, "precision"), f"stage {name!r}: {prec} requested but the hardware "
                   f"({plan.get('hardware.profile')}) does not support it", "use precision: auto")


def quantization_needs_lora(plan: Plan) -> Iterator[Violation]:
    for i, _, name in _stages(plan):
        if f"stages.{i}.finetuning.quantization.bits" in plan.values and \
                plan.get(f"stages.{i}.finetuning.method") != "lora":
            yield (("finetuning", "quantization"), f"stage {name!r}: quantization (QLoRA) needs method: lora", None)


def template_capabilities(plan: Plan) -> Iterator[Violation]:
    if plan.get("template.id") is None:
        return
    for name in plan.inputs.datasets:
        cols = plan.get(f"datasets.{name}.columns") or {}
        if cols.get("tools") and not plan.get("template.supports_tools"):
            yield (("data", "datasets", name), f"dataset {name!r} has tool calls but template "
                   f"{plan.get('template.id')!r} has no tool support", "choose a template with tools")


def cutoff_fits_model(plan: Plan) -> Iterator[Violation]:
    limit = plan.inputs.model.max_positions()
    cutoff = plan.get("data.cutoff_len")
    if limit is not None and isinstance(cutoff, int) and cutoff > limit:
        yield (("data", "cutoff_len"), f"cutoff_len {cutoff} is longer than the model's {limit} positions "
               f"(max_position_embeddings in {plan.inputs.model.path}/config.json)",
               f"the model's limit is {limit}: use cutoff_len <= {limit}")


def hub_revision(plan: Plan) -> Iterator[Violation]:
    if plan.get("model.source") == "hub" and plan.get("model.init") == "scratch":
        yield (("model", "init"), "init: scratch needs a local model directory with config.json", None)




def remote_code_pinned(plan: Plan) -> Iterator[Violation]:
    """Remote code runs only from files the bundle pins: a local folder's (hashed, checked at run), or a hub
    model's at a full commit sha (a branch or tag can move to other code)."""
    revision = plan.get("model.revision")
    if plan.get("model.trust_remote_code") and plan.get("model.source") == "hub" and \
            not COMMIT_RE.fullmatch(str(revision or "")):
        yield (("model", "revision") if revision else ("model", "trust_remote_code"),
               f"trust_remote_code on hub model {plan.get('model.path')!r} needs a pinned revision (a 40-hex commit "
               f"sha), not {revision!r}: the model's Python code runs at `tkc run`",
               "set model.revision to the commit sha, or download the model into the recipe's folder (its files are "
               "then hashed into the bundle and checked before they run)")


def paths_inside_roots(plan: Plan) -> Iterator[Violation]:
    """Paths found outside the source root and `read_roots` by the loading step (compiler/paths.py)."""
    from tkc.compiler.paths import HINT

    for key, message in plan.inputs.paths.outside:
        yield (key, message, HINT)


def tracker_pinned(plan: Plan) -> Iterator[Violation]:
    """The tracker's package must be in the pinned environment the bundle runs in, or the run fails at step 0."""
    from tkc.compiler.launch import read_lock_pins

    kind = plan.get("tracking.kind")
    if kind in (None, "none"):
        return
    lockfile = plan.get("hardware.lockfile", "cpu")
    text = plan.inputs.lockfiles.get(lockfile)
    if text is not None and kind not in read_lock_pins(text):
        yield (("tracking", "kind"), f"tracking.kind {kind!r} needs the {kind!r} package, which the pinned "
               f"environment for this hardware (lockfiles/{lockfile}.txt) does not include",
               "use tracking.kind: tensorboard (pinned in every lockfile), or add the package to the lockfiles "
               "(scripts/lock.sh)")


RULES: dict[str, Callable[[Plan], Iterator[Violation]]] = {
    "BATCH001": batch_divisible,
    "INFER001": vllm_needs_gpu,
    "PACK001": packing_stage,
    "PAD001": padding_stage,
    "DATA010": dataset_refs,
    "STAGE001": stage_refs,
    "GRPO001": grpo_reward,
    "GRPO002": grpo_beta_needs_lora,
    "ROLL001": rollout_one_process,
    "PREC001": precision_supported,
    "PEFT001": quantization_needs_lora,
    "TMPL002": template_capabilities,
    "MODEL002": hub_revision,
    "MODEL003": remote_code_pinned,
    "PATH001": paths_inside_roots,
    "DATA011": cutoff_fits_model,
    "TRACK001": tracker_pinned,
    "EXPORT001": export_unmerged_needs_lora,
    "FSDP001": fsdp_no_quantization,
    "FSDP002": fsdp_no_fp16,
    "DS001": deepspeed_loop_stages,
    "DS002": zero3_whole_copies,
    "DS003": qlora_under_zero3,
    "DS004": zero3_same_forwards,
    "MEM001": memory_fits,
    "MM001": media_needs_multimodal,
    "MM010": switches_need_multimodal,
    "MM011": lora_needs_language_model,
    "MM012": no_packing_with_media,
    "MOE001": moe_needs_moe_family,
}
