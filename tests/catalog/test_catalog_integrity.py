"""The catalog's claims hold together: every pinned template has vendor parity data, every family's templates exist,
every family says how it is verified, and mixture-of-experts families carry their router settings."""

import json
from pathlib import Path

import pytest

from tkc.catalog.registry import families, templates

_HERE = Path(__file__).parent
# the vendor strings the parity tests render (test_vendor_templates.py): the first entries in one file, later ones
# one file per template
VENDOR = dict(json.loads((_HERE / "vendor_templates.json").read_text(encoding="utf-8"))["templates"])
VENDOR |= {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((_HERE / "vendor").glob("*.json"))}
# what a template without a vendor block must say instead
UNPINNED = ("written by tkc", "no pinned public copy")
# transformers config keys that hold the number of experts: a config declaring one is a mixture of experts
# (Hunyuan-MoE's default says 1)
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def test_pinned_templates_and_parity_data_are_the_same_set():
    """A vendor block is a claim of byte equality: test_vendor_templates.py checks it against the vendor string,
    so a template has a vendor block exactly when it has parity data (vendor_templates.json or vendor/<id>.json)."""
    pinned = {tid for tid, meta in templates().items() if meta.vendor is not None}
    assert sorted(pinned - set(VENDOR)) == [], "vendor block without parity data"
    assert sorted(set(VENDOR) - pinned) == [], "parity data without a vendor block in the template's yaml"


@pytest.mark.parametrize("template_id", sorted(VENDOR))
def test_vendor_block_names_a_source_of_the_parity_data(template_id):
    vendor = templates()[template_id].vendor
    assert vendor is not None
    sources = {(s["repo"], s["path"], s["commit"]) for s in VENDOR[template_id]["sources"]}
    assert (vendor.repo, vendor.path, vendor.commit) in sources
    assert vendor.model == VENDOR[template_id]["model"].split(" ")[0]


def test_unpinned_templates_say_why():
    bad = {tid: meta.source for tid, meta in templates().items()
           if meta.vendor is None and not any(word in meta.source for word in UNPINNED)}
    assert bad == {}, f"a template without a vendor block says {UNPINNED[0]!r} or {UNPINNED[1]!r} in its source"


@pytest.mark.parametrize("family_id", sorted(families()))
def test_family_templates_exist(family_id):
    fam, known = families()[family_id], templates()
    wanted = {fam.template} | {ref.template for ref in fam.hub_models.values()}
    assert sorted(wanted - set(known)) == []
    assert fam.model_types and fam.architectures and fam.lora_targets and fam.layers_path


@pytest.mark.parametrize("family_id", sorted(families()))
def test_family_says_how_it_is_verified(family_id):
    verified = families()[family_id].verified
    assert verified.smoke or verified.note.strip(), "verified.smoke (a transformers class) or a note saying why not"


@pytest.mark.parametrize("family_id", sorted(families()))
def test_mixture_of_experts_families_have_a_moe_block(family_id):
    """MoE is read from transformers' own default config for the family's model_type, not from names."""
    fam = families()[family_id]
    if fam.verified.smoke is None:
        pytest.skip("remote-code architecture: no transformers config to read")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(fam.model_types[0])
    text = getattr(config, "text_config", None) or config
    declared = {key: getattr(text, key) for key in EXPERT_KEYS if hasattr(text, key)}
    assert (fam.moe is not None) == bool(declared), f"config declares experts {declared}; moe block: {fam.moe}"
