"""Generate docs/config.md from the config schema, so the reference cannot drift from the code.

    .venv/bin/python scripts/gen_config_doc.py > docs/config.md

tests/unit/test_config_doc.py fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from lineguard.config import LineConfig

HEADER = """# Line configuration reference (`line.yaml`)

Generated from the schema by `scripts/gen_config_doc.py`; do not edit by hand. One YAML file, one
strict schema: unknown keys and out-of-range values are refused, and `lineguard check-config FILE`
reports each problem with its YAML line. Units are part of the field names (`_ms`, `_us`, `_db`).
Sections whose back-end is chosen by a `type:` (source, PLC transport) or `backend:` key (engine)
show each variant. An annotated example is `deploy/line.example.yaml`.
"""


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "min length", "max_length": "max length",
           "pattern": "pattern"}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType) or origin in (list, tuple, dict):
        out: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            out += _models_in(arg)
        return out
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    for junk in ("typing.", "pathlib.", "lineguard.", "<class '", "'>"):
        text = text.replace(junk, "")
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        return f"`{field.default!r}`" if not isinstance(field.default, BaseModel) else "(section defaults)"
    if field.default_factory is not None:
        return "(section defaults)"
    return "**required**"


def _section(model: type[BaseModel], path: str, out: list[str], seen: set[tuple[str, str]]) -> None:
    key = (path, model.__name__)
    if key in seen:
        return
    seen.add(key)
    doc = (model.__doc__ or "").strip().splitlines()
    out.append(f"\n## `{path}` ({model.__name__})\n")
    if doc:
        out.append(doc[0] + "\n")
    out.append("| key | type | default | meaning |\n|---|---|---|---|")
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        bounds = [f"{sym} {getattr(m, attr)}" for m in field.metadata for attr, sym in _BOUNDS.items()
                  if getattr(m, attr, None) is not None]
        desc = (field.description or "").replace("|", "\\|") + (f" ({', '.join(bounds)})" if bounds else "")
        out.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        nested += [(f"{path}.{name}", m) for m in _models_in(field.annotation)]
    for sub_path, sub in nested:
        _section(sub, sub_path, out, seen)


def main() -> int:
    out = [HEADER]
    _section(LineConfig, "(top level)", out, set())
    sys.stdout.write("\n".join(out).replace("\n## `(top level).", "\n## `") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
