"""Strict YAML loading that reports each validation error with its YAML line.

The only place configuration files are parsed. Environment variables are not read here: a config
is a file, so what runs on the line is what is in version control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from lineguard.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class ConfigProblem(ConfigError):
    """A config that failed validation; ``problems`` holds (line, dotted path, message)."""

    def __init__(self, path: str, problems: list[tuple[int | None, str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}:{ln if ln is not None else '?'}: {loc}: {msg}" for ln, loc, msg in problems]
        super().__init__(f"{len(problems)} problem(s) in {path}:\n" + "\n".join(lines))


def _line_of(doc: Any, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest node of ``loc`` that exists in the YAML document."""
    node, line = doc, None
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
        else:
            # pydantic inserts union tags (e.g. 'genicam') into loc; skip what is not in the doc
            continue
    if line is None and isinstance(doc, CommentedMap):
        return 1
    return line


def parse_yaml(text: str, path: str = "<config>") -> Any:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigProblem(path, [(line, "(yaml)", str(getattr(exc, "problem", exc)))]) from exc


def validate(model: type[M], doc: Any, path: str = "<config>") -> M:
    """Validate a parsed YAML document against ``model``; errors carry YAML lines."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigProblem(path, [(1, "(root)", "the config must be a mapping of sections")])
    try:
        return model.model_validate(_plain(doc))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] == "union_tag_invalid":  # point at the `type:` key, not the section
                loc = (*loc, str(err.get("ctx", {}).get("discriminator", "")).strip("'"))
            dotted = ".".join(str(p) for p in loc) or "(root)"
            problems.append((_line_of(doc, loc), dotted, err["msg"]))
        raise ConfigProblem(path, problems) from exc


def load_file(model: type[M], path: str | Path) -> M:
    return load_file_with_doc(model, path)[0]


def load_file_with_doc(model: type[M], path: str | Path) -> tuple[M, Any]:
    """The validated model and the parsed YAML document (for :func:`line_of` in later checks)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from exc
    doc = parse_yaml(text, str(p))
    return validate(model, doc, str(p)), doc


def line_of(doc: Any, loc: tuple[int | str, ...]) -> int | None:
    """1-based YAML line of a config field (or of its nearest ancestor present in the file)."""
    return _line_of(doc, loc)


def _plain(node: Any) -> Any:
    """ruamel's round-trip types -> plain dict/list (pydantic's strict checks then see real types)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node
