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

With libyaml, a document is built in one pass over the parser's events, and positions are
found only when a message asks for one (see ``Located``): a 650 KB pipeline loads in about
the time libyaml takes to parse it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64

Path_ = tuple[str | int, ...]

STR_TAG = "tag:yaml.org,2002:str"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
MERGE_TAG = "tag:yaml.org,2002:merge"


class Located:
    """The data of a YAML document, and where each of its keys and values was written.

    Positions come from the document's node tree. When the data was built straight from
    libyaml's events, that tree is composed the first time a position is asked for (only a
    diagnostic needs one), so loading a file without mistakes never pays for it.
    """

    def __init__(self, data: Any = None, *, root: yaml.Node | None = None,
                 text: str | None = None) -> None:
        self.data = data
        self._root = root
        self._text = text  # what to compose the tree from, when it is first needed
        self._keys: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = {}

    def where(self, path: Sequence[str | int]) -> tuple[int, int] | None:
        """The position of the value at ``path``, or of its nearest located ancestor."""
        node, _, _ = self._walk(path)
        return _pos(node) if node is not None else None

    def where_key(self, path: Sequence[str | int]) -> tuple[int, int] | None:
        """The position of the key that ends ``path``, or else as ``where``."""
        node, walked, key_node = self._walk(path)
        if key_node is not None and walked == len(path):
            return _pos(key_node)
        return _pos(node) if node is not None else None

    @property
    def positions(self) -> dict[Path_, tuple[int, int]]:
        """Every value's position, by path (``()`` is the document)."""
        return self._all()[0]

    @property
    def key_positions(self) -> dict[Path_, tuple[int, int]]:
        """Every mapping key's position, by the path of its value."""
        return self._all()[1]

    def _tree(self) -> yaml.Node | None:
        if self._root is None and self._text is not None:
            text, self._text = self._text, None
            self._root = _compose(text)
        return self._root

    def _mapping(self, node: MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        # A key of a loaded document is a scalar, and its text is its key (see _build).
        index = self._keys.get(id(node))
        if index is None:
            index = self._keys[id(node)] = {k.value: (k, v) for k, v in node.value}
        return index

    def _walk(self, path: Sequence[str | int]) -> tuple[yaml.Node | None, int, yaml.Node | None]:
        """The deepest node along ``path``, how many parts of it led there, and the key node
        of the last part when that part was a mapping key."""
        node = self._tree()
        key_node: yaml.Node | None = None
        if node is None:
            return None, 0, None
        for walked, part in enumerate(path):
            if isinstance(node, MappingNode) and isinstance(part, str):
                pair = self._mapping(node).get(part)
                if pair is None:
                    return node, walked, key_node
                key_node, node = pair
            elif (isinstance(node, SequenceNode) and type(part) is int
                  and 0 <= part < len(node.value)):
                key_node, node = None, node.value[part]
            else:
                return node, walked, key_node
        return node, len(path), key_node

    def _all(self) -> tuple[dict[Path_, tuple[int, int]], dict[Path_, tuple[int, int]]]:
        values: dict[Path_, tuple[int, int]] = {}
        keys: dict[Path_, tuple[int, int]] = {}
        root = self._tree()
        todo: list[tuple[Path_, yaml.Node]] = [((), root)] if root is not None else []
        while todo:
            path, node = todo.pop()
            values[path] = _pos(node)
            if isinstance(node, MappingNode):
                for k, v in node.value:
                    keys[(*path, k.value)] = _pos(k)
                    todo.append(((*path, k.value), v))
            elif isinstance(node, SequenceNode):
                todo += [((*path, i), item) for i, item in enumerate(node.value)]
        return values, keys


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


def _construct(ctor: yaml.constructor.SafeConstructor, node: yaml.Node) -> Any:
    """A scalar that is not a plain string: null, a boolean, a number, or an explicit tag."""
    try:
        return ctor.construct_object(node)
    except yaml.YAMLError:
        raise
    except Exception:  # e.g. `!!int abc`, `!!bool maybe`: PyYAML's constructors just fail
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise YamlError(f"invalid YAML: {node.value!r} is not a valid {tag}", *_pos(node)) from None


def _build(node: yaml.Node, ctor: yaml.constructor.SafeConstructor) -> Any:
    """The data of a composed node tree, refusing what agentctl files may not contain."""
    if isinstance(node, MappingNode):
        result: dict[Any, Any] = {}
        first: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == MERGE_TAG:
                raise YamlError("YAML merge keys (<<) are not allowed", *_pos(key_node))
            if not isinstance(key_node, ScalarNode):
                hint = ""
                if isinstance(key_node, MappingNode) and key_node.flow_style:
                    hint = " (an unquoted '{{' opens a nested mapping: quote template text)"
                raise YamlError(f"mapping keys must be plain scalars{hint}", *_pos(key_node))
            if key_node.tag not in (STR_TAG, TIMESTAMP_TAG):
                _construct(ctor, key_node)  # refuses a key it cannot read
            # YAML 1.1 reads `on:` as True and `1:` as an int; keep what the author wrote.
            skey = key_node.value
            if skey in result:
                line, col = _pos(key_node)
                raise YamlError(f"duplicate key '{skey}' (first defined at line "
                                f"{_pos(first[skey])[0]})", line, col)
            first[skey] = key_node
            result[skey] = _build(value_node, ctor)
        return result
    if isinstance(node, SequenceNode):
        return [_build(item, ctor) for item in node.value]
    if node.tag in (STR_TAG, TIMESTAMP_TAG):
        # A date is data, not a datetime: keep the text so that it serialises as written.
        return node.value
    value = _construct(ctor, node)
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
    elif len(text) > MAX_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlError(f"file is larger than {MAX_BYTES // 1024} KiB; refusing to parse it", 1, 1)
    if _CLoader is not None:
        fast = _load_fast(text)
        if fast is not None:
            return fast
    return _load_python(text)


class _Unusual(Exception):
    """Something in a document that the node builder words (a duplicate key, a merge key...)."""

    def __init__(self, depth: int = 0) -> None:
        super().__init__()
        self.depth = depth  # how many collections were open when it was found


_NO_KEY: Any = object()


def _load_fast(text: str) -> Located | None:
    """libyaml, when PyYAML has it: several times faster than the Python loader.

    The data is built in one pass over libyaml's events, refusing anchors, aliases and deep
    nesting as they come (no tree is composed, so nothing recurses). A mistake that
    ``_build`` words (a duplicate key, say) sends the document to it, once the rest of the
    events show nothing the Python loader would report first. On any other problem this
    returns None, and the pure-Python loader reads the file again, so that an error says the
    same thing, at the same place, with or without libyaml.
    """
    assert _CLoader is not None
    try:
        loader = _CLoader(text)
        try:
            done, data = _from_events(loader)
            if done:
                return Located(data, text=text)
            return None
        except _Unusual as e:
            if not _rest_is_plain(loader.get_event, e.depth):
                return None
        finally:
            loader.dispose()
        loader = _CLoader(text)
        try:
            node = loader.get_single_node()
            return Located(_build(node, loader) if node is not None else None, root=node)
        finally:
            loader.dispose()
    except YamlError:
        raise
    except (yaml.YAMLError, UnicodeError, RecursionError):
        return None


def _from_events(loader: Any) -> tuple[bool, Any]:
    """``(True, data)``: the document, built from the loader's events.

    ``(False, None)`` for anything the Python loader must word: an anchor, an alias, nesting
    deeper than ``MAX_DEPTH`` (counted as its composer counts), a second document. Raises
    _Unusual for what ``_build`` words.
    """
    get = loader.get_event
    resolve = loader.resolve
    max_depth = MAX_DEPTH
    tags: dict[str, str] = {}  # a plain scalar's text -> its tag (the same text, the same tag)
    stack: list[Any] = []  # the collections that enclose ``cur``
    cur: Any = None  # the collection being filled (None: the document itself)
    key: Any = _NO_KEY  # in a mapping, the key whose value comes next
    data: Any = None
    depth = 0  # collections open
    documents = 0
    try:
        while True:
            e = get()
            cls = e.__class__
            if cls is ScalarEvent:
                if e.anchor is not None or depth >= max_depth:
                    return False, None
                value = e.value
                tag = e.tag
                if tag is None:
                    if e.implicit[0]:
                        tag = tags.get(value)
                        if tag is None:
                            tag = tags[value] = resolve(ScalarNode, value, e.implicit)
                    else:
                        tag = STR_TAG  # quoted, untagged
                elif tag == "!":
                    tag = resolve(ScalarNode, value, e.implicit)
                if cur.__class__ is list:
                    cur.append(value if tag == STR_TAG else _scalar(loader, tag, e))
                elif key is _NO_KEY and cur is not None:
                    if tag != STR_TAG and tag != TIMESTAMP_TAG:
                        if tag == MERGE_TAG:
                            raise _Unusual
                        _scalar(loader, tag, e)  # refuses a key it cannot read
                    if value in cur:
                        raise _Unusual
                    key = value
                elif cur is not None:
                    cur[key] = value if tag == STR_TAG else _scalar(loader, tag, e)
                    key = _NO_KEY
                else:
                    data = value if tag == STR_TAG else _scalar(loader, tag, e)
            elif cls is SequenceStartEvent or cls is MappingStartEvent:
                if e.anchor is not None or depth >= max_depth:
                    return False, None
                depth += 1
                new: Any = [] if cls is SequenceStartEvent else {}
                if cur.__class__ is list:
                    cur.append(new)
                elif cur is None:
                    data = new
                elif key is _NO_KEY:
                    raise _Unusual  # a collection as a key
                else:
                    cur[key] = new
                stack.append(cur)
                cur = new
                key = _NO_KEY
            elif cls is SequenceEndEvent or cls is MappingEndEvent:
                cur = stack.pop()
                key = _NO_KEY
                depth -= 1
            elif cls is AliasEvent:
                return False, None
            elif cls is DocumentStartEvent:
                documents += 1
                if documents > 1:
                    return False, None
            elif cls is StreamEndEvent:
                return True, data
    except _Unusual:
        raise _Unusual(depth) from None


def _scalar(loader: Any, tag: str, e: Any) -> Any:
    """The value of a scalar event that is not a plain string (see ``_build``)."""
    if tag == TIMESTAMP_TAG:
        return e.value
    try:
        value = _construct(loader, ScalarNode(tag, e.value, e.start_mark, e.end_mark, e.style))
    except (YamlError, yaml.YAMLError):
        raise _Unusual from None
    if isinstance(value, bytes):
        raise _Unusual
    return value


def _rest_is_plain(get: Callable[[], Any], depth: int) -> bool:
    """Whether the rest of a document's events hold nothing the Python loader would refuse
    while composing (before ``_build`` could word the mistake found so far)."""
    documents = 1
    while True:
        e = get()
        cls = e.__class__
        if cls is AliasEvent or getattr(e, "anchor", None) is not None:
            return False
        if cls is ScalarEvent:
            if depth >= MAX_DEPTH:
                return False
        elif cls is SequenceStartEvent or cls is MappingStartEvent:
            if depth >= MAX_DEPTH:
                return False
            depth += 1
        elif cls is SequenceEndEvent or cls is MappingEndEvent:
            depth -= 1
        elif cls is DocumentStartEvent:
            documents += 1
            if documents > 1:
                return False
        elif cls is StreamEndEvent:
            return True


def _compose(text: str) -> yaml.Node | None:
    """The node tree of a document that has loaded (so it parses, and is neither deep nor
    anchored): what positions are read from."""
    if _CLoader is not None:
        loader = _CLoader(text)
        try:
            return loader.get_single_node()  # type: ignore[no-any-return]
        except yaml.YAMLError:
            pass
        finally:
            loader.dispose()
    py = _NoAliasLoader(text)
    try:
        return py.get_single_node()
    except (yaml.YAMLError, YamlError):
        return None
    finally:
        py.dispose()


def _load_python(text: str) -> Located:
    try:
        loader = _NoAliasLoader(text)
    except yaml.reader.ReaderError as e:
        raise _reader_error(e, text) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return Located()
        return Located(_build(node, loader), root=node)
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
