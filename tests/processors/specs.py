"""The processors' official OpenAPI specs (subsets in `<repo>/../shared/specs`) as validators.

OpenAPI schemas are JSON Schema with a few twists; handled minimally here:
- 3.0 `nullable: true` becomes a `null` type (or an `anyOf` with null around a `$ref`);
- `$ref`s resolve inside the spec document (one `referencing` resource per spec);
- `format`, `example`, `readOnly` and `x-*` are annotations and are not asserted.
Every spec is validated with the 2020-12 dialect: the subsets use no keyword whose meaning
changed between the drafts (checked: no boolean `exclusiveMinimum`).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_REPO = Path(__file__).resolve().parents[2]
# Beside the repository (`<repo>/../shared/specs`), or beside the directory holding a worktree of it.
SPECS_DIR = next(
    (parent / "shared" / "specs" for parent in _REPO.parents if (parent / "shared" / "specs").is_dir()),
    _REPO.parent / "shared" / "specs",
)


def spec_path(name: str) -> Path:
    """The spec file, or skip the calling test with the reason."""
    path = SPECS_DIR / name
    if not path.is_file():
        pytest.skip(f"official spec {name} not found in {SPECS_DIR.resolve()} (the shared specs sit beside the repo)")
    return path


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _nullable(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        kind = converted.get("type")
        if isinstance(kind, str):
            converted["type"] = [kind, "null"]
            if "enum" in converted:
                converted["enum"] = [*converted["enum"], None]
        elif kind is None:
            converted = {"anyOf": [converted, {"type": "null"}]}
    return converted


class Spec:
    """One OpenAPI document: look up operations by method and concrete path, validate bodies."""

    URI = "urn:refund-mcp:spec"

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = _nullable(document)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self._registry: Registry = Registry().with_resource(self.URI, resource)
        self._templates = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"), template)
            for template in self.document["paths"]
        ]

    def template_for(self, path: str, *, strip_prefix: str = "") -> str | None:
        path = path.removeprefix(strip_prefix)
        matches = [template for pattern, template in self._templates if pattern.match(path)]
        # The most literal template wins (".../captures/{id}/refund" over ".../captures/{id}").
        return max(matches, key=lambda t: len(t.replace("{", "").split("/")), default=None)

    def validator(self, *pointer: str) -> Draft202012Validator:
        fragment = "/".join(quote(part.replace("~", "~0").replace("/", "~1"), safe="~") for part in pointer)
        return Draft202012Validator({"$ref": f"{self.URI}#/{fragment}"}, registry=self._registry)

    def schema_validator(self, name: str) -> Draft202012Validator:
        return self.validator("components", "schemas", name)

    def request_validator(self, template: str, method: str) -> Draft202012Validator:
        return self.validator("paths", template, method.lower(), "requestBody", "content", "application/json", "schema")

    def response_validator(self, template: str, method: str, status: str) -> Draft202012Validator | None:
        responses = self.document["paths"][template][method.lower()]["responses"]
        content = responses.get(status, {}).get("content", {})
        if "application/json" not in content:
            return None
        return self.validator(
            "paths", template, method.lower(), "responses", status, "content", "application/json", "schema"
        )


@functools.cache
def load_spec(name: str) -> Spec:
    return Spec(json.loads(spec_path(name).read_text()))


def assert_valid(validator: Draft202012Validator, instance: Any, what: str) -> None:
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    details = "\n".join(f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:10])
    assert not errors, f"{what} does not match the official schema:\n{details}\ninstance: {json.dumps(instance)[:2000]}"
