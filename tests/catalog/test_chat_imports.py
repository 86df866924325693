"""tkc.catalog.chat is on the compile path: importing and using it loads no heavy ML library."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "accelerate", "deepspeed")
PROBE = """
import sys
from tkc.catalog.chat import assistant_spans, load_template, render
text, meta = load_template("qwen3")
render(text, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
assistant_spans(text, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)))
"""


def test_chat_imports_no_heavy_library():
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
