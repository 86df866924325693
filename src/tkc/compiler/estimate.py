"""Compile-time memory and time estimate of one training stage: pure arithmetic over a model's shape and a setup.

Memory per device, in bytes (N: all parameters, Nt: trainable ones, w: bytes of the compute dtype, 4 for fp32 and 2
for bf16/fp16; W: the world size):

- weights: unsharded (local, DDP): frozen params at w (QLoRA: decoder linears at bits/8 plus the quantization
  constants, the rest at fp32 as `prepare_model_for_kbit_training` leaves it), trainable params in fp32 plus, under
  bf16/fp16 autocast, their w-byte copy. Under ZeRO (any stage) or FSDP, as the ZeRO paper counts mixed precision:
  w·N, divided by W at ZeRO-3 / FSDP full shard (and none on the device when ZeRO-3/FSDP offload params).
- gradients: 4·Nt unsharded; under ZeRO/FSDP w·Nt, divided by W at ZeRO-2/3 and FSDP; with offload at ZeRO-2/3,
  the partition lives on the host (the buckets are buffers).
- optimizer: AdamW, two fp32 moments: 8·Nt; DeepSpeed (any precision, fp32 included) and FSDP with bf16/fp16
  also keep an fp32 master copy (12·Nt); divided by W at ZeRO >= 1 and FSDP; on the host with offload.
- activations: saved for backward, per micro batch of `micro` rows of `cutoff_len` tokens (two sequences a row for
  rm, dpo and kto): per decoder layer that backward passes through, 4h + 3·H·d + 2·K·d + 4i elements a token
  (two RMSNorm inputs and outputs, q/k/v after rotary, the attention output and its reshaped copy, the gated MLP's
  four intermediates; SDPA saves no s² scores) at w bytes; with gradient checkpointing only each layer's input (h)
  plus one layer recomputed. A causal-LM head adds (4 + 4 + w)·V a token: the fp32 log-softmax, its gradient and
  the logits. Freeze-tuning backpropagates through its trainable layers only.
- buffers: RUNTIME_WORKSPACE_BYTES (library workspaces and caches the first forward, backward and step leave:
  27 MiB in a bare transformers loop on a CPU; 64 MiB with tkc's runtime state, calibrated by bench/estimator.py),
  plus DDP's gradient buckets (a copy of the gradients, 4·Nt) when W > 1; DeepSpeed allocates its reduce bucket
  whole: ZeRO-1/2 two (contiguous gradients with overlap_comm), ZeRO-3 one, of the bundle's reduce_bucket_size
  elements at w (compiler/launch.py: Nt clamped to [1e6, 5e8]); ZeRO-3 and FSDP also hold two gathered layers at w,
  ZeRO-3 also what it prefetches (its default stage3_prefetch_bucket_size, 5e7 elements, at most the model), FSDP
  the root's parameters (the embeddings and LM head, gathered for the whole step: only the layers are units).
- step: AdamW (foreach=False) updates one tensor at a time through two temporaries of its size (sqrt of the
  second moment, then its quotient): 8 bytes times the largest trainable tensor (sharded: divided by W), while the
  weights, gradients and moments are all held.
- total: the peak, not the sum. With one micro batch a step, gradients are freed after each step (zero_grad
  set_to_none) and appear during backward as it frees the activations, so the peak holds the larger of the two;
  with gradient accumulation the previous micro batches' gradients stay through the next forward: both.
- overhead: the process itself (CUDA context and allocator slack on a GPU; interpreter, torch and transformers
  on a CPU): RUNTIME_OVERHEAD_BYTES.
Extra models: dpo/kto/grpo keep a reference (LoRA: the base with its adapter off, no bytes; otherwise a frozen copy
at w); ppo adds a value model trained like the policy, the reference and a frozen reward model.

Time: FLOPs per token = 2·Nm forward (Nm: matmul params, the LM head included) + 2·Nb backward to the inputs (the
params backward passes through) + 2·Nt backward to trainable weights (frozen params cost 4·N, trainable 6·N) + 2·Nb
again with checkpointing + attention 4·s·H·d per layer forward (s = cutoff_len, no causal halving: an upper bound),
tripled where backward passes. A reference adds a forward. Step seconds = FLOPs per global batch / (W · peak ·
efficiency), peak from the hardware profile for the stage's precision, EFFICIENCY per accelerator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

GIB = 1 << 30
RUNTIME_OVERHEAD_BYTES = {"cuda": GIB, "rocm": GIB, "npu": 2 * GIB, "cpu": GIB}
USABLE_FRACTION = 0.9        # of the profile's memory_gb: what a plan may use (the rest: fragmentation, spikes)
EFFICIENCY = {"cuda": 0.4, "rocm": 0.3, "npu": 0.3, "cpu": 0.5}   # assumed fraction of peak FLOPs sustained
RUNTIME_WORKSPACE_BYTES = 64 << 20   # calibrated on CPU (bench/estimator.py); see the module docstring
DS_PREFETCH_ELEMENTS = 50_000_000  # DeepSpeed's default stage3_prefetch_bucket_size (the bundle leaves it)
DS_BUCKET_ELEMENTS = 500_000_000   # the largest reduce_bucket_size in a bundle's DeepSpeed config (compiler/launch.py)
QUANT_BLOCK = 64                   # bitsandbytes 4-bit block size: one fp32 absmax per 64 weights
PAIR_KINDS = ("rm", "dpo", "kto")  # two sequences a row (chosen/rejected, or the KL pair)
REFERENCE_KINDS = ("dpo", "kto", "grpo", "ppo")
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    attention_bias: bool = False

    def layer_linear(self) -> int:
        h, d = self.hidden, self.head_dim
        attn = h * self.heads * d * 2 + h * self.kv_heads * d * 2
        bias = (self.heads + 2 * self.kv_heads) * d if self.attention_bias else 0
        return attn + bias + 3 * h * self.intermediate

    def embeddings(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self) -> int:
        return self.layers * (self.layer_linear() + 2 * self.hidden) + self.embeddings() + self.hidden


def shape_from_config(config: Mapping[str, Any] | None) -> tuple[ModelShape | None, str | None]:
    """(shape, None) from a transformers config.json (a multimodal model's text_config), or (None, why not)."""
    cfg = dict(config or {})
    if isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]
    if any(cfg.get(k) for k in _MOE_KEYS):
        return None, "mixture-of-experts shapes are not modelled"
    need = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads")
    missing = [k for k in need if not isinstance(cfg.get(k), int) or isinstance(cfg.get(k), bool) or cfg[k] <= 0]
    if missing:
        return None, f"the model config has no {', '.join(missing)}"
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return ModelShape(cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"],
                      heads, int(kv), int(head_dim), bool(cfg.get("tie_word_embeddings", False)),
                      bool(cfg.get("attention_bias", False))), None


