"""Read a policy file, validate it, and say exactly where it is wrong.

Validation errors from pydantic carry a location such as `("limits", "per_refund", "usd", "[key]")`;
the file is also composed into YAML nodes, which know their line, so each location is walked down the
node tree to the line of the offending key or value.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import pathlib
import re
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from refund_mcp.policy.schema import Policy

_CURRENCY_KEY = re.compile(r"\.[A-Z]{3}$")  # where an error sits on a currency amount
# libyaml's loader when PyYAML was built with it: the same nodes and marks, ten times faster.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_KEY_TAG = "tag:yaml.org,2002:merge"
_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy with where it came from. `version` identifies the exact file content."""

    policy: Policy
    version: str  # first 16 hex digits of the SHA-256 of the file bytes
    path: str
    text: str  # the raw YAML, for showing the effective policy


class PolicyFileError(Exception):
    """A policy file that cannot be used: unreadable, not YAML, or not a valid policy."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


def load_policy(path: str | os.PathLike[str]) -> LoadedPolicy:
    """Read and validate a policy file. Raises PolicyFileError naming the line of the first problem."""
    shown = os.fspath(path)
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise PolicyFileError(shown, None, f"cannot read the policy file: {exc.strerror or exc}") from exc
    return parse_policy(data, shown)


def parse_policy(data: bytes | str, path: str = "<string>") -> LoadedPolicy:
    """Validate policy YAML given as bytes or text; `path` is only used in messages.

    Raises PolicyFileError naming the line of the first problem.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyFileError(path, None, f"the policy file is not UTF-8 text ({exc.reason})") from exc
    root, document = _parse_yaml(text, path)
    if root is None:
        raise PolicyFileError(path, 1, "the policy file is empty; it needs at least `version: 1`")
    if not isinstance(root, yaml.MappingNode):
        raise PolicyFileError(path, _line(root), "the policy file must be a mapping of keys such as `version: 1`")
    _refuse_duplicate_keys(root, path)
    try:
        policy = Policy.model_validate(document)
    except ValidationError as exc:
        raise _file_error(exc, root, path) from None
    version = hashlib.sha256(raw).hexdigest()[:16]
    return LoadedPolicy(policy=policy, version=version, path=path, text=text)


def default_policy_path() -> pathlib.Path:
    """The default policy shipped inside the package."""
    return pathlib.Path(__file__).resolve().parent.parent / "policies" / "default.yaml"


def policy_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the policy file, for editors and `refund-mcp policy schema`."""
    schema: dict[str, Any] = _drop_nullable(Policy.model_json_schema())
    schema["$schema"] = _JSON_SCHEMA_DIALECT
    schema["title"] = "refund-mcp policy"
    return schema


def render_json_schema() -> str:
    """The JSON Schema as the text stored in policies/schema.json (sorted keys, trailing newline)."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n"


def _parse_yaml(text: str, path: str) -> tuple[yaml.Node | None, Any]:
    # One pass gives both the node tree (for lines) and the plain data (for validation).
    loader = _SafeLoader(text)
    try:
        root = loader.get_single_node()
        document = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or "syntax error"
        if exc.context:
            # e.g. an unclosed "[": the problem shows where the parser gave up, the context where it began.
            started = exc.context_mark.line + 1 if exc.context_mark is not None else None
            where = f" (from line {started})" if started is not None and started != line else ""
            problem = f"{exc.context}{where}: {problem}"
        raise PolicyFileError(path, line, f"not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyFileError(path, None, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return root, document


def _refuse_duplicate_keys(node: yaml.Node, path: str) -> None:
    # PyYAML keeps the last of two equal keys; in a policy that silently drops a whole section.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag != _MERGE_KEY_TAG and isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise PolicyFileError(path, _line(key), f"key {key.value!r} appears twice in the same mapping")
                seen.add(key.value)
            _refuse_duplicate_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, path)


def _file_error(exc: ValidationError, root: yaml.Node, path: str) -> PolicyFileError:
    problems = []
    for error in exc.errors(include_url=False):
        line, where = _locate(root, error["loc"], missing=error["type"] == "missing")
        problems.append((line, where, _describe(error, where)))
    # Report the problem nearest the top of the file: it is the one a reader meets first.
    problems.sort(key=lambda problem: problem[0])
    line, where, message = problems[0]
    reason = f"{where}: {message}" if where else message
    if len(problems) > 1:
        others = len(problems) - 1
        reason += f" (and {others} more problem{'s' if others > 1 else ''})"
    return PolicyFileError(path, line, reason)


def _locate(root: yaml.Node, loc: tuple[int | str, ...], *, missing: bool) -> tuple[int, str]:
    """Walk a pydantic error location down the YAML nodes: (line, dotted key path).

    The line is that of the key (or list item) last reached, so a nested block is reported where it
    is introduced rather than on its first inner line.
    """
    node, line = root, _line(root)
    parts: list[str] = []
    for position, step in enumerate(loc):
        if step == "[key]":
            continue  # the error is about the key itself, whose line is already the one reached
        found = _child(node, step)
        if found is None:
            if missing and position == len(loc) - 1:
                parts.append(f".{step}")  # a required key: reported on the line of its parent
            # Otherwise a validator tag such as "function-after[...]": not part of the file's shape.
            continue
        parts.append(f"[{step}]" if isinstance(node, yaml.SequenceNode) else f".{step}")
        node, line = found
    dotted = "".join(parts).lstrip(".")
    return line, dotted


def _child(node: yaml.Node, step: int | str) -> tuple[yaml.Node, int] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(step):
                return value, _line(key)
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        item = node.value[step]
        return item, _line(item)
    return None


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _describe(error: Any, where: str) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = where.rsplit(".", 1)[-1]
        allowed = sorted(_fields_at(error["loc"][:-1]))
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        return f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
    if kind == "missing":
        return "is required"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind in ("int_type", "int_parsing", "int_from_float") and _CURRENCY_KEY.search(where):
        message += " (amounts are whole numbers of minor units, e.g. 2999 for USD 29.99)"
    if kind == "string_type" and "[key]" in error["loc"]:
        message += "; put the key in quotes"  # YAML reads an unquoted 123 or yes as a number or boolean
    return message


def _fields_at(loc: tuple[int | str, ...]) -> set[str]:
    """The keys the schema allows in the mapping at `loc`, found by following the models' annotations."""
    current: Any = Policy
    for step in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(step))
            if field is None:
                return set()  # a validator tag, not a key
            current = field.annotation
        elif get_origin(current) is list:
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return set()
    current = _unwrap(current)
    return set(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else set()


def _unwrap(annotation: Any) -> Any:
    # Annotated[X, ...] -> X and X | None -> X, so only models and containers remain.
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):
            options = [option for option in get_args(annotation) if option is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _drop_nullable(schema: Any) -> Any:
    # Optional fields appear as `anyOf: [X, null]`, but the loader refuses explicit nulls; the schema
    # should say what the loader accepts.
    if isinstance(schema, dict):
        options = schema.get("anyOf")
        nullable_by_default = "default" in schema and schema["default"] is None
        if isinstance(options, list) and {"type": "null"} in options and nullable_by_default:
            rest = [option for option in options if option != {"type": "null"}]
            merged = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
            if len(rest) == 1:
                merged.update(rest[0])
            else:
                merged["anyOf"] = rest
            schema = merged
        return {key: _drop_nullable(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_drop_nullable(item) for item in schema]
    return schema
