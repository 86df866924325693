"""`tkc serve`: an OpenAI-compatible HTTP API over a bundle's stage (FastAPI + uvicorn, the `serve` extra).

protocol.py (request shapes, errors), tools.py (tool calls in the template's format), backend.py (the loaded
stage: engine or rm scorer), app.py (guard, admission, errors, models/health/score), generate.py (chat and text
completions, SSE), server.py (loopback and key checks, uvicorn).
"""
