"""Every recipe and experiment YAML shipped in configs/ validates: a typo there is a user's first error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path):
    from serkit.analysis.recovery import load_recovery
    from serkit.config import load_recipe
    from serkit.dimensional.experiment import load_dimensional_grid
    from serkit.transfer.experiment import load_transfer_grid
    from serkit.unlearning.experiment import load_grid

    raw = yaml.safe_load(path.read_text())
    if "backbones" in raw:
        load_grid(path)
    elif "upstream" in raw:
        load_transfer_grid(path)
    elif "corpora" in raw:
        load_recovery(path)
    elif "text_encoders" in raw:
        load_dimensional_grid(path)
    else:
        recipe = load_recipe(path)
        assert recipe.output_dir and recipe.data.split


def test_every_config_is_checked():
    assert len(CONFIGS) >= 12
