"""The FASA evaluation harness (issue #14): task suite, metrics, the probing decode path, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch

from leanlm.fasa.evaluation.harness import ProbeAttention, greedy, prefill, teacher_forced_nll
from leanlm.fasa.evaluation.metrics import aggregate, score_answer, wilson
from leanlm.fasa.evaluation.run import FULL, QUICK, check_resume, read_jsonl
from leanlm.fasa.evaluation.tasks import TASKS, build_suite, build_trial
from leanlm.fasa.selectors import FASASelector, OracleSelector, QuestSelector


class WordTokenizer:
    """A whitespace tokenizer with a chat template: enough for the task builders, no model needed."""

    eos_token_id = 0

    def __call__(self, text, return_tensors=None):
        class Out:
            pass

        out = Out()
        out.input_ids = [list(range(len(t.split()))) for t in text] if isinstance(text, list) else \
            list(range(len(text.split())))
        return out

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}> {m['content']} </{m['role']}>\n" for m in messages) + "<assistant> "


@pytest.mark.parametrize("task", TASKS)
def test_every_task_is_deterministic_fits_its_length_and_states_its_answers(task):
    tok = WordTokenizer()
    a, b, c = build_trial(tok, task, 1200, 3), build_trial(tok, task, 1200, 3), build_trial(tok, task, 1200, 4)
    assert a.prompt == b.prompt and a.answers == b.answers
    assert a.prompt != c.prompt
    assert 600 < a.n_tokens <= 1200
    document = a.prompt.split("<assistant>")[0]
    for answer in a.answers:
        assert answer in document
    if task == "common_words":  # the expected words really are the most frequent entries
        entries = [line.split(". ", 1)[1] for line in document.splitlines() if ". " in line and line[0].isdigit()]
        counts = {w: entries.count(w) for w in set(entries)}
        top = sorted(counts, key=lambda w: -counts[w])[: len(a.answers)]
        assert set(top) == set(a.answers) and min(counts[w] for w in top) > max(
            v for w, v in counts.items() if w not in top)
    if task == "qa_article":
        assert a.answers[0] not in a.prompt.split("which year fills the blank")[1]
    if task in ("niah_single", "niah_multikey", "kv_retrieval", "variable_tracking"):
        assert a.haystack == "code" and c.haystack == "wiki"  # odd seeds: CPython sources; even: Wikipedia


def test_suite_is_length_major_and_round_robin_over_tasks():
    suite = build_suite(WordTokenizer(), ["niah_single", "qa_article"], [900, 1200], 2)
    assert [t.id for t in suite] == ["niah_single/900/0", "qa_article/900/0", "niah_single/900/1", "qa_article/900/1",
                                     "niah_single/1200/0", "qa_article/1200/0", "niah_single/1200/1",
                                     "qa_article/1200/1"]


def test_wilson_interval_and_scoring():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert math.isnan(wilson(0, 0)[0])
    # all or none correct: the bound at the point is exact (computed, 63 of n < 200 missed 1.0 by rounding,
    # e.g. n = 4, 10, 14: a negative error bar in the accuracy plot)
    assert all(wilson(n, n)[1] == 1.0 and wilson(0, n)[0] == 0.0 for n in range(1, 200))
    assert score_answer("The numbers are 12, 34", ["12", "34", "56"]) == (False, 2 / 3)
    assert score_answer("abc DEF", ["def"]) == (True, 1.0)
    rows = [{"method": "m", "budget": 64, "correct": c, "agree": a, "recall": [None, r]}
            for c, a, r in [(True, True, 0.5), (False, True, 0.7)]]
    agg = aggregate(rows)[("m", 64)]
    assert agg["correct"] == 1 and agg["agree"] == 2 and agg["recall"] == pytest.approx(0.6)


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def test_probe_path_equals_the_product_reference_path_and_dense_when_the_budget_covers_all():
    from leanlm.fasa import apply

    model = tiny_llama()
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(1))
    cont = torch.randint(0, 96, (9,), generator=torch.Generator().manual_seed(2))
    cache, last = prefill(model, ids)
    fcs = torch.stack([torch.randperm(8, generator=torch.Generator().manual_seed(i))[:2] for i in range(12)])
    selector = FASASelector.from_fcs(fcs.view(3, 4, 2), 16, "half")
    probe = ProbeAttention(selector, 10, 3)
    nll = teacher_forced_nll(model, cache, last, cont, 40, probe)
    # the same steps through leanlm.fasa.apply (reference backend) give the same log-likelihoods
    import copy

    ref_cache = copy.deepcopy(cache)
    ref = []
    with apply(model, selector=selector, budget=10, backend="reference", cache=False), torch.inference_mode():
        for i in range(8):
            pos = torch.tensor([[40 + i]])
            out = model(cont[None, i : i + 1], past_key_values=ref_cache, position_ids=pos, cache_position=pos[0])
            ref.append(float(-torch.log_softmax(out.logits[0, -1], -1)[cont[i + 1]]))
    assert nll == pytest.approx(ref, abs=1e-5)
    assert probe.probes.steps == [0, 8, 8]  # layer 0 dense, probes on the sparse layers
    means = probe.probes.means()
    assert 0 < means["recall"][1] <= 1 and 0 < means["mass"][1] <= 1 and means["rel_err"][1] > 0
    # full KV equals the model's own teacher-forced forward pass
    dense = teacher_forced_nll(model, cache, last, cont, 40, ProbeAttention(None, 0, 3))
    with torch.inference_mode():
        logits = model(torch.cat([ids[0], cont])[None]).logits[0, 40:-1]
    ref_dense = [float(-torch.log_softmax(logits[i], -1)[cont[i + 1]]) for i in range(8)]
    assert dense == pytest.approx(ref_dense, abs=1e-4)
    # a budget covering every key is dense attention, and the oracle probes report perfect recall there
    big = teacher_forced_nll(model, cache, last, cont, 40, ProbeAttention(QuestSelector(4), 4096, 3))
    assert big == pytest.approx(dense, abs=1e-4)
    oracle = ProbeAttention(OracleSelector(), 12, 3)
    greedy(model, cache, last, 40, 5, oracle)
    assert oracle.probes.means()["recall"][1:] == [pytest.approx(1.0)] * 2


def test_checkpoints_resume_and_refuse_other_settings(tmp_path):
    check_resume(tmp_path, dict(QUICK))
    check_resume(tmp_path, {**QUICK, "n_per_task": 5, "lengths": [4096]})  # sizes may grow
    with pytest.raises(ValueError, match="budgets"):
        check_resume(tmp_path, {**QUICK, "budgets": [32]})
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "tor')  # killed mid-write
    assert read_jsonl(path) == [{"id": "a"}]
    path.write_text('{"id": "b", "tor\n' + json.dumps({"id": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"answers\.jsonl:1"):
        read_jsonl(path)
    assert FULL["n_per_task"] >= 30 and FULL["budgets"] == [64, 128, 256, 512]


def test_ablations_run_at_their_budgets_and_main_methods_at_every_budget():
    from leanlm.fasa.evaluation.run import MAIN_METHODS, method_table

    table = {name: budgets for name, _, budgets in method_table(FULL)}
    assert table["full KV"] == [0]
    assert all(table[m] == [64, 128, 256, 512] for m in MAIN_METHODS if m != "full KV")
    ablations = [m for m in FULL["methods"] if m not in MAIN_METHODS]
    assert len(ablations) == 4 and all(table[m] == [64, 256] for m in ablations)
    assert [b for n, b in table.items() if n.startswith("FASA [calibrated")] == [[256], [256]]
    # without the key every method runs at every budget (the quick config; older run directories)
    no_key = {k: v for k, v in FULL.items() if k != "ablation_budgets"}
    assert all(b == [64, 128, 256, 512] for n, _, b in method_table(no_key)
               if n != "full KV" and not n.startswith("FASA [calibrated"))


def test_agreement_compares_the_answer_span_only():
    from leanlm.fasa.evaluation.report import answer_span, with_agreement

    assert answer_span("584261. This is the") == answer_span("584261.\n\nBr") == "584261"
    assert answer_span(" CJYSC, GNFYT and REQWM. Done") == "CJYSC, GNFYT and REQWM"
    rows = [{"id": "a", "method": "full KV", "text": "584261. This is the"},
            {"id": "a", "method": "m", "text": "584261. This number"}, {"id": "a", "method": "n", "text": "5842."},
            {"id": "b", "method": "m", "text": "1"}]
    assert [r["agree"] for r in with_agreement(rows, rows)] == [True, True, False, False]


def test_report_from_checkpoints_tabulates_a_partial_run_without_a_model(tmp_path):
    import shutil

    from leanlm.fasa.calibration import resolve_calibration
    from leanlm.fasa.evaluation.bench import report_from_checkpoints

    run = tmp_path / "run"
    check_resume(run, dict(QUICK))
    shutil.copy(resolve_calibration("embedded"), run / "calibration-wiki.json")
    layers = [None] + [0.5] * 29
    length = QUICK["lengths"][0]  # the report tabulates the lengths of the run's own config
    rows = [{"id": f"niah_single/{length}/{i}", "task": "niah_single", "length": length, "method": m, "budget": b,
             "text": t, "correct": c, "recall": layers, "mass": layers, "rel_err": layers}
            for i in range(3) for m, b, t, c in [("full KV", 0, "123. x", True), ("FASA", 64, "123. y", True),
                                                 ("FASA", 256, "12.", False), ("SparQ", 64, "9.", False),
                                                 ("SparQ", 256, "123.", True)]]
    (run / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = report_from_checkpoints(run, tmp_path / "r.md")
    m = result["metrics"]
    assert m["fasa_minus_full_256"] == -100.0 and m["fasa_agree_256"] == "0/3"
    assert m["fasa_margin_over_best_baseline"] == -100.0  # at 256 SparQ is right and FASA is not
    text = (tmp_path / "r.md").read_text()
    assert "| FASA | 100 [44, 100] (3/3) | 0 [0, 56] (0/3) | 3/3 / 0/3 |" in text
    assert (tmp_path / "r-contextual-agreement--ca--heatmap--k-256.png").exists()


def _all_selectors(n_layers: int = 3, n_heads: int = 4, n_kv: int = 2, d: int = 16):
    from leanlm.fasa.selectors import (
        DoubleSparsitySelector,
        H2OSelector,
        LokiSelector,
        SnapKVDecodeSelector,
        SparQSelector,
        StreamingSelector,
    )

    g = torch.Generator().manual_seed(5)
    fcs = torch.stack([torch.randperm(d // 2, generator=g)[:2] for _ in range(n_layers * n_heads)])
    basis = torch.linalg.qr(torch.randn(n_layers, n_kv, d, d, generator=g))[0][..., :4]
    channels = torch.stack([torch.randperm(d, generator=g)[:4] for _ in range(n_layers * n_heads)])
    return {"full KV": lambda: None, "oracle": OracleSelector,
            "FASA": lambda: FASASelector.from_fcs(fcs.view(n_layers, n_heads, 2), d, "half"),
            "FASA pooled": lambda: FASASelector.from_fcs(fcs.view(n_layers, n_heads, 2), d, "half", pooled=True),
            "Quest": lambda: QuestSelector(4), "Streaming": lambda: StreamingSelector(2),
            "SparQ": lambda: SparQSelector(r=4),
            "DS": lambda: DoubleSparsitySelector(channels.view(n_layers, n_heads, 4)),
            "Loki": lambda: LokiSelector(basis), "H2O": lambda: H2OSelector(budget=10),
            "SnapKV": lambda: SnapKVDecodeSelector(budget=10, window=3, interval=4)}


def test_fast_decode_path_is_bit_identical_to_deep_copies_and_plain_probes():
    """The shared rewindable prefill + per-head probes give exactly (==) the tokens, NLLs and probe sums of the
    straightforward path (a deep copy of the prefill per method, repeat_kv copies, a second dense pass),
    for every selector class decoded one after another from the same shared buffers."""
    from leanlm.fasa.evaluation.harness import RewindableCache

    model = tiny_llama(3)
    ids = torch.randint(0, 96, (1, 48), generator=torch.Generator().manual_seed(7))
    cont = torch.randint(0, 96, (7,), generator=torch.Generator().manual_seed(8))
    cache, last = prefill(model, ids)
    shared = RewindableCache(prefill(model, ids)[0], 48 + 12)
    for name, make in _all_selectors().items():
        plain, fast = ProbeAttention(make(), 10, 3, reference=True), ProbeAttention(make(), 10, 3)
        assert greedy(model, shared, last, 48, 9, fast) == greedy(model, cache, last, 48, 9, plain), name
        assert fast.probes == plain.probes, name
        plain, fast = ProbeAttention(make(), 10, 3, reference=True), ProbeAttention(make(), 10, 3)
        assert teacher_forced_nll(model, shared, last, cont, 48, fast) == \
            teacher_forced_nll(model, cache, last, cont, 48, plain), name
        assert fast.probes == plain.probes and (name == "full KV" or fast.probes.steps[1] == 6), name
    assert shared.cache.get_seq_length() == 48 + 6  # the last decode's rows; the next fresh() drops them
    assert shared.fresh().get_seq_length() == 48
    with pytest.raises(ValueError, match="capacity"):
        greedy(model, RewindableCache(prefill(model, ids)[0], 50), last, 48, 9, ProbeAttention(None, 0, 3))


@pytest.mark.parametrize("t", [37, 4099])
def test_gqa_helpers_equal_the_expanded_products_bit_for_bit(t):
    from leanlm.fasa.selectors import expand_kv, gqa_gather_dims, gqa_logits, gqa_weighted

    g = torch.Generator().manual_seed(t)
    q, k, v = torch.randn(1, 9, 1, 64, generator=g), torch.randn(1, 3, t, 64, generator=g), torch.randn(1, 3, t, 64,
                                                                                                          generator=g)
    assert torch.equal(gqa_logits(q, k), q @ expand_kv(k, 3).transpose(-1, -2))
    w = torch.softmax(gqa_logits(q, k), -1)
    assert torch.equal(gqa_weighted(w, v), w @ expand_kv(v, 3))
    dims = torch.randint(0, 64, (1, 9, 16), generator=g)
    assert torch.equal(gqa_gather_dims(k, dims), expand_kv(k, 3).gather(-1, dims[:, :, None].expand(1, 9, t, 16)))


def test_presses_from_one_shared_prefill_equal_prefilling_under_each_press():
    import kvpress

    from leanlm.fasa.evaluation.run import capture_prefill, press_caches

    model = tiny_llama(4)
    ids = torch.randint(0, 96, (1, 120), generator=torch.Generator().manual_seed(9))
    named = {"SnapKV": kvpress.SnapKVPress(compression_ratio=0.6, window_size=8),
             "StreamingLLM": kvpress.StreamingLLMPress(compression_ratio=0.6),
             "TOVA": kvpress.TOVAPress(compression_ratio=0.6), "KNorm": kvpress.KnormPress(compression_ratio=0.6),
             "ExpectedAttention": kvpress.ExpectedAttentionPress(compression_ratio=0.6)}
    cache, last, captured = capture_prefill(model, ids)
    shared = press_caches(model, cache, captured, named)
    for name, press in named.items():
        with press(model):
            ref, ref_last = prefill(model, ids)
        assert torch.equal(ref_last, last), name
        assert ref.get_seq_length() == shared[name].get_seq_length() == 48, name
        for a, b in zip(ref.layers, shared[name].layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values), name


def test_prefill_of_the_last_row_only_gives_the_plain_cache_and_first_token():
    """The default prefill (logits of the last position only, argmax proven by the rounding bound) leaves the
    same cache bit for bit and the same first token as the plain prefill (every position's logits); where the
    bound cannot prove it, the plain path's exact logits are returned."""
    import leanlm.fasa.evaluation.harness as harness
    from leanlm.fasa.evaluation.harness import same_argmax

    model = tiny_llama(3)
    proven = []
    real = harness.same_argmax
    harness.same_argmax = lambda *a: proven.append(real(*a)) or proven[-1]
    try:
        cache, last = prefill(model, torch.randint(0, 96, (1, 30), generator=torch.Generator().manual_seed(0)))
    finally:
        harness.same_argmax = real
    assert proven == [True]  # the fast path is taken on an ordinary prompt
    for seed in range(4):
        ids = torch.randint(0, 96, (1, 30 + 17 * seed), generator=torch.Generator().manual_seed(seed))
        cache, last = prefill(model, ids)
        ref_cache, ref_last = prefill(model, ids, last_only=False)
        assert int(last[0].argmax()) == int(ref_last[0].argmax())
        for a, b in zip(cache.layers, ref_cache.layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # the bound: a clear winner is proven; an exact tie or a lead inside the error bound is not
    head = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4], [-1, 0, 0, 0]]))
    hidden = torch.tensor([[0.5, 0.25, -1, 2]])
    with torch.inference_mode():
        tied = head(hidden)
        assert not same_argmax(head, hidden, tied)
        head.weight[1, 3] = 4 - 1e-6  # lead ~2e-6, below 4 * gamma_4 * sum|w h| ~ 1e-5
        assert not same_argmax(head, hidden, head(hidden))
        head.weight[1, 3] = 3.5
        assert same_argmax(head, hidden, head(hidden))
        assert not same_argmax(head, hidden, head(hidden) * 2)  # not the plain linear map: unproven
    # unproven -> the plain path, whose last row is returned exactly
    calls = []
    harness.same_argmax = lambda *a: calls.append(1) and False
    try:
        cache, last = prefill(model, ids)
    finally:
        harness.same_argmax = real
    assert calls and torch.equal(last, ref_last)


