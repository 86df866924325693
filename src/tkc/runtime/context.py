"""RunContext: what every stage reads (the resolved plan, paths inside the bundle, tokenizer, ranks, stop flag)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tkc.bundle.io import recorded_source_root
from tkc.bundle.plan import ResolvedPlan, ResolvedStage
from tkc.runtime.dist import DistInfo

# Exit codes of `tkc run` (documented in tkc.runtime.run).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_BUNDLE = 2
EXIT_BUNDLE_CHANGED = 3
EXIT_ENV_MISMATCH = 4
EXIT_SAVE_FAILED = 75  # EX_TEMPFAIL: a checkpoint or model could not be written (disk full); earlier ones intact
EXIT_SIGTERM = 143  # 128 + SIGTERM: a checkpoint was written; `tkc run` again resumes exactly


class BundleChanged(RuntimeError):
    """A checkpoint or DONE marker belongs to a different bundle hash than the one being run."""


class SaveFailed(RuntimeError):
    """Writing a checkpoint or a stage's model failed (disk full, quota, file-size limit, I/O error); nothing
    half-written was left behind and every earlier checkpoint is intact. `tkc run` exits EXIT_SAVE_FAILED."""


@dataclass
class RunContext:
    """`plan` is resolved.json structured once (tkc.bundle.plan.load_plan, which raises PlanError naming the key
    path of a plan that does not fit): every stage reads typed fields from it, never the JSON."""

    bundle_dir: Path
    plan: ResolvedPlan
    source_root: Path
    bundle_hash: str
    dist: DistInfo = field(default_factory=DistInfo)
    stop_requested: bool = False
    env_drift: list[str] = field(default_factory=list)   # what `--allow-env-drift` let through (run records)
    strategies: dict[str, Any] = field(default_factory=dict)  # stage name -> its tkc.runtime.strategy.Strategy
    _tokenizer: Any = None
    _model_path: str | None = None

    @property
    def outputs(self) -> Path:
        return self.bundle_dir / "outputs"

    def stage_dir(self, stage: ResolvedStage | str) -> Path:
        return self.outputs / (stage if isinstance(stage, str) else stage.name)

    def stage_by_name(self, name: str) -> ResolvedStage:
        """The typed stage named `name` (what `run(ctx, stage)` receives)."""
        for st in self.plan.stages:
            if st.name == name:
                return st
        raise KeyError(f"no stage named {name!r} in resolved.json")

    def chat_template(self) -> str | None:
        tpl = self.plan.template
        if tpl is None:
            return None
        return (self.bundle_dir / tpl.file).read_text(encoding="utf-8")

    def model_path(self) -> str:
        """The local model folder, verified against the bundle once before anything loads it, or the hub id."""
        if self._model_path is None:
            from tkc.runtime.model_files import checked_model_path

            self._model_path = checked_model_path(self.plan, self.source_root)
        return self._model_path

    def tokenizer(self):
        """The model's tokenizer, with the bundle's chat template (never the one shipped beside the weights)."""
        if self._tokenizer is None:
            from tkc.runtime.data.tokenizer import load_tokenizer

            # the model folder verified first: remote code runs only from files the bundle hashed
            self._tokenizer = load_tokenizer(self.plan, self.source_root, model_path=self.model_path(),
                                             chat_template=self.chat_template())  # fmt: skip
        return self._tokenizer

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, flush=True)


def load_bundle_hash(bundle_dir: Path) -> str:
    """manifest.json's bundle_hash; for a hand-written bundle without a manifest, sha256 of resolved.json."""
    manifest = bundle_dir / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text(encoding="utf-8"))["bundle_hash"]
    return hashlib.sha256((bundle_dir / "resolved.json").read_bytes()).hexdigest()


def resolve_source_root(bundle_dir: Path, override: Path | None) -> Path:
    if override is not None:
        return Path(override).resolve()
    return recorded_source_root(bundle_dir) or bundle_dir.resolve()
