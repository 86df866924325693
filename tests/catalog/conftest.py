"""Make the catalog test helpers (chat_conversations.py, make_cases.py) importable under --import-mode=importlib."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402
from chat_conversations import frozen_clock  # noqa: E402


@pytest.fixture(autouse=True)
def _frozen_clock():
    """Templates that print today's date (strftime_now) render on chat_conversations.FROZEN_NOW."""
    with frozen_clock():
        yield
