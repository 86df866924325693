"""The top-level recipe model, hardware/launch/tracking specs, and the JSON Schema export."""

# No `from __future__ import annotations` here: pydantic would eval each annotation string at import.

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from tkc.schema.names import check_image, check_namespace, check_slurm_time, check_slurm_value
from tkc.schema.recipe import DataSpec, FinetuningSpec, ModelSpec, Name, Spec, TrainSpec
from tkc.schema.stages import StageSpec
from tkc.schema.template import TemplateSpec


class HardwareSpec(Spec):
    accelerator: Literal["cpu", "cuda", "rocm", "npu"] = Field(description="Device kind.")
    devices_per_node: Annotated[int, Field(gt=0, le=64)] = Field(1, description="Devices on each node.")
    nodes: Annotated[int, Field(gt=0, le=4096)] = Field(1, description="Number of nodes.")
    memory_gb: Annotated[float, Field(gt=0)] = Field(description="Memory per device (host RAM for cpu).")
    supports_bf16: bool = Field(False, description="Device computes in bfloat16.")
    supports_fp16: bool = Field(False, description="Device computes in float16.")
    interconnect: Literal["none", "pcie", "nvlink", "infiniband", "hccs"] = Field("none", description="Links.")


SlurmValue = Annotated[str, AfterValidator(check_slurm_value)]


class SlurmSpec(Spec):
    partition: SlurmValue | None = Field(None, description="Slurm partition (letters, digits, _.,:+-).")
    account: SlurmValue | None = Field(None, description="Slurm account (letters, digits, _.,:+-).")
    time: Annotated[str, AfterValidator(check_slurm_time)] = Field(
        "24:00:00", description="Wall-time limit: minutes, [days-]hours:minutes:seconds, days-hours or UNLIMITED.")


class KubernetesSpec(Spec):
    image: Annotated[str, AfterValidator(check_image)] = Field(
        "tkc:latest", description="Container image with the pinned environment: [registry/]name[:tag][@digest].")
    namespace: Annotated[str, AfterValidator(check_namespace)] = Field(
        "default", description="Namespace (a DNS-1123 label: lowercase letters, digits, '-'; at most 63).")


class LaunchSpec(Spec):
    kind: Literal["local", "torchrun", "deepspeed", "fsdp", "slurm", "kubernetes"] | None = Field(
        None, description="Launcher; default from the hardware profile."
    )
    master_port: Annotated[int, Field(gt=1023, lt=65536)] = Field(29500, description="Rendezvous port.")
    zero_stage: Literal[0, 1, 2, 3] | None = Field(None, description="DeepSpeed ZeRO stage.")
    offload: bool = Field(False, description="Offload optimizer state to CPU (DeepSpeed/FSDP).")
    rdzv_timeout_s: Annotated[int, Field(gt=0)] = Field(900, description="Fail, not hang, after this.")
    cpu_threads: Annotated[int, Field(gt=0, le=1024)] | None = Field(
        None, description="Intra-op CPU threads per process (default: the profile's); part of the plan because "
                          "float reductions, hence CPU results, depend on it.")
    slurm: SlurmSpec | None = Field(None, description="Slurm options.")
    kubernetes: KubernetesSpec | None = Field(None, description="Kubernetes options.")


class TrackingSpec(Spec):
    kind: Literal["none", "tensorboard", "wandb", "mlflow"] = Field("none", description="Experiment tracker.")
    project: str | None = Field(None, description="Project/experiment name.")


class RecipeSpec(Spec):
    schema_version: Literal[1] = Field(1, description="Recipe schema version (see schema/migrate.py).")
    name: Name = Field(description="Run name.")
    extends: list[str] = Field(default_factory=list, description="Base recipes merged under this one.")
    read_roots: list[str] = Field(default_factory=list, description=(
        "Extra folders (relative to this recipe's folder) whose files the recipe may read: models, datasets, "
        "registries, extends bases, reward bundles. Any other path outside the recipe's folder is refused."))
    model: ModelSpec
    template: str | TemplateSpec = Field("auto", description=(
        "Chat template id, or auto (the tokenizer's own, else family's); or {id, now} to pin the instant a "
        "clock-reading template renders at."))
    data: DataSpec
    stages: list[StageSpec] = Field(min_length=1, max_length=256, description="Stages, run in order (at most 256).")
    finetuning: FinetuningSpec = Field(default_factory=FinetuningSpec, description="Default for stages.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Default training options for stages.")
    hardware: str | HardwareSpec = Field("cpu", description="Hardware profile id or an inline description.")
    launch: LaunchSpec = Field(default_factory=LaunchSpec, description="How stages are launched.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment tracking.")


def json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema, for editors (YAML language server)."""
    schema = RecipeSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tkc recipe"
    return schema
