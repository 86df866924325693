"""Launch files for a resolved plan: a shell script per stage wrapped by its launcher, plus launcher configs."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tkc.compiler.estimate import DS_BUCKET_ELEMENTS, ds_bucket_elements
from tkc.schema.names import is_dns1123_label, is_image_reference, is_slurm_value

if TYPE_CHECKING:
    import jinja2

TRAINING_KINDS = frozenset({"pt", "sft", "rm", "dpo", "kto", "ppo", "grpo"})
BACKENDS = {"cpu": "gloo", "cuda": "nccl", "rocm": "nccl", "npu": "hccl"}
_TEMPLATES = Path(__file__).parent / "launch_templates"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;\\#]+)")
_GRES = {"cuda": "gpu", "rocm": "gpu", "npu": "npu"}
_K8S_DEVICE = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu", "npu": "huawei.com/Ascend910"}


class LaunchError(ValueError):
    """The plan cannot be launched as asked (batch sizes that do not multiply out, unsafe Slurm values)."""


def read_lock_pins(text: str) -> dict[str, str]:
    """{name: version} for each `name==version` requirement line (names lowercased, PEP 503 normalized)."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return dict(sorted(pins.items()))


def stage_script(stage: dict[str, Any]) -> str:
    """The bundle-relative path of a stage's launch script: launch/NN-<stage>.sh."""
    return f"launch/{int(stage['index']):02d}-{_file_stem(stage['name'])}.sh"


def render_launch(resolved: dict[str, Any]) -> dict[str, str]:
    """{bundle-relative path: text} of every launch file; byte-identical for identical input."""
    launch = _launch(resolved)
    stages = sorted(resolved.get("stages") or [], key=lambda s: int(s["index"]))
    configs, files = _launcher_configs(resolved, launch, stages)
    for stage in stages:
        files[stage_script(stage)] = _render_stage(resolved, launch, stage, configs.get(stage["name"]))
    if launch["kind"] == "slurm":
        files["launch/slurm.sbatch"] = _render_slurm(resolved, launch, stages)
    if launch["kind"] == "kubernetes":
        files["launch/k8s.yaml"] = _render_k8s(resolved, launch, stages)
    return dict(sorted(files.items()))


def _launch(resolved: dict[str, Any]) -> dict[str, Any]:
    """resolved["launch"] with every field the templates read made explicit."""
    spec = resolved.get("launch") or {}
    acc = (resolved.get("hardware") or {}).get("accelerator", "cpu")
    kind = spec.get("kind") or "local"
    nnodes = int(spec.get("nnodes") or 1) if kind != "local" else 1
    per_node = int(spec.get("nproc_per_node") or 1) if kind != "local" else 1
    slurm = {"partition": None, "account": None, "time": "24:00:00", **(spec.get("slurm") or {})}
    k8s = {"image": "tkc:latest", "namespace": "default", **(spec.get("kubernetes") or {})}
    return {"kind": kind, "backend": spec.get("backend") or BACKENDS[acc], "accelerator": acc,
            "nnodes": nnodes, "nproc_per_node": per_node, "world_size": nnodes * per_node,
            "master_port": int(spec.get("master_port") or 29500), "zero_stage": spec.get("zero_stage"),
            "offload": bool(spec.get("offload")), "rdzv_timeout_s": int(spec.get("rdzv_timeout_s") or 900),
            "slurm": slurm, "kubernetes": k8s}


def _distributed(stage: dict[str, Any]) -> bool:
    """Training stages run under the launcher; export/eval/infer run as one process."""
    return stage["kind"] in TRAINING_KINDS and "train" in stage


def _runner(launch: dict[str, Any], stage: dict[str, Any]) -> str:
    """torchrun for every multi-process launcher: DeepSpeed and FSDP2 are applied by `tkc run` inside the ranks
    torchrun starts (no `deepspeed` launcher with its hostfile and ssh, no `accelerate launch`)."""
    return "local" if not _distributed(stage) or launch["kind"] == "local" else "torchrun"


