"""Inference: the Engine interface (engine.py), its implementations (HF transformers, vLLM) and the factory."""

from tkc.bundle.chat import ChatTemplate
from tkc.runtime.infer.engine import Completion, Engine
from tkc.runtime.infer.factory import load_engine, model_stage, open_context

__all__ = ["ChatTemplate", "Completion", "Engine", "load_engine", "model_stage", "open_context"]
