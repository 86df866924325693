"""Recipe fuzzing: any input (random bytes or text, mutations of the shipped recipes, alias graphs, --set values)
either compiles or fails with positioned diagnostics; never another exception, in bounded time and memory."""

from __future__ import annotations

import random
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tkc.compiler import compile_recipe
from tkc.schema.diagnostics import CompileError

REPO = Path(__file__).resolve().parents[2]
JUNK = [None, -1, 0, 3.5, "", "x" * 3, "auto", [], {}, [1, "a"], {"k": "v"}, True, 10**12, "1e-3", "💥"]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _mutate(data, rng: random.Random):
    paths = [p for p in _paths(data) if p]
    path = rng.choice(paths)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    action = rng.choice(["delete", "replace", "rename", "add"])
    key = path[-1]
    if action == "delete" and isinstance(parent, dict):
        del parent[key]
    elif action == "rename" and isinstance(parent, dict):
        parent[str(key)[:-1] + rng.choice("xyz_")] = parent.pop(key)
    elif action == "add" and isinstance(parent, dict):
        parent[rng.choice(["extra", "lr", "seed", "kind", "path"])] = rng.choice(JUNK)
    else:
        parent[key] = rng.choice(JUNK)


@pytest.mark.parametrize("seed", range(150))
def test_mutated_demo_recipe_never_crashes(tmp_path, seed):
    shutil.copytree(REPO / "recipes", tmp_path / "r")
    rng = random.Random(seed)
    data = yaml.safe_load((tmp_path / "r" / "demo.yaml").read_text())
    for _ in range(rng.randint(1, 3)):
        _mutate(data, rng)
    recipe = tmp_path / "r" / "demo.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    try:
        compile_recipe(recipe)
    except CompileError as exc:
        assert exc.diagnostics, "a CompileError always carries at least one diagnostic"
        for diag in exc.diagnostics:
            assert diag.code and diag.message
            assert diag.file is not None, diag.render()


# ---------------------------------------------------------------- hypothesis: recipe text, structures, aliases
# Every input compiles or raises CompileError whose every diagnostic names a file and a line; nothing else escapes.
# Deterministic (derandomize) and bounded (max_examples); the peak RSS is checked once at the end.

SHIPPED = sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
def _peak_kib() -> int:
    """This process's peak resident set since the last reset (VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.fixture(scope="module", autouse=True)
def _peak_from_here():
    """The peak test below measures this module's fuzzing, not what earlier tests in the same pytest process held
    (in-process training and model builds): writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _peak_kib()


FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
KEYS = ["name", "model", "path", "data", "datasets", "stages", "kind", "train", "epochs", "extends", "launch",
        "slurm", "kubernetes", "image", "hardware", "finetuning", "lora", "rank", "a", "sft", "dpo", "<<"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from([".inf", "-.inf", ".nan", "1" * 5000, "x" * 300, "demo.yaml", "sft", "auto"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4),
                      max_leaves=20)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("fuzz") / "recipes"
    shutil.copytree(REPO / "recipes", dst)
    return dst


def _compiles_or_positioned(recipe: Path, overrides: tuple[str, ...] = ()) -> None:
    try:
        compile_recipe(recipe, list(overrides))
    except CompileError as exc:
        assert exc.diagnostics, "a CompileError always carries at least one diagnostic"
        for diag in exc.diagnostics:
            assert diag.code and diag.message and diag.file is not None and diag.line is not None, diag.render()


def _write(fuzz_dir: Path, data: bytes) -> Path:
    path = fuzz_dir / "fuzz.yaml"
    path.write_bytes(data)
    return path


@FUZZ
@given(st.binary(max_size=3000) | st.text(max_size=2000).map(str.encode))
def test_random_bytes_and_text(fuzz_dir, data):
    _compiles_or_positioned(_write(fuzz_dir, data))


@FUZZ
@given(st.sampled_from(SHIPPED), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 40),
                                                    st.binary(max_size=12) | st.sampled_from(
                                                        [b"&a ", b"*a", b"!!python/object ", b": ", b"\n  ", b"- ",
                                                         b"{", b"]", b"<<: *a", b"\t", b".inf", b"\xff"])),
                                          min_size=1, max_size=4))