@dataclass(frozen=True)
class Setup:
    """What a stage trains and how; sharding: 0 none, 1/2/3 the ZeRO stage (FSDP full shard counts as 3)."""
    kind: str
    method: str                      # full | freeze | lora
    precision: str                   # fp32 | bf16 | fp16
    micro: int
    cutoff: int
    accelerator: str = "cpu"
    world: int = 1
    sharding: int = 0
    offload: bool = False
    checkpointing: bool = False
    bits: int = 0                    # QLoRA base-model bits (0: not quantized)
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ()
    lora_full_modules: tuple[str, ...] = ()   # modules_to_save: trained in full
    trainable_layers: int = 2        # freeze-tuning
    accumulation: int = 1            # micro batches a step (gradient accumulation)
    engine: str = "torch"            # torch (local, DDP) | deepspeed | fsdp

    def but(self, **changes: Any) -> Setup:
        return replace(self, **changes)


@dataclass(frozen=True)
class Memory:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    buffers: int
    overhead: int
    offloaded: int                  # on the host because of offload (not in total)
    accumulating: bool = False      # gradients held through the next micro batch's forward
    step: int = 0                   # the optimizer step's temporaries (held with the gradients, not activations)

    @property
    def total(self) -> int:
        """The peak (see the module docstring): gradients and activations overlap unless accumulating."""
        backward = self.gradients + self.activations if self.accumulating else max(self.gradients, self.activations)
        peak = max(backward, self.gradients + self.step)
        return self.weights + self.optimizer + peak + self.buffers + self.overhead