def test_shared_logits_computes_one_product_per_query_and_keys():
    from leanlm.fasa.selectors import gqa_logits, shared_logits

    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 6, 1, 8, generator=g), torch.randn(1, 2, 50, 8, generator=g)
    assert gqa_logits(q, k) is not gqa_logits(q, k)  # no memo outside the block
    with shared_logits():
        first = gqa_logits(q, k)
        assert gqa_logits(q, k) is first and torch.equal(first, gqa_logits(q.clone(), k))
        k[0, 0, 0, 0] += 1.0  # an in-place change is a miss
        again = gqa_logits(q, k)
        assert again is not first and not torch.equal(again, first)
        with shared_logits():  # nested blocks do not see the outer memo
            assert gqa_logits(q, k) is not again
        assert gqa_logits(q, k) is again
    assert gqa_logits(q, k) is not again


@pytest.mark.parametrize("t", [37, 4099])
def test_numba_gathers_equal_the_torch_indexing_bit_for_bit(t, monkeypatch):
    """The compiled column gathers (SparQ / Double Sparsity's gqa_gather_dims, FASA's TIP columns) copy the same
    values into the same layout as torch's indexing, from a strided cache view like the RewindableCache's."""
    import leanlm.fasa.selectors.base as base
    from leanlm.fasa.selectors import (
        DoubleSparsitySelector,
        FASASelector,
        SparQSelector,
        gqa_gather_dims,
        numba_gathers,
    )

    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(t)
    buffer = torch.randn(1, 3, t + 40, 64, generator=g)
    keys = buffer[:, :, :t]  # a view into preallocated rows, as decoding sees it
    q = torch.randn(1, 9, 1, 64, generator=g)
    dims = torch.randint(0, 64, (1, 9, 16), generator=g)
    fcs = torch.stack([torch.randperm(32, generator=g)[:8] for _ in range(2 * 9)]).view(2, 9, 8)
    selectors = [FASASelector.from_fcs(fcs, 64, "half"), FASASelector.from_fcs(fcs, 64, "half", pooled=True),
                 SparQSelector(r=16), DoubleSparsitySelector(dims.view(9, 16).expand(2, 9, 16).clone())]
    assert numba_gathers(keys) is not None
    fast = [gqa_gather_dims(keys, dims)] + [s.scores(q, keys, 1) for s in selectors]
    monkeypatch.setattr(base, "_KERNELS", False)  # the torch indexing
    assert numba_gathers(keys) is None
    plain = [gqa_gather_dims(keys, dims)] + [s.scores(q, keys, 1) for s in selectors]
    for a, b in zip(fast, plain, strict=True):
        assert torch.equal(a, b) and a.stride() == b.stride()
    kv_of_head = torch.arange(9) // 3
    d = selectors[0].dims[1]
    ref = keys[:, kv_of_head[:, None], :, d]
    out = torch.empty(9, 16, 1, t)
    from leanlm.fasa.numba_kernels import gather_dims_by_row

    gather_dims_by_row(keys.numpy(), d.contiguous().numpy(), out.numpy())
    assert torch.equal(out, ref) and out.stride() == ref.stride()


def test_wait_for_memory_blocks_until_enough_is_available(monkeypatch):
    import leanlm.fasa.evaluation.run as run

    real = run.available_gb()
    assert real is None or real > 0
    readings = iter([1.0, 2.5, 4.0, 9.9])
    monkeypatch.setattr(run, "available_gb", lambda: next(readings))
    logged = []
    run.wait_for_memory(3.5, lambda *a: logged.append(a), poll_s=0)
    assert next(readings) == 9.9 and len(logged) == 1  # waited through 1.0 and 2.5, started at 4.0, said so once
    run.wait_for_memory(0, lambda *a: logged.append(a))  # 0: no check at all
    assert len(logged) == 1
