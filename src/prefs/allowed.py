"""What a value may be, in words: what a validation error adds so it names the allowed values.

msgspec says what is wrong ("Invalid enum value", "Expected `int` >= 30"); a client also needs
what would be right. This reads it from the declared types themselves, so the words never drift
from the rules: a field's own description (``Meta(description=…)``) when it has one, otherwise
its literal values, ranges and lengths.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec.inspect as inspect

from prefs.text import NAME, SINGLE_LINE

_STEP = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[[^\]]*\]")
_described: dict[tuple[Any, str], str | None] = {}
# how an error about a map's key (msgspec: "... - at `key` in `$.attributes`") begins its message
ABOUT_A_NAME = "A name in it: "


def allowed(declared: Any, path: str) -> str | None:
    """In words, what the value at ``path`` (msgspec's error path after ``$``, e.g.
    ``fields[0]`` or ``product.sku``) of a ``declared`` body may be; None when unknown."""
    if (declared, path) not in _described:
        node: Any = inspect.type_info(declared)
        for match in _STEP.finditer(path):
            node = _child(node, match.group(1), match.group(2))
            if node is None:
                break
        _described[declared, path] = None if node is None else words(node)
    return _described[declared, path]


def allowed_names(declared: Any, path: str) -> str | None:
    """In words, what the names (keys) of the map at ``path`` of a ``declared`` body may be."""
    node: Any = inspect.type_info(declared)
    for match in _STEP.finditer(path):
        node = _child(node, match.group(1), match.group(2))
        if node is None:
            return None
    while isinstance(node, inspect.Metadata | inspect.UnionType):
        node = (
            node.type
            if isinstance(node, inspect.Metadata)
            else next((m for m in node.types if not isinstance(m, inspect.NoneType)), None)
        )
    return f"names, each {words(node.key_type)}" if isinstance(node, inspect.DictType) else None


def _child(node: Any, field: str | None, index: str | None) -> Any:
    if isinstance(node, inspect.Metadata):
        node = node.type
    if isinstance(node, inspect.UnionType):
        found = (_child(member, field, index) for member in node.types)
        return next((child for child in found if child is not None), None)
    if isinstance(node, inspect.StructType) and field is not None:
        return next((f.type for f in node.fields if f.encode_name == field), None)
    if isinstance(node, inspect.ListType | inspect.SetType | inspect.VarTupleType):
        return node.item_type if index is not None else None
    if isinstance(node, inspect.DictType) and field is None and index is None:
        return node.value_type
    return None


def words(node: Any) -> str:
    """A type (msgspec.inspect) in words."""
    if isinstance(node, inspect.Metadata):
        description = (node.extra_json_schema or {}).get("description")
        return description if description else words(node.type)
    if isinstance(node, inspect.UnionType):
        members = [
            words(member) for member in node.types if not isinstance(member, inspect.NoneType)
        ]
        described = any(isinstance(member, inspect.Metadata) for member in node.types)
        nullable = not described and any(isinstance(m, inspect.NoneType) for m in node.types)
        return " or ".join(members + (["null"] if nullable else []))
    if isinstance(node, inspect.LiteralType):
        values = ", ".join(f"`{value}`" for value in node.values)
        return f"one of {values}" if len(node.values) > 1 else values
    if isinstance(node, inspect.IntType):
        return whole_number(node.ge, node.le)
    if isinstance(node, inspect.StrType):
        length = _length(node.min_length, node.max_length, "characters")
        if node.pattern == NAME:
            return f"{length.strip()}: a lower-case letter, then lower-case letters, digits or `_`"
        line = " on one line" if node.pattern == SINGLE_LINE else ""
        return "text" + length + line
    if isinstance(node, inspect.ListType | inspect.SetType | inspect.VarTupleType):
        count = _length(node.min_length, node.max_length, "items")
        return f"a list{count}, each {words(node.item_type)}"
    if isinstance(node, inspect.DictType):
        return "an object" + _length(node.min_length, node.max_length, "entries")
    if isinstance(node, inspect.StructType):
        names = ", ".join(
            f"`{f.encode_name}`" + ("" if f.required else " (optional)") for f in node.fields
        )
        return f"an object with {names}"
    return _SIMPLE.get(type(node), "a value of the documented type")


_SIMPLE: dict[type, str] = {
    inspect.BoolType: "true or false",
    inspect.DateType: "a date (YYYY-MM-DD)",
    inspect.DateTimeType: "a date and time with its offset (RFC 3339)",
    inspect.UUIDType: "an id (UUID)",
    inspect.FloatType: "a number",
    inspect.NoneType: "null",
}


def whole_number(low: int | None, high: int | None) -> str:
    """An integer between optional bounds, in words."""
    return "a whole number" + _range(low, high)


def _range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    return f" of at most {high}" if high is not None else ""


def _length(low: int | None, high: int | None, unit: str) -> str:
    if low is not None and high is not None:
        return f" of {low} to {high} {unit}" if low != high else f" of {low} {unit}"
    if high is not None:
        return f" of at most {high} {unit}"
    return f" of at least {low} {unit}" if low is not None else ""