def _deterministic_cuda(launch: dict[str, Any], stage: dict[str, Any]) -> bool:
    """cuBLAS needs CUBLAS_WORKSPACE_CONFIG before CUDA starts to be deterministic; stages without `train` run
    deterministic (tkc.runtime.run.seed_everything)."""
    return launch["accelerator"] in ("cuda", "rocm") and bool((stage.get("train") or {}).get("deterministic", True))


def _render_stage(resolved: dict[str, Any], launch: dict[str, Any], stage: dict[str, Any],
                  config: str | None) -> str:
    timeout, runner = launch["rdzv_timeout_s"], _runner(launch, stage)
    return _env().get_template("stage.sh.j2").render(
        run=resolved.get("name", ""), stage=stage, launch=launch, runner=runner, accelerator=launch["accelerator"],
        config=config, timeout=timeout, cublas=_deterministic_cuda(launch, stage),
        strategy=launch["kind"] if runner == "torchrun" and launch["kind"] in ("deepspeed", "fsdp") else None,
        ds_cpu=launch["kind"] == "deepspeed" and launch["accelerator"] == "cpu",
        multinode=runner == "torchrun" and (launch["nnodes"] > 1 or launch["kind"] in ("slurm", "kubernetes")),
        visible_devices=",".join(str(i) for i in range(launch["nproc_per_node"])),
        hccl_connect_timeout=min(max(timeout, 120), 7200), hccl_exec_timeout=min(timeout, 17340),
        rdzv_id=_slug(f"tkc-{resolved.get('name', '')}-{stage['name']}"),
        rdzv_conf=f"join_timeout={timeout},last_call_timeout=30,close_timeout=60,read_timeout=60",
        tkc_args=["run", ".", "--stage", stage["name"]])


def _launcher_configs(resolved: dict[str, Any], launch: dict[str, Any],
                      stages: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """({stage: config path}, {path: text}) for deepspeed/fsdp: one shared file when the stages agree."""
    builders: dict[str, tuple[str, Callable[..., str]]] = {
        "deepspeed": ("deepspeed", _deepspeed_json), "fsdp": ("accelerate_fsdp", _accelerate_yaml)}
    if launch["kind"] not in builders:
        return {}, {}
    base, build = builders[launch["kind"]]
    ext = "json" if launch["kind"] == "deepspeed" else "yaml"
    texts = {s["name"]: build(s, launch) for s in stages if _distributed(s)}
    if len(set(texts.values())) <= 1:
        paths = {name: f"launch/{base}.{ext}" for name in texts}
    else:
        paths = {s["name"]: f"launch/{base}-{int(s['index']):02d}-{_file_stem(s['name'])}.{ext}"
                 for s in stages if s["name"] in texts}
    return paths, {paths[name]: text for name, text in texts.items()}


def deepspeed_config(stage: dict[str, Any], launch: dict[str, Any]) -> dict[str, Any]:
    """DeepSpeed's config for one training stage: every value explicit, batch sizes as the plan derived them."""
    train = stage["train"]
    micro, accum = int(train["micro_batch_size"]), int(train["gradient_accumulation_steps"])
    total = micro * accum * launch["world_size"]
    if total != int(train["global_batch_size"]):
        raise LaunchError(f"stage {stage['name']!r}: micro batch {micro} x grad accumulation {accum} x world "
                          f"{launch['world_size']} = {total}, not the global batch {train['global_batch_size']}")
    zero_stage = int(launch["zero_stage"] or 0)
    if launch["offload"] and zero_stage == 0:
        raise LaunchError("offload needs ZeRO stage 1, 2 or 3 (launch.zero_stage)")
    device = "cpu" if launch["offload"] else "none"
    # DeepSpeed allocates its buckets whole (two with overlap_comm: 4 GB per rank at its default 5e8 elements,
    # whatever the model): none needs more than the stage's trainable parameters (the compile-time estimate)
    trainable = (stage.get("estimate") or {}).get("trainable_params") or DS_BUCKET_ELEMENTS
    bucket = ds_bucket_elements(trainable)
    zero: dict[str, Any] = {"stage": zero_stage, "overlap_comm": zero_stage > 0, "contiguous_gradients": True,
                            "reduce_scatter": True, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket,
                            "offload_optimizer": {"device": device, "pin_memory": True}}
    if zero_stage == 3:
        zero |= {"offload_param": {"device": device, "pin_memory": True},
                 "stage3_gather_16bit_weights_on_model_save": True}
    precision = train.get("precision", "fp32")
    # tkc hands DeepSpeed its own torch AdamW (LoRA+ groups), offloaded too (no cpu_adam build); tkc prints
    # the progress (steps_per_print null: DeepSpeed's own lines off)
    return {"train_batch_size": total, "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": accum, "gradient_clipping": max(0.0, float(train.get("max_grad_norm", 1.0))),
            "steps_per_print": None, "wall_clock_breakdown": False,
            "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False, "zero_optimization": zero,
            "bf16": {"enabled": precision == "bf16"},
            "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                     "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}}


