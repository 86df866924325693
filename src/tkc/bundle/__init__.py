"""The bundle contract: canonical JSON, hashes, manifest, atomic writes, verification and diff."""

from tkc.bundle.io import check_bundle, read_manifest, verify_bundle, write_bundle

__all__ = ["check_bundle", "read_manifest", "verify_bundle", "write_bundle"]
