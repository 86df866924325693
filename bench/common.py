"""Bench plumbing: run a command while timestamping its output and sampling the process tree's RSS.

Every figure the benchmarks report is measured here, the same way for tkc and for the peer.
"""

from __future__ import annotations

import json
import os
import platform
import re
import selectors
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
RESULTS = Path(os.environ.get("TKC_BENCH_RESULTS", BENCH / "results"))  # elsewhere: a trial run
DATASETS = Path(os.environ.get("TKC_BENCH_DATASETS", "/work/shared/datasets"))
TKC = ROOT / ".venv" / "bin" / "tkc"
TKC_PY = ROOT / ".venv" / "bin" / "python"
# The machine is shared (2 cores, other jobs running): measured commands run at a raised priority when we
# may raise it (root), the same for both tools, so background load disturbs the figures less.
PRIORITY = int(os.environ.get("TKC_BENCH_NICE", "-10" if os.geteuid() == 0 else "0"))


@dataclass
class Run:
    """One finished command: exit code, wall time, timestamped output lines, peak RSS of its process tree."""

    cmd: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since launch, text)
    cpu_s: float = 0.0  # user+sys CPU seconds of the whole tree (getrusage of reaped children)
    cpu_samples: list[tuple[float, float]] = field(
        default_factory=list
    )  # (t, tree CPU s so far), every sample

    def cpu_at(self, t: float | None) -> float | None:
        """Tree CPU seconds used by time t (first sample at or after t)."""
        if t is None:
            return None
        return next((c for ts, c in self.cpu_samples if ts >= t), self.cpu_s)

    @property
    def text(self) -> str:
        return "\n".join(t for _, t in self.lines)

    def first(self, pattern: str) -> float | None:
        """Seconds from launch to the first output fragment matching `pattern` (regex)."""
        rx = re.compile(pattern)
        return next((t for t, s in self.lines if rx.search(s)), None)

    def last(self, pattern: str) -> float | None:
        rx = re.compile(pattern)
        hits = [t for t, s in self.lines if rx.search(s)]
        return hits[-1] if hits else None


def _tree_rss(pid: int) -> int:
    return _tree_usage(pid)[0]


def _tree_usage(pid: int) -> tuple[int, float]:
    """(RSS bytes, user+sys CPU seconds) summed over `pid` and its live descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    cpu: dict[int, float] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            fields = stat[stat.rindex(")") + 2 :].split()
            ppid, rss_pages = int(fields[1]), int(fields[21])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = rss_pages * page
        cpu[int(d)] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    total, used, todo = 0, 0.0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        used += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total, used


class _Recorder:
    """Output fragments with arrival times, the watched file's new lines, RSS/CPU samples, stop_on."""

    def __init__(self, echo: bool, watch_file: Path | None, watch_tag: str, stop_on: str | None):
        self.echo, self.watch_file, self.watch_tag = echo, watch_file, watch_tag
        self.stop_rx = re.compile(stop_on) if stop_on else None
        self.stopped_at: float | None = None
        self.lines: list[tuple[float, str]] = []
        self.cpu_samples: list[tuple[float, float]] = []
        self.buf, self.peak, self.watched = b"", 0, 0

    def sample(self, now: float, pid: int) -> None:
        rss_now, cpu_now = _tree_usage(pid)
        self.peak = max(self.peak, rss_now)
        self.cpu_samples.append((now, cpu_now))
        self.watch(now)

    def watch(self, now: float) -> None:
        if self.watch_file is not None and self.watch_file.exists():
            got = self.watch_file.read_text(errors="replace").splitlines()
            self.lines.extend((now, self.watch_tag + s) for s in got[self.watched :])
            self.watched = max(self.watched, len(got))

    def feed(self, chunk: bytes, t: float, final: bool = False) -> bool:
        """Record complete fragments; True when a fragment matched stop_on."""
        parts = re.split(rb"[\r\n]", self.buf + chunk)
        self.buf = b"" if final else parts.pop()
        hit = False
        for p in (p for p in parts if p.strip()):
            s = p.decode(errors="replace")
            self.lines.append((t, s))
            if self.echo:
                print(s, file=sys.stderr)
            if self.stop_rx is not None and self.stopped_at is None and self.stop_rx.search(s):
                self.stopped_at, hit = t, True
        return hit


