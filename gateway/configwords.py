"""Plain sentences for configuration mistakes, in place of the validator's own English.

The commune's IT person reads these on a phone over SSH: "must be a whole number", not
"Input should be a valid integer, unable to parse string as an integer", and never a
regular expression. A misspelt key gets the nearest real one ("did you mean power_on?").
:func:`plain_problem` turns one pydantic error into the key it concerns and that sentence;
:mod:`gateway.config` uses it for every problem it reports.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["TIME_OF_DAY", "did_you_mean", "plain_problem"]

TIME_OF_DAY = (
    "must be a time HH:MM from 00:00 to 23:59, or sunrise/sunset with an optional "
    "+Nm/-Nm (e.g. sunset+10m)"
)
_NAME_32 = "must be 1 to 32 lowercase letters, digits, '-' or '_'"
_NAME_64 = "must be 1 to 64 lowercase letters, digits, '-' or '_'"

# What a value of each patterned key looks like, said in words (by the key's last part).
_FORMS: dict[str, str] = {
    "on": TIME_OF_DAY,
    "off": TIME_OF_DAY,
    "at": TIME_OF_DAY,
    "quiet_hours": "must be a span HH:MM-HH:MM from 00:00 to 23:59 (e.g. 21:30-05:30)",
    "url": "must start with http:// or https://",
    "chime": _NAME_64,
    "relay": _NAME_32,
    "interlock": _NAME_32,
    "[key]": _NAME_32,
}

_SIMPLE: dict[str, str] = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number, without a fraction",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text in quotes",
    "list_type": "must be a list in [ ]",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "path_type": "must be a file path in quotes",
    "finite_number": "must be a finite number",
}


def did_you_mean(word: str, known: Sequence[str]) -> str:
    """`` (did you mean power_on?)`` when a known word is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _unwrap(annotation: object) -> object:
    """Strip ``Annotated`` and ``X | None`` down to the one type that matters."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _step(annotation: object, part: str) -> object:
    """The annotation one level down ``part`` of an error's location, or None."""
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part)
        return None if field is None else field.annotation
    if origin in (list, dict, Sequence, Mapping):
        return get_args(annotation)[-1] if part != "[key]" else str
    if origin in (Union, types.UnionType):
        # A discriminated union puts the tag ("tcp") into the location.
        for choice in get_args(annotation):
            member = _unwrap(choice)
            kind = getattr(member, "model_fields", {}).get("kind")
            if kind is not None and part in get_args(_unwrap(kind.annotation)):
                return member
    return None


def _annotation_at(root: type[BaseModel], loc: Sequence[str]) -> object:
    annotation: object = root
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    return annotation


def _known_keys(root: type[BaseModel], loc: Sequence[str]) -> list[str]:
    parent = _unwrap(_annotation_at(root, loc))
    if isinstance(parent, type) and issubclass(parent, BaseModel):
        return list(parent.model_fields)
    return []


def _choices(root: type[BaseModel], loc: Sequence[str], ctx: Mapping[str, Any]) -> list[str]:
    annotation = _unwrap(_annotation_at(root, loc))
    if get_origin(annotation) is Literal:
        return [str(choice) for choice in get_args(annotation)]
    expected = str(ctx.get("expected", ""))
    return [word.strip(" '") for word in expected.replace(" or ", ",").split(",") if word]


def _bound(kind: str, ctx: Mapping[str, Any]) -> str:
    words = {
        "greater_than_equal": ("ge", "must be {} or more"),
        "greater_than": ("gt", "must be more than {}"),
        "less_than_equal": ("le", "must be {} or less"),
        "less_than": ("lt", "must be less than {}"),
    }
    name, sentence = words[kind]
    return sentence.format(ctx.get(name))


def _length(kind: str, ctx: Mapping[str, Any]) -> str:
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"must be at least {least} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        least = ctx.get("min_length")
        return f"needs at least {least} {'entry' if least == 1 else 'entries'}"
    return f"may have at most {ctx.get('max_length')} entries"


def plain_problem(  # noqa: PLR0911 - one return per kind of mistake
    root: type[BaseModel], item: Mapping[str, Any]
) -> tuple[str, str]:
    """The dotted key and a plain sentence for one pydantic error of a ``root`` model."""
    loc = [str(part) for part in item["loc"]]
    kind = str(item["type"])
    ctx: Mapping[str, Any] = item.get("ctx") or {}
    shown = f" (got {item.get('input')!r})"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "[key]":
        # A table's name (``[relays.Yard]``): the name itself is the problem.
        return ".".join(loc[:-1]), f"this name {_NAME_32}"
    key = ".".join(loc)
    if kind == "extra_forbidden":
        return key, "unknown key" + did_you_mean(loc[-1], _known_keys(root, loc[:-1]))
    if kind == "missing":
        return key, "required key is missing"
    if kind in {"value_error", "assertion_error"}:
        return key, str(item["msg"]).removeprefix("Value error, ").removeprefix(
            "Assertion failed, "
        )
    if kind in _SIMPLE:
        return key, _SIMPLE[kind] + shown
    if kind in {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}:
        return key, _bound(kind, ctx) + shown
    if kind in {"string_too_short", "string_too_long", "too_short", "too_long"}:
        return key, _length(kind, ctx) + shown
    if kind == "union_tag_invalid":
        tags = [word.strip(" '") for word in str(ctx.get("expected_tags", "")).split(",")]
        tag = str(ctx.get("tag", ""))
        return f"{key}.kind", f"must be one of {', '.join(tags)} (got {tag!r})" + did_you_mean(
            tag, tags
        )
    if kind in {"literal_error", "enum"}:
        choices = _choices(root, loc, ctx)
        sentence = "must be one of " + ", ".join(choices) if choices else "is not a known value"
        value = item.get("input")
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        return key, sentence + shown + hint
    if kind == "string_pattern_mismatch":
        named = next((part for part in reversed(loc) if not part.isdigit()), "")
        return key, _FORMS.get(named, "is not in the expected form") + shown
    return key, "is not a valid value" + shown
