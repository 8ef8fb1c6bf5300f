"""Every generated task is complete (no entity dropped against the pages) and the oracle policy solves it."""

from __future__ import annotations

import asyncio
import collections

import pytest

from leanlm.wideseek.agents import AgentConfig, WideSeek
from leanlm.wideseek.bench import OraclePolicy, search_misses
from leanlm.wideseek.corpus import REGION_GROUPS, country_records, group_countries, slug
from leanlm.wideseek.llm import ScriptedBackend
from leanlm.wideseek.tasks import WIDE_FAMILIES, candidate_tasks, generate_wide_tasks


@pytest.fixture(scope="module")
def world(full_world):
    return full_world


@pytest.fixture(scope="module")
def all_tasks():
    return candidate_tasks(min_city_rows=1) + generate_wide_tasks()


def expected_members(corpus, listing_url):
    """The entity set a listing stands for, recomputed from the entity pages' own facts."""
    name = listing_url.rsplit("/", 1)[-1].rsplit("-", 1)[0]
    pages = list(corpus)
    if name.startswith("countries-group-"):
        group = next(g for g in REGION_GROUPS if slug(g) == name[len("countries-group-"):])
        return {c["name"] for c in group_countries(group)}
    if name.startswith("countries-"):
        return {p.facts["name"] for p in pages if p.kind == "country" and p.facts["subregion"]
                and slug(p.facts["subregion"]) == name[len("countries-"):]}
    if name.startswith("elements-period-"):
        return {p.facts["name"] for p in pages if p.kind == "element" and p.facts["period"] == int(name.split("-")[-1])}
    country, threshold = name[len("cities-"):].rsplit("-", 1)
    return {p.facts["name"] for p in pages if p.kind == "city" and slug(p.facts["country"]) == country
            and p.facts["population"] >= int(threshold)}


def test_no_entity_is_dropped(world, all_tasks):
    assert len(all_tasks) >= 150 and {t.family for t in all_tasks} >= set(WIDE_FAMILIES)
    for task in all_tasks:
        gold = task.gold()
        keys = [str(k) for k in gold.iloc[:, 0]]
        assert len(keys) == len(set(keys)) == len(task.sources), task.instance_id
        listing = world.corpus.get(task.listing)
        members = {m for url in listing.facts["parts"] for m in world.corpus.get(url).facts["members"]}
        assert set(keys) == members == expected_members(world.corpus, task.listing), task.instance_id
    # the examples: Switzerland (several currencies) and the United States are in their subregions
    we = next(t for t in all_tasks if t.instance_id == "ls-countries-western-europe")
    na = next(t for t in all_tasks if t.instance_id == "ls-countries-northern-america")
    assert "Switzerland" in we.sources and "United States" in na.sources
    assert sum(len(t.sources) for t in all_tasks if t.family == "countries") == sum(
        1 for c in country_records() if c["subregion"])


def test_wide_families_have_the_shape_of_widesearch(all_tasks):
    wide = [t for t in all_tasks if t.family in WIDE_FAMILIES]
    by_family = collections.Counter(t.family for t in wide)
    assert all(by_family[f] >= 4 for f in WIDE_FAMILIES), by_family
    for task in wide:
        columns = task.evaluation["required"]
        assert 15 <= len(task.sources) <= 40 and 5 <= len(columns) <= 7, task.instance_id
        assert task.split == WIDE_FAMILIES[task.family]
    pages_per_row = {t.family: max(len(s) for s in t.sources.values()) for t in wide}
    assert pages_per_row["countries-wide"] == 3 and pages_per_row["capitals-wide"] == 2  # cells over several pages
    assert {t.split for t in generate_wide_tasks("eval")} == {"eval"}
    assert not {t.family for t in generate_wide_tasks("train")} & {"cities-wide", "capitals-wide"}


