"""Names the compiler and the runtime must agree on, kept once: which dataset kinds each stage kind reads and
which built-in reward functions exist. Plain data, no imports: the schema, the compiler and the runtime read it."""

from __future__ import annotations

# Which dataset kinds each stage kind reads (ppo and grpo take prompts from sft rows; eval scores sft rows).
STAGE_DATASET_KINDS: dict[str, tuple[str, ...]] = {
    "pt": ("text",),
    "sft": ("sft",),
    "rm": ("preference",),
    "dpo": ("preference",),
    "kto": ("kto",),
    "ppo": ("sft",),
    "grpo": ("sft",),
    "eval": ("sft",),
}

# The grpo stage's built-in `reward_function` ids; tkc.runtime.rewards implements exactly these (checked at import).
REWARD_FUNCTIONS = ("exact_match", "format", "length_penalty")
