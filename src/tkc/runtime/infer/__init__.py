"""Inference: the Engine interface (HF transformers, vLLM) over a bundle's stage outputs."""

from tkc.runtime.infer.engine import ChatFormat, Completion, Engine, load_engine, model_stage, open_context

__all__ = ["ChatFormat", "Completion", "Engine", "load_engine", "model_stage", "open_context"]
