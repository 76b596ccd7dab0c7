"""Config files as YAML: strict loading (duplicate keys are errors, odd scalars a clear
message), conversion into typed dataclasses (unknown keys are errors; every error names
the key path), and the shared error type. Used by the config and the web config."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(Exception):
    """A config problem; str() is the user-facing message, starting with the key path."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose documents are checked for duplicate mapping keys first (PyYAML
    keeps the last one silently; see _check_duplicates), and whose scalar constructors
    fail with a YAMLError rather than whatever Python raised (``2001-02-30`` looks like a
    timestamp and gives a ValueError, ``!!bool maybe`` a KeyError, ...)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError,
                OverflowError) as e:
            kind = str(node.tag).rsplit(":", 1)[-1]
            detail = f" ({e})" if type(e) is ValueError else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {describe(node.value)} as {kind}{detail}",
                node.start_mark) from None


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicates(loader: _StrictLoader, node: yaml.Node, path: str,
                      visited: set[int]) -> None:
    """Raises ConfigError naming the full key path of the first duplicate mapping key.

    Walks the composed node graph (aliases make it a graph, possibly cyclic) before
    construction, so the path is known. Non-scalar keys are left to the constructor,
    which rejects them as unhashable; merge keys (<<) are left to it as well.
    """
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                return
            if key_node.tag == _MERGE_TAG:
                key: Any = "<<"
            else:
                key = loader.construct_object(key_node)
                try:
                    hash(key)
                except TypeError:  # e.g. "? !!set" — the constructor reports it
                    return
            child = _join(path, _key_name(key))
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(f"{child}: duplicate key (line {line}, first at line "
                                  f"{first_line[key]})")
            first_line[key] = line
            _check_duplicates(loader, value_node, child, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(loader, item, f"{path}[{i}]", visited)


def _load_yaml(text: str) -> Any:
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(loader, node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str | None = None, *, context: bool = True) -> Any:
    """The YAML document in ``text`` ({} when blank), or a ConfigError
    "<source>: invalid YAML at line L, column C: <problem>" ("invalid YAML ..." when
    source is None). ``context`` leads the problem with PyYAML's context ("while
    scanning a quoted scalar, ..."). Duplicate keys raise _check_duplicates' ConfigError."""
    head = "invalid YAML" if source is None else f"{source}: invalid YAML"
    try:
        return _load_yaml(text) if text.strip() else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        said = [getattr(e, "context", None) if context else None, getattr(e, "problem", None)]
        problem = ", ".join(str(x) for x in said if x) or str(e)
        raise ConfigError(f"{head}{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{head}: nested too deeply") from None


def describe(value: Any) -> str:
    """A bad value as a config error shows it: null, true, a mapping, a list, or its repr
    (cut at 60 characters). One wording for every config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_name(key: Any) -> str:
    """A key as it goes into a message: odd ones (empty, line breaks) quoted."""
    text = str(key)
    return text if text and text.isprintable() else repr(key)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def read_text(path: str, cannot: str, what: str) -> str:
    """A UTF-8 file's text, or a ConfigError: "<cannot>: <reason>" / "<what> is not UTF-8"."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise ConfigError(f"{cannot}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text") from None


def _convert(tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path, meta)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices or isinstance(value, bool):
            raise ConfigError(
                f"{path}: expected one of {', '.join(choices)}, got {describe(value)}"
            )
        return value
    if origin is tuple:
        (item_tp, _) = get_args(tp)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {describe(value)}")
        return tuple(_convert(item_tp, v, f"{path}[{i}]", {}) for i, v in enumerate(value))
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {describe(value)}")
        return {_convert(key_tp, k, f"{path}[{describe(k)}]", {}):
                _convert(value_tp, v, f"{path}.{k}", {})
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {describe(value)}")
        return value
    if tp is int or tp is float:
        ok = isinstance(value, int) if tp is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            kind = "an integer" if tp is int else "a number"
            raise ConfigError(f"{path}: expected {kind}, got {describe(value)}")
        lo, hi = meta.get("min"), meta.get("max")
        # "not >=" rather than "<" so that NaN (.nan, or "nan" from the env) is rejected.
        if (lo is not None and not value >= lo) or (hi is not None and not value <= hi):
            raise ConfigError(f"{path}: expected a value from {lo} to {hi}, got {value}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {describe(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # programming error


def build(cls: type[Any], data: Any, path: str) -> Any:
    """The dataclass ``cls`` built from ``data`` (a mapping; None: all defaults), every
    field converted to its annotated type; ConfigError names the key path under ``path``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {describe(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{_join(path, _key_name(key))}: unknown key (known keys: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name), f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: required key is missing")
    return cls(**kwargs)
