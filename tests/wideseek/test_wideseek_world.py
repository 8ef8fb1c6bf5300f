"""The offline world: corpus pages, search index, access tool, network guard, tasks and their files."""

from __future__ import annotations

import json

import pytest

from leanlm.common.records import RecordError
from leanlm.wideseek.corpus import build_corpus, country_records, normalize_url, slug
from leanlm.wideseek.index import build_index, measure
from leanlm.wideseek.tasks import (
    countries_task,
    elements_task,
    generate_tasks,
    gold_answer_text,
    load_tasks,
    write_tasks,
)
from leanlm.wideseek.tools import (
    MAX_PAGE_CHARS,
    AccessDenied,
    WorldTools,
    check_public_url,
    extractive_summary,
)


def country_records_by_name():
    return {c["name"]: c for c in country_records()}


@pytest.fixture(scope="module")
def small_world():
    corpus = build_corpus(kinds=("country", "element", "wiki"), wiki_limit=300)
    return corpus, WorldTools(corpus)


def test_pages_have_stable_urls_and_real_facts(small_world):
    corpus, _ = small_world
    france = corpus.get("https://leanlm.local/country/france")
    assert france is not None and "Its capital is Paris." in france.text
    assert corpus.get("http://LEANLM.local/country/france/") is france
    iron = corpus.get("https://leanlm.local/element/iron")
    assert "symbol Fe and atomic number 26" in iron.text and "55.845" in iron.text
    assert corpus.kinds() == {"country": 256, "element": 118, "wiki": 300}
    assert build_corpus(kinds=("element",)).pages.keys() == {u for u in corpus.pages if "/element/" in u}
    assert slug("Côte d'Ivoire") == "cote-d-ivoire" and normalize_url("HTTP://a.B/x/") == "https://a.b/x"
    with pytest.raises(ValueError, match="unknown page kinds"):
        build_corpus(kinds=("planet",))


@pytest.mark.parametrize("name", ["sqlite-fts5", "bm25s", "tantivy"])
def test_indexes_find_known_items(small_world, name):
    if name == "tantivy":
        pytest.importorskip("tantivy")
    corpus, _ = small_world
    index = build_index(corpus, name)
    assert index.search("France capital population", 3)[0].page.url == "https://leanlm.local/country/france"
    assert index.search("Oxygen atomic weight", 3)[0].page.url == "https://leanlm.local/element/oxygen"
    assert index.search("!!! ???", 3) == []
    assert len(index.search("Europe", 7)) == 7


def test_measure_reports_both_indexes(small_world):
    corpus, _ = small_world
    rows = measure(corpus, names=["sqlite-fts5", "bm25s"],
                   queries=[("France capital", "https://leanlm.local/country/france"),
                            ("Iron atomic weight", "https://leanlm.local/element/iron")])
    assert [r["index"] for r in rows] == ["sqlite-fts5", "bm25s"]
    assert all(r["hit@3"] == 1.0 and r["build_s"] > 0 for r in rows)


def test_search_and_access_formats(small_world):
    _, tools = small_world
    out = tools.search("Germany capital", 2)
    text = str(out)
    assert text.count("[Doc ") == 2 and "[Doc 1](https://leanlm.local/country/germany):\nGermany\n" in text
    assert out.hits[0].kind == "country" and out.as_data()["hits"][0]["url"].endswith("/germany")
    page = tools.access("https://leanlm.local/country/germany", "capital city")
    assert str(page).startswith("Page https://leanlm.local/country/germany (Germany)")
    assert "Its capital is Berlin." in page.summary and page.facts["capital"] == "Berlin"
    big = WorldTools(build_corpus(kinds=("country",)), index=tools.index, access_mode="summary+page")
    big.corpus.pages["https://leanlm.local/country/france"] = big.corpus.get("https://leanlm.local/country/france").__class__(
        "https://leanlm.local/country/france", "France", "country", "word. " * 10_000)
    assert len(big.access("https://leanlm.local/country/france", "x").text) == MAX_PAGE_CHARS


def test_extractive_summary_picks_relevant_sentences_in_order():
    text = "The sky is blue. Paris is the capital of France. Cheese is tasty. France uses the euro."
    assert extractive_summary(text, "capital and currency euro of France", 2) == (
        "Paris is the capital of France. France uses the euro.")
    assert extractive_summary(text, "the of", 1) == "The sky is blue."


