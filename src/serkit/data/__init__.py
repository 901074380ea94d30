"""Corpora, manifests, speaker-independent splits and datasets."""

from serkit.data.manifest import Manifest, read_manifest
from serkit.data.splits import Split, load_split

__all__ = ["Manifest", "read_manifest", "Split", "load_split"]