def _deepspeed_json(stage: dict[str, Any], launch: dict[str, Any]) -> str:
    return json.dumps(deepspeed_config(stage, launch), sort_keys=True, indent=2) + "\n"


def accelerate_fsdp_config(stage: dict[str, Any], launch: dict[str, Any]) -> dict[str, Any]:
    """`accelerate launch --config_file` contents for FSDP2 (full sharding) for one training stage."""
    train = stage["train"]
    precision = {"fp32": "no"}.get(train.get("precision", "fp32"), train.get("precision"))
    return {"compute_environment": "LOCAL_MACHINE", "debug": False, "distributed_type": "FSDP",
            "downcast_bf16": "no", "enable_cpu_affinity": False, "machine_rank": 0,
            "main_training_function": "main", "mixed_precision": precision,
            "num_machines": launch["nnodes"], "num_processes": launch["world_size"],
            "rdzv_backend": "c10d" if launch["nnodes"] > 1 else "static", "same_network": True,
            "use_cpu": launch["accelerator"] == "cpu", "tpu_env": [], "tpu_use_cluster": False,
            "tpu_use_sudo": False,
            "fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                            "fsdp_reshard_after_forward": True, "fsdp_offload_params": launch["offload"],
                            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                            "fsdp_cpu_ram_efficient_loading": True,
                            "fsdp_activation_checkpointing": bool(train.get("gradient_checkpointing"))}}


def _accelerate_yaml(stage: dict[str, Any], launch: dict[str, Any]) -> str:
    return yaml.safe_dump(accelerate_fsdp_config(stage, launch), sort_keys=True, default_flow_style=False)


def _render_slurm(resolved: dict[str, Any], launch: dict[str, Any], stages: list[dict[str, Any]]) -> str:
    slurm = launch["slurm"]
    bad = [f"launch.slurm.{key} {slurm[key]!r}" for key in ("partition", "account", "time")
           if slurm[key] is not None and not is_slurm_value(str(slurm[key]))]
    if bad:  # the schema checks these per key; this guards what reaches an #SBATCH line
        raise LaunchError(f"{'; '.join(bad)}: only letters, digits and _.,:+- are allowed")
    acc = launch["accelerator"]
    gres = f"{_GRES[acc]}:{launch['nproc_per_node']}" if acc in _GRES else None
    steps = [{"script": stage_script(s), "all_nodes": _distributed(s)} for s in stages]
    return _env().get_template("slurm.sbatch.j2").render(
        run=resolved.get("name", ""), launch=launch, slurm=slurm, gres=gres, steps=steps, accelerator=acc,
        job_name=_slug(f"tkc-{resolved.get('name', '')}"), timeout=launch["rdzv_timeout_s"])


