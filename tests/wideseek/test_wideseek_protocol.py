"""The paper's protocol (RLinf's code) with scripted policies: prompts, access summaries, snippets, the
subagent failure message, reward shaping and the trainable-turn rules."""

from __future__ import annotations

import pytest

from leanlm.wideseek import prompts
from leanlm.wideseek.agents import AgentConfig, WideSeek
from leanlm.wideseek.corpus import Page
from leanlm.wideseek.llm import Completion, ScriptedBackend, ToolCall
from leanlm.wideseek.rewards import RewardConfig, credit
from leanlm.wideseek.tools import MAX_SNIPPET_CHARS, SNIPPET_CHARS, WorldTools, html_to_text


class TinyCorpus:
    def __init__(self, pages):
        self.pages = {p.url: p for p in pages}

    def __iter__(self):
        return iter(self.pages.values())

    def __len__(self):
        return len(self.pages)

    def get(self, url):
        return self.pages.get(url)


LONG = "Facts\n- Capital: Paris\n- Currency: EUR\n" + "Filler sentence about nothing in particular. " * 2000
PAGES = [Page("https://leanlm.local/country/france", "France", "country", "France\n\nFrance is a country. " + LONG,
              {"name": "France", "capital": "Paris"}),
         Page("https://leanlm.local/country/spain", "Spain", "country", "Spain\n\nSpain is a country. Its capital is "
              "Madrid.", {"name": "Spain"})]


@pytest.fixture(scope="module")
def tools():
    from leanlm.wideseek.index import FTS5Index

    corpus = TinyCorpus(PAGES)
    return WorldTools(corpus, index=FTS5Index(corpus))


def test_access_returns_only_the_summary_by_default(tools):
    page = tools.access("https://leanlm.local/country/france", "capital")
    assert page.text is None and "Capital: Paris" in page.summary
    text = str(page)
    assert "Capital: Paris" in text and "Filler" not in text and len(text) < 400  # small subagent contexts
    assert page.facts == {"name": "France", "capital": "Paris"} and page.as_data()["tool"] == "access"
    full = WorldTools(tools.corpus, index=tools.index, access_mode="summary+page", page_chars=1000)
    both = full.access("https://leanlm.local/country/france", "capital")
    assert both.summary and len(both.text) == 1000 and "Page text:" in str(both)
    assert WorldTools(tools.corpus, index=tools.index, access_mode="page").access(
        "https://leanlm.local/country/france", "capital").summary is None
    with pytest.raises(ValueError, match="access_mode"):
        WorldTools(tools.corpus, index=tools.index, access_mode="everything")


def test_search_snippets_have_the_documented_length(tools):
    result = tools.search("France country", 3)
    hit = next(h for h in result.hits if h.url.endswith("/france"))
    assert len(hit.snippet) == SNIPPET_CHARS and hit.snippet.startswith("France\n")
    assert str(result).startswith("Search 'France country':\n[Doc 1](https://leanlm.local/country/")
    assert len(WorldTools(tools.corpus, index=tools.index, snippet_chars=MAX_SNIPPET_CHARS)
               .search("France", 1).hits[0].snippet) == MAX_SNIPPET_CHARS
    with pytest.raises(ValueError, match="snippet_chars"):
        WorldTools(tools.corpus, index=tools.index, snippet_chars=MAX_SNIPPET_CHARS + 1)
    assert "no search results" in str(tools.search("zzzqqq", 3))


def test_html_is_parsed_not_regex_stripped():
    markup = ("<html><head><title>T</title><style>p {color: red}</style></head><body><p>Hello &amp; welcome"
              "<script>var x = '<p>no</p>';</script></p><div>Second<br>line</div><!-- c --></body></html>")
    assert html_to_text(markup) == "Hello & welcome\nSecond\nline"


def test_lead_prompt_has_few_shot_examples_and_optional_think():
    plain = prompts.lead_system(10, prompts.TABLE_FORMAT)
    assert "Example 1." in plain and "Example 2." in plain and "<think>" not in plain
    assert plain.count('"create_sub_agents"') == 2 and "subtasks per turn" in plain.replace("\n", " ")
    think = prompts.lead_system(10, prompts.TABLE_FORMAT, thinking=True)
    assert think.endswith(prompts.THINK_RULE) and "<think> and </think>" in think
    assert "Example" not in prompts.lead_system(10, prompts.QA_FORMAT, few_shot=False)

    seen = {}

    def policy(agent, messages, tools):
        seen[agent] = messages[0]["content"]
        if agent == "lead" and not any(m["role"] == "tool" for m in messages):
            return Completion("", [ToolCall("create_sub_agents", {"sub_agents": [{"prompt": "p"}]})])
        return Completion("<think>reasoning</think>report")

    result = WideSeek(ScriptedBackend(policy), TinyTools(), AgentConfig(thinking=True)).run("task")
    assert "Example 1." in seen["lead"] and seen["lead"].endswith(prompts.THINK_RULE)
    assert seen["sub-1"].endswith(prompts.THINK_RULE)
    assert result.answer == "report"  # text after </think>
    qa = {}
    WideSeek(ScriptedBackend(lambda a, m, t: qa.setdefault(a, m[0]["content"]) and Completion("\\boxed{1}")),
             TinyTools(), AgentConfig()).run("q", "qa")
    assert "Example" not in qa["lead"] and "<think>" not in qa["lead"]