def test_byte_mutations_of_shipped_recipes(fuzz_dir, recipe, edits):
    data = bytearray((REPO / "recipes" / recipe).read_bytes())
    for where, cut, insert in edits:
        at = int(where * len(data))
        data[at:at + cut] = insert
    _compiles_or_positioned(_write(fuzz_dir, bytes(data)))


def _set_at(data: dict, choice: int, value) -> None:
    paths = [p for p in _paths(data) if p]
    path = paths[choice % len(paths)]
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value


@FUZZ
@given(st.sampled_from(SHIPPED), st.lists(st.tuples(st.integers(0, 10_000), VALUES), min_size=1, max_size=3))
def test_structural_mutations_of_shipped_recipes(fuzz_dir, recipe, edits):
    data = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    for choice, value in edits:
        _set_at(data, choice, value)
    _compiles_or_positioned(_write(fuzz_dir, yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()))


@st.composite
def alias_graphs(draw) -> str:
    """Anchored lists and mappings, each aliasing earlier ones (fan-out up to 12, up to 14 levels)."""
    lines = ['a0: &a0 ["lol", "lol"]']
    for i in range(1, draw(st.integers(1, 14))):
        refs = [f"*a{draw(st.integers(0, i - 1))}" for _ in range(draw(st.integers(0, 12)))]
        if draw(st.booleans()):
            lines.append(f"a{i}: &a{i} [{', '.join(refs)}]")
        else:
            lines.append(f"a{i}: &a{i} {{{', '.join(f'k{j}: {r}' for j, r in enumerate(refs))}}}")
    return "\n".join(lines) + "\n"


@settings(FUZZ, max_examples=100)   # most examples walk up to the 100,000-value limit
@given(alias_graphs(), st.sampled_from(["top", "under_train", "extends"]))
def test_anchor_and_alias_graphs(fuzz_dir, graph, where):
    demo = (REPO / "recipes" / "demo.yaml").read_text()
    if where == "top":
        text = demo + graph
    elif where == "under_train":
        text = demo.replace("train:\n  seed: 42", "train:\n  seed: 42\n  x:\n" + "".join(
            f"    {line}\n" for line in graph.splitlines()))
    else:
        (fuzz_dir / "base_fuzz.yaml").write_text(graph)
        text = "extends: [base_fuzz.yaml]\n" + demo
    _compiles_or_positioned(_write(fuzz_dir, text.encode()))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["train.epochs", "train.max_grad_norm", "stages.0.kind", "name",
                                           "launch.kind", "data.cutoff_len", "stages.9.x", "model", "x.y.z"]),
                          st.text(max_size=30) | st.sampled_from([".inf", "[1, *a]", "&a [1]", "!!binary AAAA",
                                                                  "{", "1" * 5000])),
                max_size=3))
def test_set_overrides(fuzz_dir, sets):
    _compiles_or_positioned(REPO / "recipes" / "demo.yaml", tuple(f"{k}={v}" for k, v in sets))


def test_fuzz_peak_memory_stayed_bounded(_peak_from_here):
    """Runs after the fuzz tests above (file order): while they ran, the process never held more than 512 MiB
    beyond what it held when they started."""
    assert _peak_kib() - _peak_from_here < (512 << 10)


HOSTILE = [
    "\n".join(['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
              + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 20)]),
    "extends: [" + ", ".join(["demo.yaml"] * 1000) + "]\n",
    "name: x\ntrain: " + "{a: " * 10_000 + "}" * 10_000 + "\n",
    "--- !!python/object/apply:os.system [echo pwned]\n",
]


@pytest.mark.parametrize("case", range(len(HOSTILE)))
def test_hostile_recipes_through_the_cli_under_a_2_gib_cap(fuzz_dir, tmp_path, case):
    recipe = _write(fuzz_dir, HOSTILE[case].encode())

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.run([sys.executable, "-m", "tkc.cli.main", "compile", str(recipe), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, preexec_fn=cap, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "fuzz.yaml:" in proc.stderr and not (tmp_path / "o").exists()