def _render_k8s(resolved: dict[str, Any], launch: dict[str, Any], stages: list[dict[str, Any]]) -> str:
    """A headless Service + an Indexed Job of `nnodes` pods (pod 0 hosts the rendezvous), as a v1 List."""
    name = _slug(f"tkc-{resolved.get('name', '')}", limit=52)  # pod hostnames add "-<index>"
    k8s, labels = launch["kubernetes"], {"app.kubernetes.io/name": "tkc", "tkc/run": name}
    _check_k8s(name, k8s)
    lines = ["set -euo pipefail"]
    for s in stages:  # one-process stages run on pod 0 only
        run = f"bash {shlex.quote(stage_script(s))}"
        lines.append(run if _distributed(s) else f'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then {run}; fi')
    acc = launch["accelerator"]
    resources = {"limits": {_K8S_DEVICE[acc]: launch["nproc_per_node"]}} if acc in _K8S_DEVICE else {}
    env = {"MASTER_ADDR": f"{name}-0.{name}", "MASTER_PORT": str(launch["master_port"]),
           "TKC_RDZV_ID": name, "NNODES": str(launch["nnodes"])}
    container = {"name": "tkc", "image": k8s["image"], "workingDir": "/workspace/run",
                 "command": ["bash", "-c", "; ".join(lines)], "resources": resources,
                 "env": [{"name": k, "value": v} for k, v in sorted(env.items())]
                 + [{"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath":
                     "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}],
                 "ports": [{"containerPort": launch["master_port"], "name": "rendezvous"}],
                 "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    meta = {"name": name, "namespace": k8s["namespace"], "labels": labels}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
               "spec": {"clusterIP": "None", "selector": labels, "publishNotReadyAddresses": True,
                        "ports": [{"name": "rendezvous", "port": launch["master_port"]}]}}
    pod = {"metadata": {"labels": labels}, "spec": {
        "subdomain": name, "restartPolicy": "Never", "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {
        "completionMode": "Indexed", "completions": launch["nnodes"], "parallelism": launch["nnodes"],
        "backoffLimit": 0, "template": pod}}
    head = (f"# Kubernetes launch for run {_comment(resolved.get('name', ''))}: kubectl apply -f launch/k8s.yaml\n"
            "# The image must hold the pinned environment and this bundle at /workspace/run.\n")
    doc = {"apiVersion": "v1", "kind": "List", "items": [service, job]}
    return head + yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=True, default_flow_style=False)


def _check_k8s(name: str, k8s: dict[str, Any]) -> None:
    """The schema checks namespace and image per key; this guards what reaches the manifest, derived names too."""
    checks = {f"resource name {name!r}": is_dns1123_label(name) and len(name) <= 52,
              f"launch.kubernetes.namespace {k8s['namespace']!r}": is_dns1123_label(str(k8s["namespace"])),
              f"launch.kubernetes.image {k8s['image']!r}": is_image_reference(str(k8s["image"]))}
    bad = [what for what, ok in checks.items() if not ok]
    if bad:
        raise LaunchError(f"not valid for Kubernetes: {'; '.join(bad)}")


class _NoAliasDumper(yaml.SafeDumper):
    """Shared dicts written out in full: no &anchors / *aliases in files people read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@cache
def _env() -> jinja2.Environment:
    import jinja2  # here, not at import: a recipe with errors renders no script

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["c"] = _comment
    return env


def _comment(value: Any) -> str:
    """A value safe inside a `#` comment: repr-quoted, so no newline can end the comment."""
    return json.dumps(str(value), ensure_ascii=True)


def _slug(text: str, limit: int = 63) -> str:
    """A DNS-1123 label / job-name safe id; a short hash keeps distinct names distinct after folding."""
    folded = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "tkc"
    if folded == text and len(folded) <= limit:
        return folded
    return f"{folded[:limit - 9].rstrip('-')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _file_stem(name: str) -> str:
    """A stage name as a file name component: unchanged when already safe, else folded plus a short hash."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:48] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
