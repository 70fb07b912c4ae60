"""Safe YAML loading that remembers where every value came from.

Promises:
- only plain data (mappings, sequences, scalars) is built; no Python objects;
- aliases and anchors are refused as they are read, so an alias bomb costs nothing;
- duplicate keys in a mapping are an error, not a silent overwrite;
- every key and value has a (line, col), 1-based, for compiler-style messages;
- input above ``MAX_BYTES`` is refused before parsing, and nesting deeper than ``MAX_DEPTH``
  is refused rather than recursed into;
- a key is the text its author wrote (``on:`` stays ``"on"``, ``1:`` is ``"1"``), and a date
  stays the string it was written as, so every value is plain JSON data;
- every failure is a ``YamlError`` with a 1-based position where one is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64

Path_ = tuple[str | int, ...]


@dataclass
class Located:
    """The data of a YAML document and a map from each value's path to its position."""

    data: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_) -> tuple[int, int] | None:
        """The position of the value at ``path``, or of its nearest located ancestor."""
        p = tuple(path)
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.positions.get((), None)

    def where_key(self, path: Path_) -> tuple[int, int] | None:
        return self.key_positions.get(tuple(path)) or self.where(path)


class YamlError(Exception):
    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        self.message = message
        self.line = line
        self.col = col
        super().__init__(message)


class _NoAliasLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        where = _mark(event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            raise YamlError(f"YAML anchors and aliases are not allowed in agentctl files (found "
                            f"*{event.anchor}); write the value out", *where)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise YamlError(f"YAML anchors and aliases are not allowed in agentctl files (found "
                            f"&{anchor}); write the value out", *where)
        # Refuse deep nesting here, before PyYAML's recursive composer can run out of stack.
        if self._depth >= MAX_DEPTH:
            raise YamlError(f"values are nested more than {MAX_DEPTH} levels deep", *where)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_CLoader: Any = getattr(yaml, "CSafeLoader", None) if yaml.__with_libyaml__ else None


def _mark(mark: Any) -> tuple[int | None, int | None]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (None, None)


def _pos(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _build(node: yaml.Node, path: Path_, out: Located, ctor: yaml.constructor.SafeConstructor) -> Any:
    out.positions[path] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlError("YAML merge keys (<<) are not allowed", *_pos(key_node))
            if not isinstance(key_node, yaml.ScalarNode):
                hint = ""
                if isinstance(key_node, yaml.MappingNode) and key_node.flow_style:
                    hint = " (an unquoted '{{' opens a nested mapping: quote template text)"
                raise YamlError(f"mapping keys must be plain scalars{hint}", *_pos(key_node))
            key = ctor.construct_object(key_node)
            # YAML 1.1 reads `on:` as True and `1:` as an int; keep what the author wrote.
            skey = key if isinstance(key, str) else key_node.value
            if skey in result:
                line, col = _pos(key_node)
                first = out.key_positions.get((*path, skey))
                was = f" (first defined at line {first[0]})" if first else ""
                raise YamlError(f"duplicate key '{skey}'{was}", line, col)
            out.key_positions[(*path, skey)] = _pos(key_node)
            result[skey] = _build(value_node, (*path, skey), out, ctor)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), out, ctor) for i, item in enumerate(node.value)]
    if node.tag == "tag:yaml.org,2002:timestamp":
        # A date is data, not a datetime: keep the text so that it serialises as written.
        return node.value
    value = ctor.construct_object(node)
    if isinstance(value, bytes):
        raise YamlError("binary values (!!binary) are not allowed", *_pos(node))
    return value


def load(text: str | bytes) -> Located:
    """Parse one YAML document. Raises YamlError with a 1-based position."""
    if isinstance(text, bytes):
        raw: bytes = text
        if len(raw) > MAX_BYTES:
            raise YamlError(f"file is larger than {MAX_BYTES // 1024} KiB; refusing to parse it", 1, 1)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise YamlError(f"file is not valid UTF-8 (byte {e.start})", line, 1) from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlError(f"file is larger than {MAX_BYTES // 1024} KiB; refusing to parse it", 1, 1)
    if _CLoader is not None:
        fast = _load_fast(text)
        if fast is not None:
            return fast
    return _load_python(text)


def _load_fast(text: str) -> Located | None:
    """libyaml, when PyYAML has it: about five times faster on a large file.

    A first pass over the events refuses anchors, aliases and deep nesting before anything is
    composed (libyaml's composer recurses in C, where no recursion limit applies). On any
    other problem this returns None, and the pure-Python loader reads the file again, so that
    an error says the same thing, at the same place, with or without libyaml.
    """
    assert _CLoader is not None
    try:
        loader = _CLoader(text)
        try:
            depth = 0
            while loader.check_event():
                event = loader.get_event()
                if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                    return None  # the Python loader words the refusal
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                    if depth > MAX_DEPTH:
                        return None
                elif isinstance(event, yaml.CollectionEndEvent):
                    depth -= 1
        finally:
            loader.dispose()
        loader = _CLoader(text)
        try:
            out = Located(data=None)
            node = loader.get_single_node()
            if node is not None:
                out.data = _build(node, (), out, loader)
            return out
        finally:
            loader.dispose()
    except YamlError:
        raise
    except (yaml.YAMLError, UnicodeError, RecursionError):
        return None


def _load_python(text: str) -> Located:
    try:
        loader = _NoAliasLoader(text)
    except yaml.reader.ReaderError as e:
        raise _reader_error(e, text) from None
    out = Located(data=None)
    try:
        node = loader.get_single_node()
        if node is None:
            return out
        out.data = _build(node, (), out, loader)
        return out
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if e.problem and e.context:
            # "expected X (while parsing Y)"; "expected a single document but found another"
            if e.context.startswith("while"):
                msg = f"{e.problem} ({e.context})"
            else:
                msg = f"{e.context} {e.problem}"
        else:
            msg = e.problem or e.context or "invalid YAML"
        if mark is not None:
            raise YamlError(f"invalid YAML: {msg}", mark.line + 1, mark.column + 1) from None
        raise YamlError(f"invalid YAML: {msg}") from None
    except yaml.reader.ReaderError as e:
        raise _reader_error(e, text) from None
    except yaml.YAMLError as e:
        raise YamlError(f"invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise YamlError("YAML is nested too deeply") from None
    finally:
        loader.dispose()


def _reader_error(e: yaml.reader.ReaderError, text: str) -> YamlError:
    """PyYAML's reader reports an offset; turn it into a line and column."""
    pos = e.position if isinstance(e.position, int) else 0
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return YamlError(f"control character U+{e.character:04X} is not allowed in YAML "
                     "(write it as an escape in a double-quoted string)", line, col)
