"""Every real-world skill and agent file in ../shared/corpus loads or is refused in one line.

Run with ``-s`` to see the figures. The corpus is test data copied verbatim from public
repositories (see its SOURCES.md); it is never edited to make a test pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from skillspec import strict_problems

from agentctl.models import Skill
from agentctl.skills import SkillRefused, load_skill

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus"

pytestmark = pytest.mark.skipif(
    not (CORPUS / "skills").is_dir() or not (CORPUS / "agents").is_dir(),
    reason=f"the real-world corpus is not at {CORPUS} (CI clones the repo with ../shared beside it)",
)


@dataclass
class Outcome:
    loaded: dict[Path, Skill] = field(default_factory=dict)
    refused: dict[Path, SkillRefused] = field(default_factory=dict)
    raised: dict[Path, BaseException] = field(default_factory=dict)

    @property
    def warned(self) -> dict[Path, Skill]:
        return {p: s for p, s in self.loaded.items() if s.warnings}


def corpus_files() -> list[Path]:
    return sorted(p for sub in ("skills", "agents") for p in (CORPUS / sub).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def outcome() -> Outcome:
    out = Outcome()
    for path in corpus_files():
        try:
            out.loaded[path] = load_skill(path)
        except SkillRefused as e:
            out.refused[path] = e
        except Exception as e:  # the point of the test: nothing else may escape
            out.raised[path] = e
    return out


def rel(p: Path) -> str:
    return str(p.relative_to(CORPUS))


def test_every_file_loads_or_is_refused_with_a_one_line_reason(outcome: Outcome) -> None:
    total = len(corpus_files())
    clean = len(outcome.loaded) - len(outcome.warned)
    print(f"\ncorpus: {total} files: {clean} loaded cleanly, {len(outcome.warned)} loaded with "
          f"warnings, {len(outcome.refused)} refused, {len(outcome.raised)} raised")
    for p, e in outcome.refused.items():
        print(f"  refused {rel(p)}: {e.reason}")
    assert total >= 129  # 88 SKILL.md + 41 agents, per SOURCES.md
    assert not outcome.raised, {rel(p): repr(e) for p, e in outcome.raised.items()}
    for p, e in outcome.refused.items():
        assert e.reason.strip() and "\n" not in e.reason, rel(p)
    for p, s in outcome.loaded.items():
        assert all(w.strip() and "\n" not in w for w in s.warnings), rel(p)
    assert len(outcome.loaded) + len(outcome.refused) == total


def test_files_the_spec_accepts_load_without_warnings(outcome: Outcome) -> None:
    strict = [p for p in corpus_files() if not strict_problems(p)]
    print(f"\ncorpus: {len(strict)} files follow the strict Agent Skills rules")
    assert len(strict) >= 40  # the checker is not vacuous
    for p in strict:
        assert p in outcome.loaded, f"{rel(p)} follows the spec but was refused: {outcome.refused[p].reason}"
        skill = outcome.loaded[p]
        assert skill.warnings == [], f"{rel(p)} follows the spec but got warnings: {skill.warnings}"
        assert skill.description.strip()


def test_files_that_bend_the_spec_are_warned_about(outcome: Outcome) -> None:
    # The converse: leniency is never silent.
    for p in corpus_files():
        problems = strict_problems(p)
        if problems and p in outcome.loaded:
            assert outcome.loaded[p].warnings, f"{rel(p)} bends the spec ({problems}) but loaded silently"


VOLTAGENT = ("backlog-grooming", "assumption-mapping", "growth-loops", "hipaa-compliance",
             "ab-test-analysis", "first-principles-thinking", "cohort-analysis",
             "gdpr-ccpa-compliance")


@pytest.mark.parametrize("stem", VOLTAGENT)
def test_plain_description_with_colon_space_loads_whole(outcome: Outcome, stem: str) -> None:
    path = CORPUS / "agents" / "voltagent-awesome-claude-code-subagents" / f"{stem}.md"
    skill = outcome.loaded[path]
    assert skill.name == stem
    assert "Triggers on: '" in skill.description
    assert skill.description.endswith("'.")  # the whole line, not cut at the ': '
    assert any("not valid YAML (line 3)" in w for w in skill.warnings)
    assert any("'tools'" in w for w in skill.warnings)  # the fields after it are still read


def test_multiline_description_with_example_blocks(outcome: Outcome) -> None:
    skill = outcome.loaded[CORPUS / "agents" / "getsentry-skills" / "senpai.md"]
    assert skill.name == "senpai"
    assert skill.description.startswith("Use this agent when a user needs mentoring")
    # `user:` and `assistant:` lines inside <example> belong to the description...
    assert skill.description.count("<example>") == 4
    assert 'user: "How does Sentry' in skill.description
    assert skill.description.rstrip().endswith("</example>")
    # ...and the real fields after the blocks are fields again.
    unknown = [w for w in skill.warnings if w.startswith("unknown field")]
    assert unknown == ["unknown fields 'model', 'color', 'tools' (not in the Agent Skills spec; "
                       "agentctl's own settings go in metadata); ignored"]
    assert skill.body.lstrip().startswith("You are Senpai")


def test_html_comment_before_the_frontmatter(outcome: Outcome) -> None:
    skill = outcome.loaded[CORPUS / "agents" / "getsentry-skills" / "code-simplifier.md"]
    assert skill.name == "code-simplifier"
    assert skill.description.startswith("Simplifies and refines code")
    assert "text before the opening '---' of the frontmatter was ignored" in skill.warnings
    assert skill.body.lstrip().startswith("You are an expert code simplification specialist")


def test_other_known_bends(outcome: Outcome) -> None:
    skills = CORPUS / "skills"
    claude_api = outcome.loaded[skills / "anthropics-skills" / "claude-api" / "SKILL.md"]
    assert "description is 1068 characters (the spec allows 1024)" in claude_api.warnings

    postgres = outcome.loaded[skills / "wshobson-agents" / "postgresql" / "SKILL.md"]
    assert postgres.name == "postgresql-table-design"
    assert "name 'postgresql-table-design' differs from its folder 'postgresql'" in postgres.warnings

    gate = outcome.loaded[skills / "trailofbits-skills" / "trailmark-review-gate" / "SKILL.md"]
    assert gate.allowed_tools[:3] == ["Bash", "Read", "Grep"]
    assert any("YAML list" in w for w in gate.warnings)

    apk = outcome.loaded[skills / "trailofbits-skills" / "firebase-apk-scanner" / "SKILL.md"]
    assert "Bash({baseDir}/scanner.sh:*)" in apk.allowed_tools
    assert any("'argument-hint'" in w for w in apk.warnings)

    renamed = [p for p, s in outcome.loaded.items()
               if p.parent.name == "wshobson-agents" and any("differs from its file name" in w for w in s.warnings)]
    assert len(renamed) == 8
