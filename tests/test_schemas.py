"""The published JSON Schemas match the models, so docs/schemas/ never goes stale."""

from __future__ import annotations

import pytest

from gateway.schemas import SCHEMAS, render
from tests.conftest import REPO


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_schema_matches_the_model(name: str) -> None:
    """docs/schemas/NAME.schema.json is what `make schemas` writes today."""
    committed = (REPO / "docs" / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")
    assert committed == render(SCHEMAS[name]), "run `make schemas` and commit the result"
