"""tkc: a config compiler for fine-tuning LLMs."""
__version__ = "0.1.0"