def _target_dims(shape: ModelShape, name: str) -> tuple[int, int]:
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
            "up_proj": (h, i), "down_proj": (i, h), "W_pack": (h, q + 2 * kv), "query_key_value": (h, q + 2 * kv),
            "c_attn": (h, q + 2 * kv), "qkv_proj": (h, q + 2 * kv), "gate_up_proj": (h, 2 * i), "dense": (q, h)}
    return dims.get(name, (h, h))


def trainable_params(shape: ModelShape, s: Setup) -> int:
    if s.method == "full":
        return shape.params()
    if s.method == "freeze":
        return min(s.trainable_layers, shape.layers) * (shape.layer_linear() + 2 * shape.hidden)
    per_layer = sum(s.lora_rank * sum(_target_dims(shape, t)) for t in s.lora_targets)
    full = sum(shape.vocab * shape.hidden for m in s.lora_full_modules if m in ("embed_tokens", "lm_head"))
    return shape.layers * per_layer + full


def _weights(shape: ModelShape, s: Setup, nt: int) -> int:
    w, n = _DTYPE_BYTES[s.precision], shape.params()
    if s.sharding:
        return 0 if s.sharding == 3 and s.offload else (w * n) // (s.world if s.sharding == 3 else 1)
    master = 4 + (w if w < 4 else 0)
    if s.method != "lora":
        return w * (n - nt) + master * nt
    if not s.bits:
        return w * n + master * nt
    linear = shape.layers * shape.layer_linear()
    quant = linear * s.bits // 8 + (linear // QUANT_BLOCK) * 4 if s.bits == 4 else linear
    return quant + 4 * (n - linear) + 4 * nt     # prepare_model_for_kbit_training keeps the rest in fp32


def _states(shape: ModelShape, s: Setup, nt: int) -> tuple[int, int, int]:
    """(gradients, optimizer, offloaded) bytes of one model's trainable params on one device."""
    w = _DTYPE_BYTES[s.precision]
    if not s.sharding:
        return 4 * nt, 8 * nt, 0
    grads = (w * nt) // (s.world if s.sharding >= 2 else 1)
    optim = ((8 if w == 4 and s.engine != "deepspeed" else 12) * nt) // s.world
    if not s.offload:
        return grads, optim, 0
    host_grads = grads if s.sharding >= 2 else 0
    host_params = (w * shape.params()) // s.world if s.sharding == 3 else 0
    return grads - host_grads, 0, optim + host_grads + host_params


def _largest_trainable(shape: ModelShape, s: Setup) -> int:
    h, i, q = shape.hidden, shape.intermediate, shape.heads * shape.head_dim
    layer = max(h * i, h * q)
    if s.method == "full":
        return max(shape.vocab * h, layer)
    if s.method == "freeze":
        return layer
    if any(m in ("embed_tokens", "lm_head") for m in s.lora_full_modules):
        return shape.vocab * h
    return s.lora_rank * max((max(_target_dims(shape, t)) for t in s.lora_targets), default=h)


def _step_temporaries(shape: ModelShape, s: Setup) -> int:
    if s.offload and s.sharding:
        return 0
    return 8 * _largest_trainable(shape, s) // (s.world if s.sharding else 1)


def ds_bucket_elements(trainable: int) -> int:
    """DeepSpeed's reduce/allgather bucket size for `trainable` parameters: it allocates its buckets whole, so the
    bundle's config sizes them to the trainable parameters, within [1e6, DS_BUCKET_ELEMENTS] elements."""
    return min(DS_BUCKET_ELEMENTS, max(int(trainable), 1_000_000))