def test_oracle_solves_every_generated_task(world, all_tasks):
    misses = 0
    for task in all_tasks:
        policy = OraclePolicy(task, width=8, items_per_turn=5)
        result = asyncio.run(WideSeek(ScriptedBackend(policy), world, AgentConfig()).arun(task.query))
        score = task.score(result.answer)
        assert score.score == 1.0 and result.status == "answered", (task.instance_id, score.msg)
        assert result.trace.check_complete() == []
        misses += search_misses(result)
    assert misses <= len(all_tasks)  # the pages are found by search, nearly always


@pytest.mark.parametrize("family", ["countries-wide", "elements-wide", "cities-wide", "capitals-wide"])
def test_oracle_first_delegation_uses_only_the_querys_words(world, family):
    """The lead's first subtask names the list with words copied from the query (no URL a policy could not
    know), and its subagent reaches the listing through search: it reads no page no search returned."""
    from leanlm.wideseek.bench import listing_phrase

    task = next(t for t in generate_wide_tasks(min_rows=2, max_rows=40) if t.family == family)
    phrase = listing_phrase(task.query)
    assert phrase and phrase in task.query and "http" not in phrase and "\n" not in phrase
    assert phrase.startswith("every ") and not phrase.endswith(("with its", ",", " "))
    policy = OraclePolicy(task, width=4)
    first = policy("lead", [{"role": "system", "content": ""}, {"role": "user", "content": task.query}], [])
    (call,) = first.tool_calls
    assert call.arguments == {"sub_agents": [{"prompt": f"Enumerate the list: {phrase}"}]}
    result = asyncio.run(WideSeek(ScriptedBackend(policy), world, AgentConfig(max_lead_turns=10, max_sub_turns=20))
                         .arun(task.query))
    assert task.score(result.answer).score == 1.0
    assert search_misses(result) == 0


def test_listing_phrase_per_query_shape():
    from leanlm.wideseek.bench import listing_phrase

    assert listing_phrase("List every city of Spain with at least 500,000 inhabitants, with its population, "
                          "latitude") == "every city of Spain with at least 500,000 inhabitants"
    assert listing_phrase("For every country of Sub-Saharan Africa, names A to K, give its capital city") == \
        "every country of Sub-Saharan Africa, names A to K"
    assert listing_phrase("List every chemical element of period 4 with its symbol.") == \
        "every chemical element of period 4"
    assert listing_phrase("What is the capital of France?") is None


def test_column_sets_ask_the_same_rows_for_other_columns(world):
    """Column sets 1.. of the training families: same rows and listing as set 0, the query names exactly the
    set's columns in order, the gold table is set 0's table restricted to those columns, and the oracle
    solves every one; the default task list is unchanged."""
    from leanlm.wideseek.tasks import COLUMN_SETS

    base = generate_wide_tasks("train", min_rows=2, max_rows=18)
    assert [t.instance_id for t in generate_wide_tasks("train", min_rows=2, max_rows=18, column_sets=1)] == \
        [t.instance_id for t in base]
    every = generate_wide_tasks("train", min_rows=2, max_rows=18, column_sets=5)
    assert [t.instance_id for t in every[: len(base)]] == [t.instance_id for t in base]
    assert len(every) == 5 * len(base)
    by_id = {t.instance_id: t for t in every}
    headers = set()
    for task in every[len(base):]:
        stem, k = task.instance_id.rsplit("-cols", 1)
        first = by_id[stem]
        columns = list(COLUMN_SETS[task.family][int(k)])
        assert task.evaluation["required"] == columns and set(task.evaluation["eval_pipeline"]) == set(columns)
        assert task.listing == first.listing and list(task.sources) == list(first.sources)
        assert "columns in this order: " + ", ".join(f"`{c}`" for c in columns) + "." in task.query
        assert task.gold().astype(str).equals(first.gold()[columns].astype(str)), task.instance_id
        headers.add(tuple(columns))
        result = asyncio.run(WideSeek(ScriptedBackend(OraclePolicy(task, width=4)), world,
                                      AgentConfig(max_lead_turns=10, max_sub_turns=20)).arun(task.query))
        assert task.score(result.answer).score == 1.0, task.instance_id
    assert len(headers) == 8
    with pytest.raises(ValueError, match=r"column_sets must be 1\.\.5"):
        generate_wide_tasks("train", column_sets=6)
