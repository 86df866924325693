"""Hub dataset ids: looked up in the local Hugging Face cache (huggingface_hub's own layout), offline.

A pinned revision makes the bundle hermetic, an unpinned id does not (`--strict` refuses it), and a dataset or
revision the offline cache lacks is a compile error at the recipe line of the key that names it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tkc.bundle.hub_cache import find_snapshot, hub_cache_dir
from tkc.cli.main import app
from tkc.compiler.pipeline import compile_recipe
from tkc.schema.diagnostics import CompileError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "assets" / "tiny-qwen2"
REV = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "acme/tiny-sft"
RECORDS = [
    {"instruction": f"What is {a}+{b}?", "input": "", "output": str(a + b)} for a, b in ((2, 3), (7, 1))
]


def make_hub_cache(hub_dir: Path, repo_id: str = REPO_ID, rev: str = REV, records=RECORDS) -> Path:
    """What huggingface_hub writes when it downloads a dataset repository: refs/main names the snapshot."""
    repo = hub_dir / "--".join(["datasets", *repo_id.split("/")])
    data = repo / "snapshots" / rev / "data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev, encoding="utf-8")
    return data / "train.jsonl"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """HF_HOME points at a fresh cache holding acme/tiny-sft at REV; HF_HUB_OFFLINE=1."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_hub_cache(tmp_path / "hf" / "hub")
    return tmp_path


def write_recipe(directory: Path, dataset_path: str = REPO_ID, revision: str | None = None) -> Path:
    """A one-stage sft recipe; the dataset's `path:` is on line 9 and its `revision:` (if any) on line 10."""
    directory.mkdir(parents=True, exist_ok=True)
    rev_line = f"      revision: {revision!r}\n" if revision else ""
    text = (
        "schema_version: 1\n"
        "name: hub\n"
        f"model: {{path: {json.dumps(str(TINY))}, init: scratch}}\n"
        "template: chatml\n"
        "hardware: cpu\n"
        "data:\n"
        "  datasets:\n"
        "    h:\n"
        f"      path: {dataset_path}\n"
        f"{rev_line}"
        "      format: alpaca\n"
        "  cutoff_len: 64\n"
        "stages:\n"
        "  - {kind: sft, name: sft, datasets: [h], finetuning: {method: full}, train: {max_steps: 1}}\n"
        f"read_roots: [{json.dumps(str(TINY))}]\n"   # the model lives outside the recipe's folder
    )
    recipe = directory / "recipe.yaml"
    recipe.write_text(text, encoding="utf-8")
    return recipe


@pytest.mark.parametrize("env", ["HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"])
def test_cache_dir_and_layout_are_huggingface_hubs(tmp_path, monkeypatch, env):
    """tkc finds the cache where huggingface_hub looks and reads its layout as huggingface_hub does."""
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(env, str(tmp_path / "c"))
    code = "import huggingface_hub.constants as c; print(c.HF_HUB_CACHE)"
    theirs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert str(hub_cache_dir()) == theirs.strip()

    hub = pytest.importorskip("huggingface_hub")
    make_hub_cache(hub_cache_dir())
    scanned = hub.scan_cache_dir(hub_cache_dir())
    [repo] = scanned.repos
    assert (repo.repo_id, repo.repo_type) == (REPO_ID, "dataset")
    assert [(r.commit_hash, set(r.refs)) for r in repo.revisions] == [(REV, {"main"})]
    for revision in (None, "main", REV):
        theirs = hub.snapshot_download(REPO_ID, repo_type="dataset", revision=revision,
                                       cache_dir=hub_cache_dir(), local_files_only=True)  # fmt: skip
        assert find_snapshot(REPO_ID, revision) == (Path(theirs), None)
    assert find_snapshot(REPO_ID, "f" * 40)[0] is None and find_snapshot(REPO_ID, "v2")[0] is None


def test_pinned_is_hermetic_unpinned_is_not(offline_hub):
    pinned = compile_recipe(write_recipe(offline_hub / "pinned", revision=REV)).resolved
    unpinned = compile_recipe(write_recipe(offline_hub / "unpinned")).resolved
    for resolved in (pinned, unpinned):
        ds = resolved["datasets"]["h"]
        assert (ds["source"], ds["path"], ds["file_type"], ds["files"]) == ("hub", REPO_ID, "hub", [])
    assert pinned["datasets"]["h"]["revision"] == REV and pinned["hermetic"] is True
    assert pinned["non_hermetic_reasons"] == []
    assert unpinned["datasets"]["h"]["revision"] is None and unpinned["hermetic"] is False
    assert unpinned["non_hermetic_reasons"] == ["dataset 'h' is a hub id without a pinned revision"]


def test_strict_refuses_the_unpinned_recipe(offline_hub):
    runner = CliRunner()
    ok = runner.invoke(
        app, ["compile", str(write_recipe(offline_hub / "p", revision=REV)), "--strict", "--check"]
    )
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(app, ["compile", str(write_recipe(offline_hub / "u")), "--strict", "--check"])
    assert refused.exit_code == 2
    assert "non-hermetic: dataset 'h' is a hub id without a pinned revision" in refused.output
    assert "--strict refuses" in refused.output


@pytest.mark.parametrize(
    ("dataset_path", "revision", "key", "line", "fragment"),
    [
        ("acme/absent", None, "data.datasets.h.path", 9, "hub dataset 'acme/absent' is not in the local"),
        ("acme/absent", REV, "data.datasets.h.path", 9, "hub dataset 'acme/absent' is not in the local"),
        (REPO_ID, "f" * 40, "data.datasets.h.revision", 10, f"revision '{'f' * 40}' of hub dataset"),
        (REPO_ID, "v2", "data.datasets.h.revision", 10, "revision 'v2' of hub dataset 'acme/tiny-sft'"),
    ],
)
def test_missing_dataset_or_revision_is_an_error_at_its_key(offline_hub, dataset_path, revision, key, line,
                                                            fragment):  # fmt: skip
    recipe = write_recipe(offline_hub / "r", dataset_path, revision)
    with pytest.raises(CompileError) as exc:
        compile_recipe(recipe)
    [diag] = [d for d in exc.value.diagnostics if d.code == "DATA004"]
    assert (diag.path, Path(diag.file).name, diag.line) == (key, "recipe.yaml", line)
    rendered = diag.render()
    assert rendered.startswith(f"{diag.file}:{line}:") and f"DATA004 {key}: {fragment}" in rendered
    assert f"huggingface-cli download --repo-type dataset {dataset_path}" in rendered
    if "revision" in key:
        assert f"cached: main, {REV}" in rendered  # what the cache does hold


def test_online_the_compile_machine_cache_is_not_consulted(offline_hub, monkeypatch):
    """Online, `tkc run` may use another machine's cache: an id absent here still compiles (non-hermetic)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    resolved = compile_recipe(write_recipe(offline_hub / "r", "acme/absent")).resolved
    assert resolved["datasets"]["h"]["source"] == "hub" and resolved["hermetic"] is False


def test_compiling_a_hub_dataset_imports_no_hub_library(offline_hub):
    recipe = write_recipe(offline_hub / "r", revision=REV)
    code = (
        "import sys\nfrom tkc.compiler.pipeline import compile_recipe\n"
        f"compile_recipe({str(recipe)!r})\n"
        "heavy = ('huggingface_hub', 'datasets', 'transformers', 'torch')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