class TinyTools:
    def search(self, query, count):
        return f"[Doc 1](https://x/{query}):\n{query}"

    def access(self, url, info):
        return f"summary of {url}"


def scripted(sub_status="ok", lead_status="ok", access=True, long_turn=0, answer="```markdown\n| a |\n|---|\n| 1 |\n```"):
    """A lead that starts two subagents; sub-2 behaves per ``sub_status``; the lead answers per ``lead_status``."""
    def policy(agent, messages, tools):
        k = sum(m["role"] == "tool" for m in messages)
        if agent == "lead":
            if lead_status == "loop" or k == 0:
                return Completion("", [ToolCall("create_sub_agents", {"sub_agents": [{"prompt": "a"}, {"prompt": "b"}]})])
            return Completion(answer, completion_tokens=long_turn or 50)
        if agent == "sub-2" and sub_status == "loop":
            return Completion("", [ToolCall("search", {"queries": [{"query": "again"}]})], completion_tokens=20)
        if k == 0:
            call = (ToolCall("access", {"urls": [{"url": "u", "info_to_extract": "i"}]}) if access
                    else ToolCall("search", {"queries": [{"query": "q"}]}))
            return Completion("", [call], completion_tokens=30)
        return Completion("report", completion_tokens=40)
    return policy


def run(policy, **cfg):
    return WideSeek(ScriptedBackend(policy), TinyTools(), AgentConfig(max_sub_turns=3, max_lead_turns=3, **cfg)).run("t")


def test_reward_shaping_terms():
    ok = run(scripted())
    c = credit(ok, outcome=0.8, format_ok=True)
    assert c.case == "ok" and c.format_bonus == 0.1 and c.access_bonus == 0.05 and c.length_penalty == 0.0
    assert c.reward == pytest.approx(0.8 + 0.1 + 0.05)
    assert len(c.trainable) == len(c.turns) == 2 + 2 * 2  # lead 2 turns, each subagent 2 turns
    no_access = credit(run(scripted(access=False)), 0.8, True)
    assert no_access.access_bonus == 0.0 and no_access.reward == pytest.approx(0.9)
    # the longest turn: 4,000 tokens is halfway from 3,000 to 5,000 -> penalty 0.05; >= 5,000 -> 0.1
    half = credit(run(scripted(long_turn=4000)), 0.5, True)
    assert half.longest_turn_tokens == 4000 and half.length_penalty == pytest.approx(0.05)
    assert half.reward == pytest.approx(0.5 + 0.1 + 0.05 - 0.05)
    assert credit(run(scripted(long_turn=9000)), 0.5, True).length_penalty == pytest.approx(0.1)
    off = credit(ok, 0.8, True, RewardConfig(format_reward=0, access_reward=0, length_penalty=0))
    assert off.reward == 0.8 and ok.credit(0.8, True).as_dict()["reward"] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="max_length_limit"):
        RewardConfig(length_limit=10, max_length_limit=5)


def test_trainable_turns_follow_rlinf_rules():
    # a subagent hitting its turn limit: its turns are flagged and not trained, the rest are
    failed_sub = run(scripted(sub_status="loop"))
    c = credit(failed_sub, 1.0, True)
    assert c.case == "ok" and ("sub-2", 1) not in c.trainable and ("sub-1", 1) in c.trainable
    assert all(t.max_turn_limit_failed for t in c.turns if t.agent == "sub-2")
    assert {t.agent for t in c.turns} == {"lead", "sub-1", "sub-2"} and c.turns[0].sub_traj == 0
    assert {t.sub_traj for t in c.turns if t.agent == "sub-2"} == {2}
    # the lead hitting its turn limit with a parseable last text: reward 0, only the lead's failed turns
    looping = run(scripted(lead_status="loop"))
    c = credit(looping, 1.0, True)
    assert c.case == "lead_failed" and c.reward == 0.0
    assert c.trainable == [("lead", 1), ("lead", 2), ("lead", 3)]
    # bad format: reward 0, the final lead turn, plus the turns that hit a limit
    bad = credit(failed_sub, 0.0, False)
    assert bad.case == "bad_format" and bad.reward == 0.0
    assert bad.trainable[0] == ("lead", 2) and set(bad.trainable[1:]) == {("sub-2", 1), ("sub-2", 2), ("sub-2", 3)}
    assert credit(ok_run(), 0.0, False).trainable == [("lead", 2)]


def ok_run():
    return run(scripted())