def _buffers(shape: ModelShape, s: Setup, nt: int) -> int:
    w = _DTYPE_BYTES[s.precision]
    if not s.sharding:
        return RUNTIME_WORKSPACE_BYTES + (4 * nt if s.world > 1 else 0)
    bucket = ds_bucket_elements(nt)   # as compiler/launch.py sizes the bundle's config
    buckets = (2 if s.sharding < 3 else 1) * bucket * w if s.engine == "deepspeed" else 0
    layers = 2 * (shape.layer_linear() + 2 * shape.hidden)
    rest = shape.params() - layers
    prefetch = min(DS_PREFETCH_ELEMENTS, rest) if s.engine == "deepspeed" else shape.embeddings()
    gathered = (layers + prefetch) * w if s.sharding == 3 else 0
    return RUNTIME_WORKSPACE_BYTES + buckets + gathered


def activations(shape: ModelShape, s: Setup) -> int:
    w = _DTYPE_BYTES[s.precision]
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_layer = 4 * h + 3 * q + 2 * kv + 4 * shape.intermediate
    layers = min(s.trainable_layers, shape.layers) if s.method == "freeze" else shape.layers
    saved = layers * h + per_layer if s.checkpointing else layers * per_layer
    head = 0 if s.kind == "rm" else (8 + w) * shape.vocab
    tokens = s.micro * s.cutoff * (2 if s.kind in PAIR_KINDS else 1)
    return tokens * (saved * w + head)


def estimate_memory(shape: ModelShape, s: Setup) -> Memory:
    """Per-device bytes of a stage: the policy, then the models its kind adds (see the module docstring)."""
    nt = trainable_params(shape, s)
    weights = _weights(shape, s, nt)
    grads, optim, host = _states(shape, s, nt)
    buffers = _buffers(shape, s, nt)
    frozen_copy = (_DTYPE_BYTES[s.precision] * shape.params()) // (s.world if s.sharding == 3 else 1)
    policy = weights
    if s.kind in REFERENCE_KINDS and s.method != "lora":
        weights += frozen_copy                            # the reference: a frozen copy (LoRA: adapter off)
    if s.kind == "ppo":                                   # a value model trained like the policy, a frozen reward
        weights += policy + frozen_copy
        grads, optim, host, buffers = 2 * grads, 2 * optim, 2 * host, 2 * buffers
    return Memory(weights, grads, optim, activations(shape, s), buffers,
                  RUNTIME_OVERHEAD_BYTES.get(s.accelerator, GIB), host, s.accumulation > 1,
                  (2 if s.kind == "ppo" else 1) * _step_temporaries(shape, s))


def step_flops(shape: ModelShape, s: Setup, global_batch: int) -> float:
    """FLOPs of one optimizer step over the global batch (see the module docstring)."""
    nt, h = trainable_params(shape, s), shape.hidden
    head = 0 if s.kind == "rm" else shape.vocab * h
    layer = shape.layer_linear()
    layers_bp = min(s.trainable_layers, shape.layers) if s.method == "freeze" else shape.layers
    forward = 2 * (shape.layers * layer + head)
    backward = 2 * (layers_bp * layer + head) + 2 * (nt if s.method == "lora" else min(nt, layers_bp * layer + head))
    recompute = 2 * layers_bp * layer if s.checkpointing else 0
    attn = 4 * s.cutoff * shape.heads * shape.head_dim
    attention = attn * (shape.layers + 2 * layers_bp + (layers_bp if s.checkpointing else 0))
    per_token = forward + backward + recompute + attention
    if s.kind in REFERENCE_KINDS:
        per_token += forward + attn * shape.layers
    tokens = global_batch * s.cutoff * (2 if s.kind in PAIR_KINDS else 1)
    return float(per_token) * tokens


def fits(memory: Memory, memory_gb: float, per_node: int = 1, accelerator: str = "cuda") -> bool:
    return needed_bytes(memory, per_node, accelerator) <= available_bytes(memory_gb)


def available_bytes(memory_gb: float) -> int:
    return int(memory_gb * GIB * USABLE_FRACTION)


def needed_bytes(memory: Memory, per_node: int = 1, accelerator: str = "cuda") -> int:
    """What the profile's memory must hold: a device's total; on a CPU every process of the node shares the RAM."""
    return memory.total * (per_node if accelerator == "cpu" else 1)