def test_access_refuses_network_by_default_and_private_addresses(small_world):
    _, tools = small_world
    with pytest.raises(AccessDenied, match="network access is disabled"):
        tools.access("https://example.com/", "x")
    for url, addresses in [("http://127.0.0.1:8080/x", None), ("http://localhost/", ["127.0.0.1"]),
                           ("http://intranet/", ["10.1.2.3"]), ("http://v6/", ["::1"]), ("http://meta/", ["169.254.169.254"]),
                           ("http://mixed.example/", ["93.184.216.34", "192.168.0.1"]), ("file:///etc/passwd", None),
                           ("ftp://example.com/", None)]:
        with pytest.raises(AccessDenied):
            check_public_url(url, resolver=lambda host, a=addresses: a or [])
    check_public_url("https://example.com/x", resolver=lambda host: ["93.184.216.34"])
    online = WorldTools(tools.corpus, index=tools.index, allow_network=True, resolver=lambda host: ["127.0.0.1"])
    with pytest.raises(AccessDenied, match=r"non-public address 127\.0\.0\.1"):
        online.access("http://sneaky.example/", "x")


def test_generated_tasks_gold_is_exact_and_on_pages():
    tasks = generate_tasks(n_table=6, n_qa=3, seed=1)
    assert len(tasks) == 9 and len({t.instance_id for t in tasks}) == 9
    assert [t.kind for t in tasks].count("qa") == 3
    for task in tasks:
        result = task.score(gold_answer_text(task))
        assert result.score == 1.0 and result.f1_by_item == 1.0, task.instance_id
    assert generate_tasks(n_table=6, n_qa=3, seed=1)[0].instance_id == tasks[0].instance_id
    we = countries_task("Western Europe")
    gold = we.gold()
    names = set(gold["country"])
    assert {"France", "Germany", "Belgium", "Netherlands"} <= names
    expected = {c["name"] for c in country_records() if c["subregion"] == "Western Europe"}
    assert names == expected and "Switzerland" in names  # several currencies: the first listed is the gold
    assert gold.set_index("country").loc["Switzerland", "currency"] == country_records_by_name()["Switzerland"][
        "currencies"][0]
    assert "first one listed" in we.query
    assert gold.set_index("country").loc["France", "capital"] == "Paris"
    p2 = elements_task(2).gold()
    assert list(p2["symbol"]) == ["Li", "Be", "B", "C", "N", "O", "F", "Ne"]
    # an alias of a key (country alt spelling) is aligned to the gold name
    text = gold_answer_text(we).replace("| Germany |", "| Federal Republic of Germany |")
    assert we.score(text).f1_by_item == 1.0


def test_task_files_roundtrip_and_errors(tmp_path):
    tasks = generate_tasks(n_table=2, n_qa=1, seed=0)
    path = write_tasks(tasks, tmp_path)
    loaded = load_tasks(path)
    assert [(t.instance_id, t.kind, t.query) for t in loaded] == [(t.instance_id, t.kind, t.query) for t in tasks]
    assert loaded[0].gold().equals(tasks[0].gold())
    # WideSearch's own layout: evaluation as a JSON string, gold under widesearch_gold/
    ws = tmp_path / "ws"
    (ws / "widesearch_gold").mkdir(parents=True)
    (ws / "widesearch_gold" / "ws_en_001.csv").write_text("Name, Year\nA,2001\nB,2002\n")
    evaluation = {"required": ["name", "year"], "unique_columns": ["name"],
                  "eval_pipeline": {"year": {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": 0}}}
    (ws / "widesearch.jsonl").write_text(json.dumps({"instance_id": "ws_en_001", "query": "q",
                                                     "evaluation": json.dumps(evaluation), "language": "en"}) + "\n")
    (task,) = load_tasks(ws / "widesearch.jsonl")
    assert task.score("```markdown\n| Name | Year |\n|--|--|\n| A | 2001 |\n| B | 2003 |\n```").f1_by_item == 0.75
    bad = tmp_path / "bad.jsonl"
    for content, message in [
        ('{"instance_id": "a", "query": "q", "evaluation": {"required": ["x"]}}\n', r"bad.jsonl:1: .*missing field 'unique_columns'"),
        ('{"instance_id": "a", "query": "q", "answer": ["x"]}\n{"instance_id": "a", "query": "q", "answer": "y"}\n',
         r"bad.jsonl:2: instance_id 'a' already used on line 1"),
        ('{"instance_id": "z", "query": "q", "evaluation": ' + json.dumps(evaluation) + "}\n", r"bad.jsonl:1: gold table .*z.csv not found"),
        ('{"query": "q"}\n', "bad.jsonl:1: field 'instance_id'"),
        ("not json\n", "bad.jsonl:1: invalid JSON"),
    ]:
        bad.write_text(content)
        with pytest.raises(RecordError, match=message):
            load_tasks(bad, gold_dir=tmp_path / "gold")


def test_access_summary_covers_every_requested_item(small_world):
    _, tools = small_world
    for name in ("afghanistan", "germany", "brazil", "japan"):
        page = tools.access(f"https://leanlm.local/country/{name}", "capital, population, currency")
        facts = page.facts
        assert f"Capital: {facts['capital']}" in page.summary, page.summary
        assert f"Population: {facts['population']:,}" in page.summary and facts["currencies"][0] in page.summary
        assert page.text is None and len(page.summary) < 400
