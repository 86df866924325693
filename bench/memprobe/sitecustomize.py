"""Memory probe for bench/estimator.py, loaded into every process of a measured run through PYTHONPATH.

Only when TKC_MEMPROBE_DIR is set: a thread samples the C heap in use (glibc mallinfo2: uordblks + hblkhd, every
arena and every mmapped block: torch's CPU tensors, not file mappings or freed-but-kept pages) every 0.5 ms and
keeps the highest value; `baseline` is the heap in use just before the first model is built
(tkc.runtime.model._start_weights: imports, tokenizer and data are loaded by then). At exit each process writes
<pid>.json into that folder.
"""

from __future__ import annotations

import os

if os.environ.get("TKC_MEMPROBE_DIR"):
    import atexit
    import ctypes
    import importlib.abc
    import json
    import sys
    import threading
    import time

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = _MallInfo2
    _state = {"peak": 0, "baseline": None, "peak_after_baseline": 0}

    def _heap() -> int:
        m = _libc.mallinfo2()
        return int(m.uordblks + m.hblkhd)

    _trace: list = []

    def _sample() -> None:
        last = 0
        while True:
            h = _heap()
            if os.environ.get("TKC_MEMPROBE_TRACE") and abs(h - last) > (4 << 20):
                _trace.append((round(time.perf_counter(), 4), h >> 20))
                last = h
            if h > _state["peak"]:
                _state["peak"] = h
            if _state["baseline"] is not None and h > _state["peak_after_baseline"]:
                _state["peak_after_baseline"] = h
            time.sleep(0.0005)

    def _patch(module) -> None:
        start = module._start_weights

        def _start_weights(*args, **kwargs):
            if _state["baseline"] is None:
                _state["baseline"] = _heap()
            return start(*args, **kwargs)
        module._start_weights = _start_weights

    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "tkc.runtime.model":
                return None
            for finder in sys.meta_path:
                spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _patch(module)
            spec.loader.exec_module = exec_module
            return spec

    def _dump() -> None:
        out = {"pid": os.getpid(), "rank": os.environ.get("RANK"), "argv": sys.argv[:4], "peak_heap": _state["peak"],
               "baseline_heap": _state["baseline"], "peak_after_baseline": _state["peak_after_baseline"], "trace": _trace}
        with open(os.path.join(os.environ["TKC_MEMPROBE_DIR"], f"{os.getpid()}.json"), "w") as f:
            json.dump(out, f)

    sys.meta_path.insert(0, _Hook())
    threading.Thread(target=_sample, daemon=True, name="tkc-memprobe").start()
    atexit.register(_dump)
