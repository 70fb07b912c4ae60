"""Safe YAML with positions: plain data only, no aliases, no duplicate keys, bounded size and
depth; libyaml and the pure-Python loader agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from agentctl import yamlsafe

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def error(text: str | bytes) -> tuple[int | None, int | None, str]:
    with pytest.raises(yamlsafe.YamlError) as info:
        yamlsafe.load(text)
    return info.value.line, info.value.col, info.value.message


def test_values_and_their_positions() -> None:
    doc = yamlsafe.load("name: x\ntasks:\n  a:\n    needs: [b, c]\n")
    assert doc.data == {"name": "x", "tasks": {"a": {"needs": ["b", "c"]}}}
    assert doc.where(("tasks", "a", "needs", 1)) == (4, 16)
    assert doc.where_key(("tasks", "a")) == (3, 3)
    assert doc.where(("tasks", "a", "nope", 3)) == (4, 5)  # the nearest located ancestor


def test_keys_and_dates_stay_as_written() -> None:
    doc = yamlsafe.load("on: push\n1: one\nnull: n\nwhen: 2024-01-02\n")
    assert doc.data == {"on": "push", "1": "one", "null": "n", "when": "2024-01-02"}


@pytest.mark.parametrize(("text", "expected"), [
    ("a: 1\na: 2\n", (2, 1, "duplicate key 'a' (first defined at line 1)")),
    ("a: &x 1\n", (1, 4, "YAML anchors and aliases are not allowed in agentctl files (found &x); write the value out")),
    ("a: *x\n", (1, 4, "YAML anchors and aliases are not allowed in agentctl files (found *x); write the value out")),
    ("<<: {a: 1}\n", (1, 1, "YAML merge keys (<<) are not allowed")),
    ("? [a]\n: 1\n", (1, 3, "mapping keys must be plain scalars")),
    ("a: !!binary aGk=\n", (1, 4, "binary values (!!binary) are not allowed")),
    ("a: !!python/object:os.system x\n", (1, 4, "invalid YAML: could not determine a constructor for the tag "
                                               "'tag:yaml.org,2002:python/object:os.system'")),
    ("a: 1\n---\nb: 2\n", (2, 1, "invalid YAML: expected a single document in the stream but found another document")),
    ("a: 1\nb: x\x1b\n", (2, 5, "control character U+001B is not allowed in YAML (write it as an escape in a "
                                "double-quoted string)")),
])
def test_refusals(text: str, expected: tuple[int, int, str]) -> None:
    assert error(text) == expected


def test_depth_is_bounded() -> None:
    assert yamlsafe.load("a: " + "[" * 63 + "]" * 63).data is not None
    assert error("a: " + "[" * 64 + "]" * 64) == (1, 67, "values are nested more than 64 levels deep")


def test_size_cap_for_text_and_bytes() -> None:
    big = "#" * (yamlsafe.MAX_BYTES + 1)
    assert error(big)[2] == "file is larger than 1024 KiB; refusing to parse it"
    assert error(big.encode())[2] == "file is larger than 1024 KiB; refusing to parse it"


def test_bom_and_empty() -> None:
    assert yamlsafe.load("\ufeffa: 1\n".encode()).data == {"a": 1}
    assert yamlsafe.load("").data is None
    assert yamlsafe.load("# only a comment\n").data is None


def real_yaml_files() -> list[Path]:
    files = sorted((REPO / "pipelines").glob("*.yaml"))
    if CORPUS.is_dir():
        files += sorted(CORPUS.rglob("*.y*ml"))
    return files


def outcome(load: Callable[[str], yamlsafe.Located | None], text: str) -> object:
    try:
        doc = load(text)
    except yamlsafe.YamlError as e:
        return ("refused", e.line, e.col, e.message)
    return None if doc is None else ("loaded", doc.data, doc.positions, doc.key_positions)


@pytest.mark.skipif(yamlsafe._CLoader is None, reason="PyYAML was built without libyaml")
def test_libyaml_and_python_agree_on_real_files() -> None:
    loaded = 0
    for path in real_yaml_files():
        text = path.read_text(encoding="utf-8")
        fast = outcome(yamlsafe._load_fast, text)
        slow = outcome(yamlsafe._load_python, text)
        # None: libyaml hands the file to the Python loader, which has the last word.
        assert fast is None or fast == slow, path
        loaded += fast is not None and fast[0] == "loaded"  # type: ignore[index]
    assert loaded >= 1


@pytest.mark.skipif(yamlsafe._CLoader is None, reason="PyYAML was built without libyaml")
@pytest.mark.parametrize("text", ["a: &x 1\n", "a: *x\n", "a: " + "[" * 70 + "]" * 70, "a: [1,\n",
                                  "a: 1\nb: \x01\n", "\ta: 1\n"])
def test_libyaml_hands_every_problem_to_the_python_loader(text: str) -> None:
    # So that messages and positions never depend on how PyYAML was built.
    assert yamlsafe._load_fast(text) is None
    with pytest.raises(yamlsafe.YamlError):
        yamlsafe._load_python(text)


TRICKY = [
    "hello", "'q'", "", "---\n", "---\na: 1\n...\n", "{}", "[]", "- - - x\n", "? a\n? b\n", "a:\n",
    "a:\n- b\n- c\n", "a: [1, 2, {b: c}]", "a: |\n  text\n", "\ufeffa: 1",
    "on: [yes, no, ~, null, 0x1F, 1_000, 1.5, .inf]", "true: 1\non: 2\nnull: 3\n1: 4\n",
    "a: [2024-01-02, 2024-01-02T10:00:00Z]", "2024-13-45: x", "!!timestamp foo: 1",
    "a: !!str 1", "a: ! 1", "! 1: 2", "!!str a: b", "a: !!null", "a: !!map {b: 1}", "a: !!set {b}",
    "a: !!int abc", "a: [!!float x]", "!!int abc: 1", "a: !!bool maybe", "a: =", "a: !foo bar",
    "a: 1\nb: {c: 1, c: 2}\n", "x:\n  y: 1\n  y: 2\n", "1: a\n1: b\n", "<<: {a: 1}", "a: {<<: {b: 1}}",
    "? [a]\n: 1\n", "{a: 1}: 2", "a: [!!binary aGk=]", "? !!binary aGk=\n: 1",
    # a mistake of the kind the node builder words, then one the Python loader must word first
    "a: {c: 1, c: 2}\nd: &x 1\n", "a: [{b: 1, b: 2}, *y]", "a: {c: 1, c: 2}\nb: " + "[" * 70 + "]" * 70,
    "a: {c: 1, c: 2}\n---\nb: 1\n", "a: {c: 1, c: 2}\nb: [1,\n",
    "a: " + "[" * 63 + "x" + "]" * 63, "a: " + "[" * 62 + "x" + "]" * 62, "a: 1\n---\n",
]


@pytest.mark.skipif(yamlsafe._CLoader is None, reason="PyYAML was built without libyaml")
@pytest.mark.parametrize("text", TRICKY)
def test_libyaml_and_python_agree_on_tricky_documents(text: str) -> None:
    # The data, every position, or the refusal: the same with or without libyaml.
    fast = outcome(yamlsafe._load_fast, text)
    assert fast is None or fast == outcome(yamlsafe._load_python, text)


@pytest.mark.parametrize(("text", "expected"), [
    ("a: !!int abc", (1, 4, "invalid YAML: 'abc' is not a valid !!int")),
    ("a: [!!float x]", (1, 5, "invalid YAML: 'x' is not a valid !!float")),
    ("a: !!bool maybe", (1, 4, "invalid YAML: 'maybe' is not a valid !!bool")),
    ("a: {c: 1, c: 2}\nd: &x 1\n", (2, 4, "YAML anchors and aliases are not allowed in agentctl "
                                      "files (found &x); write the value out")),
    ("a: " + "[" * 63 + "x" + "]" * 63, (1, 67, "values are nested more than 64 levels deep")),
])
def test_refusals_of_explicit_tags_and_the_first_problem(text: str, expected: tuple[int, int, str]) -> None:
    assert error(text) == expected


def test_dates_as_keys_stay_text_even_when_they_are_not_dates() -> None:
    assert yamlsafe.load("2024-13-45: x\n!!timestamp soon: y\n").data == {"2024-13-45": "x", "soon": "y"}


def test_positions_of_a_large_document_are_found_when_asked() -> None:
    lines = ["tasks:"] + [f"  t{i}: {{needs: [{', '.join(f'n{j}' for j in range(50))}]}}" for i in range(300)]
    doc = yamlsafe.load("\n".join(lines) + "\n")
    assert doc.data["tasks"]["t299"]["needs"][49] == "n49"
    assert doc.where(("tasks", "t299", "needs", 1)) == (301, 22)
    assert doc.where_key(("tasks", "t7")) == (9, 3)
    assert doc.where(("tasks", "t7", "needs", 99)) == (9, 15)
    assert doc.where_key(("tasks", "nope")) == (2, 3)


def test_pyyaml_is_what_we_think_it_is() -> None:
    # yamlsafe relies on YAML 1.1 reading `on` as a boolean; if that ever changes, so can we.
    assert yaml.safe_load("on: 1") == {True: 1}
