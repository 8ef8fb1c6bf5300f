"""Baseline selectors of the FASA evaluation (issue #14): exact budgets, brute-force references, Quest pages."""

from __future__ import annotations

import pytest
import torch

from leanlm.fasa.selectors import (
    DoubleSparsitySelector,
    FASASelector,
    ForcedWindow,
    H2OSelector,
    KeyQueryStats,
    LokiSelector,
    OracleSelector,
    QuestPages,
    QuestSelector,
    SnapKVDecodeSelector,
    SparQSelector,
    StreamingSelector,
)
from leanlm.fasa.selectors.quest import page_bounds

B, HQ, HKV, D, LAYERS = 1, 4, 2, 16, 2


def qk(t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, HQ, 1, D, generator=gen), torch.randn(B, HKV, t, D, generator=gen)


def stats(seed: int = 0) -> KeyQueryStats:
    gen = torch.Generator().manual_seed(seed)
    s = KeyQueryStats.empty(LAYERS, HQ, HKV, D)
    for layer in range(LAYERS):
        s.add(layer, torch.randn(HQ, 40, D, generator=gen) * torch.linspace(0.1, 3, D),
              torch.randn(HKV, 40, D, generator=gen) * torch.linspace(3, 0.1, D))
    return s


def all_selectors(budget: int) -> dict[str, object]:
    fcs = torch.stack([torch.randperm(D // 2, generator=torch.Generator().manual_seed(i))[:2]
                       for i in range(LAYERS * HQ)]).view(LAYERS, HQ, 2)
    return {
        "oracle": OracleSelector(), "fasa": FASASelector.from_fcs(fcs, D, "half"),
        "fasa pooled": FASASelector.from_fcs(fcs, D, "half", pooled=True), "quest": QuestSelector(4),
        "quest recomputed": QuestSelector(4, incremental=False), "stream": StreamingSelector(2),
        "sparq": SparQSelector(r=4), "double sparsity": DoubleSparsitySelector.from_stats(stats(), 4),
        "loki": LokiSelector.from_stats(stats(), 4), "h2o": H2OSelector(budget=budget),
        "snapkv": SnapKVDecodeSelector(budget=budget, window=3, interval=4, kernel=3),
        "fasa + forced window": ForcedWindow(FASASelector.from_fcs(fcs, D, "half"), n_sink=1, n_recent=2),
    }


@pytest.mark.parametrize("budget", [5, 16])
def test_every_selector_returns_exactly_budget_distinct_tokens_over_a_growing_cache(budget):
    selectors = all_selectors(budget)
    _, keys = qk(40)
    for step in range(12):  # the cache grows by one row per decode step, as in decoding
        query, new = qk(1, seed=100 + step)
        keys = torch.cat([keys, new], dim=2)
        for name, sel in selectors.items():
            for layer in range(LAYERS):
                idx = sel.select(query, keys, budget, layer_idx=layer)
                assert idx.shape == (B, HQ, budget), name
                assert all(len(set(h.tolist())) == budget for h in idx[0]), name
                assert int(idx.max()) < keys.shape[2], name


def brute_force_topk(query: torch.Tensor, keys: torch.Tensor, k: int) -> list[set[int]]:
    out = []
    for h in range(HQ):
        kv = h // (HQ // HKV)
        logits = [float(query[0, h, 0] @ keys[0, kv, j]) for j in range(keys.shape[2])]
        out.append(set(sorted(range(len(logits)), key=lambda j: -logits[j])[:k]))
    return out


def test_oracle_equals_brute_force_and_full_rank_subspace_methods_equal_the_oracle():
    query, keys = qk(50, seed=3)
    truth = brute_force_topk(query, keys, 7)
    assert [set(h.tolist()) for h in OracleSelector().select(query, keys, 7)[0]] == truth
    full = {"sparq r=d": SparQSelector(r=D), "double sparsity all channels": DoubleSparsitySelector.from_stats(stats(), D),
            "loki full basis": LokiSelector.from_stats(stats(), D)}
    for name, sel in full.items():  # every dim (or an orthonormal basis of them) ranks exactly as q·k
        assert [set(h.tolist()) for h in sel.select(query, keys, 7)[0]] == truth, name


def test_forced_window_keeps_sinks_and_recent_and_fills_the_rest_by_the_inner_ranking():
    query, keys = qk(50, seed=4)
    t, budget, n_sink, n_recent = keys.shape[2], 9, 2, 3
    forced = set(range(n_sink)) | set(range(t - n_recent, t))
    got = ForcedWindow(OracleSelector(), n_sink=n_sink, n_recent=n_recent).select(query, keys, budget)
    for h in range(HQ):  # brute force: the window, then the oracle's best of the other tokens
        kv = h // (HQ // HKV)
        rest = sorted(set(range(t)) - forced, key=lambda j: -float(query[0, h, 0] @ keys[0, kv, j]))
        assert set(got[0, h].tolist()) == forced | set(rest[: budget - len(forced)])
    with pytest.raises(ValueError, match="exceeds the budget of 4"):
        ForcedWindow(OracleSelector(), n_sink=2, n_recent=3).select(query, keys, 4)


def test_sparq_scores_only_the_largest_query_components():
    query, keys = qk(30, seed=4)
    scores = SparQSelector(r=3).scores(query, keys, 0)
    for h in range(HQ):
        dims = query[0, h, 0].abs().topk(3).indices
        ref = keys[0, h // 2][:, dims] @ query[0, h, 0, dims]
        torch.testing.assert_close(scores[0, h], ref)


def test_double_sparsity_and_loki_calibration_statistics_are_exact():
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(HQ, 9, D, generator=gen), torch.randn(HKV, 11, D, generator=gen)
    s = KeyQueryStats.empty(1, HQ, HKV, D)
    s.add(0, q[:, :4], k[:, :6])
    s.add(0, q[:, 4:], k[:, 6:])
    kk = k.repeat_interleave(HQ // HKV, 0).double()
    brute = (q.double()[:, :, None, :] * kk[:, None, :, :]).abs().mean((1, 2))  # mean over all (query, key) pairs
    torch.testing.assert_close(s.channel_importance()[0], brute)
    for h in range(HKV):
        torch.testing.assert_close(s.key_covariance()[0, h], torch.cov(k[h].double().T, correction=0))


def test_quest_page_bound_is_an_upper_bound_of_the_true_page_maximum():
    query, keys = qk(45, seed=6)  # 45 = 11 full pages of 4 + a partial page
    sel = QuestSelector(4)
    bound = sel.page_scores(query, keys, 0)  # (B, H_q, P)
    assert bound.shape[-1] == 12
    for h in range(HQ):
        logits = keys[0, h // 2] @ query[0, h, 0]
        for p in range(12):
            true_max = float(logits[p * 4 : (p + 1) * 4].max())
            assert float(bound[0, h, p]) >= true_max - 1e-5
    # tight for a page of one key: the bound is that key's logit
    one = page_bounds(keys[:, :, :1], 4)
    torch.testing.assert_close(one[0], keys[:, :, :1])


def test_quest_incremental_metadata_equals_recomputed_metadata():
    _, keys = qk(30, seed=7)  # prefill ends mid-page
    pages = QuestPages(8)
    pages.update(keys)
    for step in range(21):  # cross several page boundaries one row at a time
        keys = torch.cat([keys, qk(1, seed=200 + step)[1]], dim=2)
        pages.update(keys)
        kmin, kmax = page_bounds(keys, 8)
        torch.testing.assert_close(pages.kmin, kmin)
        torch.testing.assert_close(pages.kmax, kmax)
    assert pages.length == 51
    with pytest.raises(ValueError, match="shrank"):
        pages.update(keys[:, :, :10])


def test_quest_incremental_and_recomputed_select_the_same_tokens():
    _, keys = qk(33, seed=8)
    inc, ref = QuestSelector(4), QuestSelector(4, incremental=False)
    for step in range(6):
        query, new = qk(1, seed=300 + step)
        keys = torch.cat([keys, new], dim=2)
        a = inc.select(query, keys, 8, layer_idx=1)
        b = ref.select(query, keys, 8, layer_idx=1)
        assert [set(h.tolist()) for h in a[0]] == [set(h.tolist()) for h in b[0]]


@pytest.mark.parametrize("cls", [H2OSelector, SnapKVDecodeSelector])
def test_eviction_selectors_never_bring_back_an_evicted_token(cls):
    sel = cls(budget=6) if cls is H2OSelector else cls(budget=6, window=2, interval=3, kernel=3)
    _, keys = qk(20, seed=9)
    evicted: list[set[int]] = [set() for _ in range(HQ)]
    for step in range(10):
        query, new = qk(1, seed=400 + step)
        keys = torch.cat([keys, new], dim=2)
        idx = sel.select(query, keys, 6, layer_idx=0)
        t = keys.shape[2]
        for h in range(HQ):
            chosen = set(idx[0, h].tolist())
            assert not chosen & evicted[h]
            assert t - 1 in chosen  # the newest token is always attended
            evicted[h] |= set(range(t)) - chosen


def test_h2o_keeps_the_recent_window_and_the_heaviest_hitters():
    query, keys = qk(12, seed=10)
    sel = H2OSelector(budget=6, n_recent=2)
    idx = sel.select(query, keys, 6, layer_idx=0)
    att = torch.softmax((query @ keys.repeat_interleave(2, 1).transpose(-1, -2))[0, :, 0] * D ** -0.5, -1)
    for h in range(HQ):
        heavy = set(att[h, :10].topk(4).indices.tolist())  # 4 heavy hitters among the non-recent tokens
        assert set(idx[0, h].tolist()) == heavy | {10, 11}


def test_stateful_selectors_refuse_a_shrinking_cache():
    for sel in (H2OSelector(budget=4), SnapKVDecodeSelector(budget=4)):
        query, keys = qk(20)
        sel.select(query, keys, 4)
        with pytest.raises(ValueError, match="shrank"):
            sel.select(query, keys[:, :, :10], 4)
