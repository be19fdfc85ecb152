"""The uplink's message shapes as pydantic models, for docs and for checking payloads.

``make schemas`` writes their JSON Schemas to ``docs/schemas/``; a test keeps the files
in step with these models, and the link tests validate what the gateway really publishes
against them. The payloads themselves are built without these models (the batch body is
joined from stored JSON text, for speed); the models describe, they do not build.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SCHEMAS", "Batch", "OfflineStatus", "OnlineStatus", "Record", "write_schemas"]


class Record(BaseModel):
    """One record in a batch: its seq and ts, then the fields of its kind."""

    model_config = ConfigDict(extra="allow")

    seq: int = Field(ge=1, description="Per-stream counter; only grows, also across restarts.")
    ts: str = Field(description="RFC 3339 with offset, when the record was made.")


class Batch(BaseModel):
    """A message on ``P/ID/events``, ``P/ID/logs`` or ``P/ID/telemetry``."""

    model_config = ConfigDict(extra="forbid")

    gateway: str
    stream: Literal["events", "logs", "telemetry"]
    epoch: int = Field(
        ge=1,
        description="Numbering epoch: goes up when the outbox had to be replaced, so "
        "seq may start again from 1. Deduplicate on (gateway, stream, epoch, seq).",
    )
    records: list[Record] = Field(min_length=1, description="Consecutive seqs, ascending.")


class OnlineStatus(BaseModel):
    """The retained ``P/ID/status`` while the gateway is connected."""

    model_config = ConfigDict(extra="allow")

    online: Literal[True]
    ts: str
    version: str
    started_at: str
    boot_count: int = Field(ge=1)
    clock_synced: bool
    outbox: int = Field(ge=0, description="Records waiting in the outbox at connect time.")


class OfflineStatus(BaseModel):
    """The retained ``P/ID/status`` after the will fired or a clean stop."""

    model_config = ConfigDict(extra="allow")

    online: Literal[False]
    ts: str | None = None


SCHEMAS: dict[str, type[BaseModel]] = {
    "batch": Batch,
    "status-online": OnlineStatus,
    "status-offline": OfflineStatus,
}


def render(model: type[BaseModel]) -> str:
    """The JSON Schema text of ``model``, as committed under docs/schemas/."""
    schema: dict[str, Any] = model.model_json_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    """Write every schema to ``folder``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMAS.items():
        path = folder / f"{name}.schema.json"
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(written_path)