def run(
    cmd: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900.0,
    sample_every: float = 0.05,
    echo: bool = False,
    watch_file: Path | None = None,
    watch_tag: str = "@file",
    stop_on: str | None = None,
) -> Run:
    """Run `cmd`, recording each output fragment (split on \\n and \\r) with its arrival time.

    `watch_file`: a file the command appends lines to (e.g. steps.jsonl); each new line is recorded
    as `watch_tag + line`, so its first appearance can be timed like an output line.
    `stop_on`: a regex; the first output fragment matching it ends the command (its process group is
    killed) and `wall_s` is the time of that fragment.
    """
    import resource
    import signal

    rec = _Recorder(echo, watch_file, watch_tag, stop_on)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    prio = PRIORITY
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=(lambda: os.nice(prio)) if prio else None,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    next_sample = 0.0
    while True:
        now = time.monotonic() - t0
        if now >= next_sample:
            rec.sample(now, proc.pid)
            next_sample = now + sample_every
        for _key, _ in sel.select(timeout=sample_every):
            if rec.feed(proc.stdout.read() or b"", time.monotonic() - t0):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is not None:
            rec.feed(proc.stdout.read() or b"", time.monotonic() - t0, final=True)
            break
        if now > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rec.lines.append((now, f"[bench] killed after {timeout:.0f} s"))
            break
    wall = rec.stopped_at if rec.stopped_at is not None else time.monotonic() - t0
    rec.watch(wall)
    sel.close()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return Run(
        [str(c) for c in cmd],
        proc.returncode if proc.returncode is not None else -9,
        wall,
        rec.peak,
        rec.lines,
        cpu_s,
        rec.cpu_samples,
    )


def step_rates(marks: list) -> list[float]:
    """Tokens/s of steps 2..N from (arrival time, cumulative tokens) per step."""
    return [
        (c1 - c0) / (t1 - t0)
        for (t0, c0), (t1, c1) in zip(marks, marks[1:], strict=False)
        if t1 > t0 and c1 > c0
    ]


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either side is missing."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def machine() -> dict:
    """The facts BENCHMARKS.md prints about the machine, from nproc / free / lscpu."""

    def sh(*c: str) -> str:
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""

    lscpu = dict(
        (k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in sh("lscpu").splitlines() if ":" in ln)
    )
    mem = sh("free", "-b").splitlines()
    total = int(mem[1].split()[1]) if len(mem) > 1 else 0
    return {
        "nproc": int(sh("nproc") or 0),
        "cpu_model": lscpu.get("Model name", platform.processor()),
        "mem_total_gib": round(total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],  # the machine is shared: context for noise
        "bench_nice": PRIORITY,
    }


def tkc_versions() -> dict:
    code = (
        "import json, importlib.metadata as m;"
        "print(json.dumps({p: m.version(p) for p in "
        "('tkc','torch','transformers','peft','trl','datasets','accelerate','tokenizers')}))"
    )
    r = subprocess.run([str(TKC_PY), "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def save(name: str, payload: dict) -> Path:
    """Write bench/results/<name>.json (pretty, sorted) with the run's context attached."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path


def tkc_ready(verb: str = "compile") -> bool:
    """Whether `tkc <verb> --help` works yet (the tkc side lands while the harness exists)."""
    if not TKC.exists():
        return False
    # Bytecode for tkc's own modules, as `pip install` writes it for every installed package (the peer's
    # included). tkc is installed editable, and a shell with PYTHONDONTWRITEBYTECODE=1 (this sandbox) would
    # otherwise recompile ~50 modules on every timed run. checked-hash: a stale .pyc is never used.
    subprocess.run(
        [
            str(TKC_PY),
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "checked-hash",
            str(ROOT / "src" / "tkc"),
        ],
        check=True,
        timeout=300,
    )
    r = subprocess.run([str(TKC), verb, "--help"], capture_output=True, text=True, timeout=120)
    return r.returncode == 0


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"
