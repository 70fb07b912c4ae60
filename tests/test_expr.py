"""The ``${{ }}`` expression language: parsing, the names an expression uses, rendering."""

from __future__ import annotations

from typing import Any

import pytest

from agentctl import expr

CTX: dict[str, Any] = {
    "inputs": {"path": "src dir", "n": 3},
    "tasks": {
        "plan": {"output": {"steps": [{"id": "a"}, {"id": "b"}], "ok": True}, "summary": "s"},
        "1st-task": {"output": {"x": 1}},
    },
}


def names(src: str) -> list[tuple[str | int, ...]]:
    return [p.parts for p in expr.paths(expr.parse(src))]


def test_paths_with_dots_and_indexes() -> None:
    assert names("tasks.plan.output.steps[0].id") == [("tasks", "plan", "output", "steps", 0, "id")]
    assert names("tasks.plan.output['odd key']") == [("tasks", "plan", "output", "odd key")]
    assert names("tasks.plan.output.steps.1.id") == [("tasks", "plan", "output", "steps", 1, "id")]
    assert names("items.0.1") == [("items", 0, 1)]


def test_task_ids_with_hyphens_and_leading_digits() -> None:
    assert names("tasks.explore-api.output") == [("tasks", "explore-api", "output")]
    assert names("tasks.1st-task.output.x") == [("tasks", "1st-task", "output", "x")]
    assert expr.evaluate(expr.parse("tasks.1st-task.output.x"), CTX) == 1


def test_every_path_of_a_condition_in_order() -> None:
    assert names("!(a.b == 'x') && c || d != 2") == [("a", "b"), ("c",), ("d",)]


@pytest.mark.parametrize(("src", "value"), [
    ("inputs.n == 3", True),
    ("inputs.n != 3", False),
    ("inputs.n >= 3 && inputs.n < 4", True),
    ("!tasks.plan.output.ok", False),
    ("tasks.plan.summary || 'none'", "s"),
    ("null || 'fallback'", "fallback"),
    ("'it\\'s'", "it's"),
    ("1.5", 1.5),
    ("-2 < 0", True),
    ("(true && false) || true", True),
])
def test_evaluate(src: str, value: Any) -> None:
    assert expr.evaluate(expr.parse(src), CTX) == value


@pytest.mark.parametrize(("src", "message"), [
    ("", "empty expression"),
    ("a ==", "expression ends too early"),
    ("a b", "unexpected 'b' in expression"),
    ("a.", "expression ends too early"),
    ("a.'x'", "expected a field name after '.', found \"'x'\""),
    ("a[b]", "expected an index or a quoted key in [], found 'b'"),
    ("a $ b", "unexpected character '$' in expression"),
    ("(" * 40 + "a" + ")" * 40, "expression is nested more than 32 levels deep"),
    ("!" * 40 + "a", "expression is nested more than 32 levels deep"),
    ("a || " * 150 + "a", "expression is too long (more than 200 tokens)"),
])
def test_parse_errors(src: str, message: str) -> None:
    with pytest.raises(expr.ExprError) as info:
        expr.parse(src)
    assert str(info.value) == message


def test_comparing_unlike_types_is_an_error_not_a_crash() -> None:
    with pytest.raises(expr.ExprError, match="cannot compare int with str"):
        expr.evaluate(expr.parse("inputs.n < 'x'"), CTX)


def test_a_missing_value_names_how_far_it_got() -> None:
    with pytest.raises(expr.Missing, match=r"'tasks\.plan\.output\.nope' does not exist"):
        expr.evaluate(expr.parse("tasks.plan.output.nope.deeper"), CTX)
    with pytest.raises(expr.Missing, match=r"'tasks\.plan\.output\.steps\[5\]' does not exist"):
        expr.evaluate(expr.parse("tasks.plan.output.steps[5]"), CTX)


def test_template_sources_and_unclosed() -> None:
    assert expr.template_exprs("a ${{ x }} b ${{y.z}}") == [" x ", "y.z"]
    assert not expr.unclosed("a ${{ x }} b")
    assert expr.unclosed("a ${{ x }} b ${{ y")
    assert expr.unclosed("${{ x")


def test_a_whole_value_keeps_its_type() -> None:
    assert expr.render("${{ tasks.plan.output.steps }}", CTX) == [{"id": "a"}, {"id": "b"}]
    assert expr.render("${{ inputs.n }}", CTX) == 3
    assert expr.render({"k": ["${{ tasks.plan.output.ok }}"]}, CTX) == {"k": [True]}


def test_text_around_expressions_makes_a_string() -> None:
    assert expr.render("n=${{ inputs.n }} ok=${{ tasks.plan.output.ok }}", CTX) == "n=3 ok=true"
    assert expr.render(" ${{ inputs.n }}", CTX) == " 3"
    assert expr.render("${{ inputs.n }}${{ inputs.n }}", CTX) == "33"


def test_a_command_argument_stays_one_argument() -> None:
    # No shell, no splitting: a value with spaces or quotes is one argument, as given.
    assert expr.render_str("${{ inputs.path }}", CTX) == "src dir"
    assert expr.render_str("${{ tasks.plan.output.steps }}", CTX) == '[{"id": "a"}, {"id": "b"}]'
    hostile = {"inputs": {"path": "x; rm -rf / ${{ inputs.path }}"}}
    assert expr.render_str("--path=${{ inputs.path }}", hostile) == "--path=x; rm -rf / ${{ inputs.path }}"
