"""STVP keep-sets against hand-computed cosine rankings, budget arithmetic, chunk assignment, VGAS size and STE."""

from __future__ import annotations

import math

import pytest
import torch

from leanlm.omnisift import (
    VGAS,
    DyCokeTTM,
    OmniSIFT,
    OmniZipStyle,
    RandomPruning,
    build_layout,
    drop_count,
    keep_count,
    paper_ratios,
    parameter_count,
    solve_rho_v,
    stvp_masks,
)
from leanlm.omnisift.layout import AVLayout, Chunk
from leanlm.omnisift.presets import kept_tokens
from leanlm.omnisift.vgas import straight_through, topk_mask

torch.set_num_threads(1)


def py_cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def py_keep_least_similar(sims: list[float], n_drop: int) -> set[int]:
    order = sorted(range(len(sims)), key=lambda i: (-sims[i], i))
    return set(range(len(sims))) - set(order[:n_drop])


def test_spatial_keep_set_matches_hand_computed_example():
    # F1 tokens in 2-D; mean = (1.0, 0.625). cos to the mean by hand:
    # t0=(1,0): 0.848; t1=(0,1): 0.530; t2=(1,1): 0.974; t3=(2,.5): 0.942
    f1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.5]])
    mean = [1.0, 0.625]
    sims = [py_cos(t, mean) for t in f1.tolist()]
    # ranking most similar first: t2 (1,1), t3 (2,.5), t0 (1,0), t1 (0,1)
    assert sorted(range(4), key=lambda i: -sims[i]) == [2, 3, 0, 1]
    keep1, keep2 = stvp_masks(f1, None, rho_v=0.5)  # k = int(4*0.5) = 2: drop t2 and t3
    assert keep2 is None
    assert keep1.tolist() == [True, True, False, False]


def test_temporal_keep_set_matches_hand_computed_example():
    f1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.5]])
    f2 = torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0], [-2.0, 0.5]])
    # position-matched cos(F2_i, F1_i): 0.995, 0.0, 1.0, -0.882 -> drop the 2 most similar: t2, t0
    keep1, keep2 = stvp_masks(f1, f2, rho_v=0.5)
    assert keep2.tolist() == [False, True, False, True]
    assert keep1.tolist() == [True, True, False, False]  # F2 pruning does not touch F1


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rho_v", [0.0, 0.3, 0.67, 0.77, 0.9])
def test_stvp_equals_brute_force_cosine_ranking(seed, rho_v):
    g = torch.Generator().manual_seed(seed)
    n, d = 12, 7
    f1, f2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    f2[3] = f1[3] * 2.0  # an unchanged token (cos = 1) must be dropped first from F2 when k > 0
    keep1, keep2 = stvp_masks(f1, f2, rho_v)
    k = int(n * rho_v)
    rows1, rows2 = f1.tolist(), f2.tolist()
    mean = [sum(col) / n for col in zip(*rows1, strict=False)]
    want1 = py_keep_least_similar([py_cos(t, mean) for t in rows1], k)
    want2 = py_keep_least_similar([py_cos(b, a) for a, b in zip(rows1, rows2, strict=False)], k)
    assert set(torch.nonzero(keep1).flatten().tolist()) == want1
    assert set(torch.nonzero(keep2).flatten().tolist()) == want2
    if k > 0:
        assert not keep2[3]


def test_stvp_batched_equals_per_chunk():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(6, 10, 5, generator=g), torch.randn(6, 10, 5, generator=g)
    k1, k2 = stvp_masks(f1, f2, 0.6)
    for i in range(6):
        a, b = stvp_masks(f1[i], f2[i], 0.6)
        assert torch.equal(a, k1[i]) and torch.equal(b, k2[i])


def test_unequal_frames_keep_second_frame_whole():
    keep1, keep2 = stvp_masks(torch.randn(8, 4), torch.randn(6, 4), 0.5)
    assert int(keep1.sum()) == 4
    assert keep2.all() and keep2.numel() == 6


def test_budget_arithmetic():
    assert drop_count(320, 0.67) == 214 and keep_count(320, 0.67) == 106
    assert drop_count(50, 0.4) == 20 and keep_count(50, 0.5) == 25
    assert drop_count(7, 0.3) == 2  # int() truncates: 2.1 -> 2
    with pytest.raises(ValueError):
        drop_count(10, 1.0)
    with pytest.raises(ValueError):
        drop_count(10, -0.1)
    # paper's example: 320-token frames, 50 audio per chunk at the 25% preset keeps about a quarter
    rho_v, rho_a = paper_ratios("omnisift", 0.25)
    assert (rho_v, rho_a) == (0.77, 0.5)
    kept = kept_tokens([[320, 320]], [50], rho_v, rho_a)
    assert kept == 2 * (320 - int(320 * 0.77)) + 25 == 173
    assert abs(kept / 690 - 0.25) < 0.01
    # odd frame count: the last chunk is spatial-only; 1-token audio chunks keep their token
    assert kept_tokens([[16, 16], [16]], [10, 1], 0.5, 0.5) == 8 + 8 + 5 + 8 + 1


def test_solve_rho_v_hits_target_retention():
    frames, audio = [[16, 16]] * 4, [10] * 4
    total = 4 * 42
    for rho_a, target in [(0.4, 0.35), (0.5, 0.25), (0.6, 0.25)]:
        rho_v = solve_rho_v(frames, audio, rho_a, target)
        kept = kept_tokens(frames, audio, rho_v, rho_a)
        # no other 1/16 step is closer to the target
        best = min(abs(kept_tokens(frames, audio, (j + 0.5) / 16, rho_a) - target * total) for j in range(16))
        assert abs(kept - target * total) == best


def make_sequence(frame_ts, n_p, audio_ts, video_id=5, audio_id=3, text=2):
    """input_ids and temporal ids: text, then frames (n_p tokens each) and audio tokens in given t order."""
    ids, ts = [1] * text, list(range(text))
    items = [(t, "v") for t in frame_ts] + [(t, "a") for t in audio_ts]
    items.sort(key=lambda x: (x[0], x[1] == "a"))
    for t, kind in items:
        if kind == "v":
            ids += [video_id] * n_p
            ts += [t] * n_p
        else:
            ids.append(audio_id)
            ts.append(t)
    end = max(ts) + 1
    ids += [1, 1]
    ts += [end, end + 1]
    return torch.tensor(ids), torch.tensor(ts)


def test_chunk_assignment_from_temporal_ids():
    # 5 frames at t = 2, 27, 52, 77, 102 (25 per frame), audio t = 2..126 (25 per second)
    ids, ts = make_sequence([2, 27, 52, 77, 102], 4, list(range(2, 127)))
    layout = build_layout(ids, ts, video_token_id=5, audio_token_id=3)
    assert len(layout.chunks) == 3
    assert [len(c.frames) for c in layout.chunks] == [2, 2, 1]  # odd count: last chunk spatial-only
    for chunk, (lo, hi) in zip(layout.chunks, [(2, 52), (52, 102), (102, int(ts.max()) + 1)], strict=False):
        audio_t = ts[chunk.audio].tolist()
        assert audio_t == list(range(lo, min(hi, 127)))
        for frame in chunk.frames:
            assert frame.numel() == 4 and (ids[frame] == 5).all()
    assert sum(c.audio.numel() for c in layout.chunks) == 125 == layout.audio.numel()
    assert torch.equal(torch.cat([f for c in layout.chunks for f in c.frames]), layout.video)


def test_chunk_assignment_irregular_times_and_trailing_audio():
    ids, ts = make_sequence([0, 10, 40, 41], 3, [0, 5, 9, 10, 39, 40, 60, 99])
    layout = build_layout(ids, ts, 5, 3)
    assert [ts[c.frames[0][0]].item() for c in layout.chunks] == [0, 40]
    assert [ts[c.audio].tolist() for c in layout.chunks] == [[0, 5, 9, 10, 39], [40, 60, 99]]


def test_layout_without_video_has_no_chunks():
    ids, ts = make_sequence([], 3, [0, 1, 2])
    layout = build_layout(ids, ts, 5, 3)
    assert layout.chunks == [] and not layout.has_audio_visual


def test_vgas_parameter_count():
    assert sum(p.numel() for p in VGAS(3584).parameters()) == 4_856_321
    assert parameter_count(3584) == 4_856_321
    assert sum(p.numel() for p in VGAS(2048).parameters()) == parameter_count(2048) == 3_283_457


def test_vgas_padding_equals_removal_and_scores_in_unit_interval():
    torch.manual_seed(0)
    sel = VGAS(16, dim=32, num_heads=4).eval()
    audio, video = torch.randn(5, 16), torch.randn(7, 16)
    valid = torch.tensor([True, False, True, True, False, True, True])
    with torch.no_grad():
        padded = sel(audio, video, valid)
        removed = sel(audio, video[valid])
    assert torch.allclose(padded, removed, atol=1e-6)
    assert ((padded > 0) & (padded < 1)).all()


def test_straight_through_value_and_gradient():
    s = torch.tensor([0.2, 0.9, 0.6, 0.1], requires_grad=True)
    hard = topk_mask(s, 2)
    assert hard.tolist() == [0.0, 1.0, 1.0, 0.0]
    g = straight_through(hard, s)
    assert torch.allclose(g, hard)
    e = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    w = torch.tensor([0.5, -1.0])
    loss = ((e * g.unsqueeze(-1))[hard.bool()] @ w).sum()  # only kept tokens reach the loss
    loss.backward()
    # dL/ds_j = <dL/de'_j, e_j> = e_j·w for kept tokens, 0 for dropped ones
    assert s.grad.tolist() == pytest.approx([0.0, 3 * 0.5 - 4.0, 5 * 0.5 - 6.0, 0.0])


def regular_layout(chunks=3, n_p=8, n_a=6, text=3):
    """A synthetic [L] layout: text, then per chunk F1, F2, audio; returns (layout, seq_len)."""
    pos = text
    out = []
    for _ in range(chunks):
        f1 = torch.arange(pos, pos + n_p)
        f2 = torch.arange(pos + n_p, pos + 2 * n_p)
        a = torch.arange(pos + 2 * n_p, pos + 2 * n_p + n_a)
        out.append(Chunk([f1, f2], a))
        pos += 2 * n_p + n_a
    video = torch.cat([torch.cat(c.frames) for c in out])
    audio = torch.cat([c.audio for c in out])
    return AVLayout(out, video, audio), pos + 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: OmniSIFT(0.67, 0.4, hidden_size=16, selector_dim=32, selector_heads=4),
        lambda: OmniSIFT(0.67, 0.4, hidden_size=16, selector_dim=32, selector_heads=4, audio="self"),
        lambda: OmniSIFT(0.67, 0.4, hidden_size=16, audio="random", spatial=False),
        lambda: OmniSIFT(0.67, 0.4, hidden_size=16, audio="random", video="random"),
        lambda: RandomPruning(0.67, 0.4),
        lambda: DyCokeTTM(0.67, 0.4),
        lambda: OmniZipStyle(0.67, 0.4),
    ],
)
def test_every_method_spends_the_same_budget_and_never_drops_text(make):
    torch.manual_seed(0)
    comp = make().eval()
    layouts, seq = zip(*[regular_layout(), regular_layout()], strict=False)
    embeds = torch.randn(2, seq[0], 16)
    with torch.no_grad():
        result = comp(embeds, list(layouts))
    for b, layout in enumerate(layouts):
        v_drop, a_drop = comp.budget(layout)
        assert (v_drop, a_drop) == (3 * 2 * int(8 * 0.67), 3 * int(6 * 0.4))
        assert int((~result.keep[b, layout.video]).sum()) == v_drop
        assert int((~result.keep[b, layout.audio]).sum()) == a_drop
        av = torch.zeros(seq[0], dtype=torch.bool)
        av[layout.video] = True
        av[layout.audio] = True
        assert result.keep[b, ~av].all()


def test_omnisift_video_keep_set_is_stvp_per_chunk_and_audio_is_vgas_topk():
    torch.manual_seed(1)
    comp = OmniSIFT(0.5, 0.5, hidden_size=16, selector_dim=32, selector_heads=4).eval()
    layout, seq = regular_layout(chunks=2)
    embeds = torch.randn(1, seq, 16)
    with torch.no_grad():
        result = comp(embeds, [layout])
        for chunk in layout.chunks:
            f1, f2 = embeds[0, chunk.frames[0]], embeds[0, chunk.frames[1]]
            k1, k2 = stvp_masks(f1, f2, 0.5)
            assert torch.equal(result.keep[0, chunk.frames[0]], k1)
            assert torch.equal(result.keep[0, chunk.frames[1]], k2)
            kept_video = torch.cat([f1[k1], f2[k2]])
            scores = comp.selector(embeds[0, chunk.audio], kept_video)
            want = set(torch.topk(scores, 3).indices.tolist())
            got = set(torch.nonzero(result.keep[0, chunk.audio]).flatten().tolist())
            assert got == want


def test_omnizip_and_dycoke_follow_their_scores():
    from leanlm.omnisift.baselines import dpc_knn_scores, spread_budget

    assert spread_budget([1.0, 1.0], [10, 10], 6) == [3, 3]
    assert sum(spread_budget([0.75, 0.35, 0.5], [32, 32, 32], 40)) == 40
    # DPC-kNN on cosine distance: two clusters of directions; each centre direction is a density peak and
    # they outrank every other point; scaling a token does not change anything (cosine, not Euclidean)
    def cluster(axis: int) -> torch.Tensor:
        c = torch.zeros(5, 3)
        c[:, axis] = 1.0
        c[1:, 2] = torch.tensor([0.1, -0.1, 0.1, -0.1])
        c[1:, 1 - axis] = torch.tensor([0.1, -0.1, -0.1, 0.1])
        return c

    points = torch.cat([cluster(0), cluster(1)])
    score = dpc_knn_scores(points, k=4)
    assert set(torch.topk(score, 2).indices.tolist()) == {0, 5}
    scaled = points * torch.linspace(0.5, 3.0, 10).unsqueeze(1)
    torch.testing.assert_close(dpc_knn_scores(scaled, k=4), score)
    # density is exp(-mean cosine distance to the k nearest): brute force for token 0
    d0 = sorted((1 - torch.nn.functional.cosine_similarity(points[0:1], points)).tolist())[1:5]
    import math

    delta0 = float(score[0]) / math.exp(-sum(d0) / 4)
    assert delta0 > 0.5  # the other cluster's peak is far (orthogonal directions: distance about 1)
    # DyCoke: frame 1 identical to frame 0 except token 0 -> token 0 of frame 1 survives, others are dropped first
    layout, seq = regular_layout(chunks=1, n_p=4, n_a=2, text=0)
    embeds = torch.randn(1, seq, 8)
    embeds[0, layout.chunks[0].frames[1]] = embeds[0, layout.chunks[0].frames[0]]
    embeds[0, layout.chunks[0].frames[1][0]] = -embeds[0, layout.chunks[0].frames[0][0]]
    res = DyCokeTTM(0.25, 0.0)(embeds, [layout])  # budget: 2 video tokens, both from the redundant ones
    kept_f2 = res.keep[0, layout.chunks[0].frames[1]]
    assert kept_f2[0] and int(kept_f2.sum()) == 2
    assert res.keep[0, layout.chunks[0].frames[0]].all()


def test_dycoke_never_prunes_anchor_frames_and_prunes_a_fixed_count_per_frame():
    from leanlm.omnisift.baselines import fixed_per_frame, ttm_references

    assert ttm_references(9) == [None, 0, 0, 2, None, 4, 4, 6, None]
    assert fixed_per_frame(30, [0, 8, 8, 8, 0, 8]) == [0, 8, 8, 7, 0, 7]
    assert fixed_per_frame(50, [0, 8, 8]) == [0, 8, 8]  # capped: anchors are never used to meet the budget
    torch.manual_seed(3)
    layout, seq = regular_layout(chunks=4, n_p=8, n_a=6, text=2)  # 8 frames: anchors are frames 0 and 4
    embeds = torch.randn(1, seq, 16)
    comp = DyCokeTTM(0.5, 0.5)
    res = comp(embeds, [layout])
    frames = [f for c in layout.chunks for f in c.frames]
    dropped = [int((~res.keep[0, f]).sum()) for f in frames]
    assert dropped[0] == dropped[4] == 0
    assert dropped == [0, 6, 6, 5, 0, 5, 5, 5]  # 8 frames x int(8 * 0.5) = 32 drops over 6 non-anchor frames
    # within a frame the dropped tokens are the most similar to the reference frame (frame 2 -> frame 0)
    sim = torch.nn.functional.cosine_similarity(embeds[0, frames[2]], embeds[0, frames[0]], dim=-1)
    assert set(torch.nonzero(~res.keep[0, frames[2]]).flatten().tolist()) == set(torch.topk(sim, 6).indices.tolist())
    # audio anchors (every 4th audio token) are kept
    assert res.keep[0, layout.audio[::4]].all()


def _ste_case(ste: str):
    """OmniSIFT with a trainable selector on a 3-chunk layout; a loss linear in the gated embeddings,
    L = −Σ_{gathered j} ⟨u, g_j e_j⟩, whose STE gradient is known: ∂L/∂s_j = −⟨u, e_j⟩ wherever s_j reaches it."""
    torch.manual_seed(0)
    layout, seq_len = regular_layout(chunks=3, n_p=8, n_a=6)
    comp = OmniSIFT(0.5, 0.5, hidden_size=16, selector_dim=16, selector_heads=4, ste=ste).train()
    embeds = torch.randn(1, seq_len, 16)
    u = torch.randn(16)
    scores: list[torch.Tensor] = []

    def grab(mod, args, out):
        out.retain_grad()
        scores.append(out)

    handle = comp.selector.register_forward_hook(grab)
    result = comp(embeds, [layout])
    handle.remove()
    gathered = result.keep if result.train_keep is None else result.train_keep
    loss = -(result.apply_gate(embeds)[gathered] @ u).sum()
    loss.backward()
    audio = torch.stack([c.audio for c in layout.chunks])  # [chunks, n_a], the order the selector saw
    return result, scores[0], audio, embeds, u


@pytest.mark.parametrize("ste", ["remove", "mask", "mean"])
def test_ste_gradient_reaches_dropped_tokens_only_with_the_mask_formulation(ste):
    result, scores, audio, embeds, u = _ste_case(ste)
    kept = result.keep[0, audio]  # [chunks, n_a]
    assert int((~kept).sum()) == 3 * 3  # int(6 · 0.5) dropped per chunk, in every formulation
    assert torch.allclose(result.gate[0, audio], kept.float())  # forward value: the hard 0/1 mask
    a = embeds[0, audio]  # [chunks, n_a, D]
    if ste == "mean":  # e' = m_c + g (e − m_c), m_c = mean of the chunk's kept audio
        m = (kept.unsqueeze(-1) * a).sum(1, keepdim=True) / kept.sum(1, keepdim=True).unsqueeze(-1)
        sent = result.apply_gate(embeds)[0, audio]
        assert torch.allclose(sent[kept], a[kept]) and torch.allclose(sent[~kept], m.expand_as(a)[~kept], atol=1e-6)
        a = a - m
    else:
        assert result.fill is None
    expected = -(a @ u)  # ∂L/∂s_j = ⟨∂L/∂e'_j, ∂e'_j/∂g_j⟩ = −⟨u, e_j⟩ (or −⟨u, e_j − m_c⟩ with "mean")
    assert torch.allclose(scores.grad[kept], expected[kept], atol=1e-5)
    if ste == "remove":  # the paper's: dropped tokens are removed, so they get no gradient at all
        assert result.train_keep is None
        assert torch.equal(scores.grad[~kept], torch.zeros(9))
    else:  # mask: dropped tokens stay (zeroed) in the training sequence and get the same formula
        assert torch.equal(result.train_keep[0, audio], torch.ones_like(kept))
        video_dropped = ~result.keep[0] & ~torch.isin(torch.arange(result.keep.shape[1]), audio.reshape(-1))
        assert not result.train_keep[0, video_dropped].any()  # video pruning is unchanged
        assert torch.allclose(scores.grad[~kept], expected[~kept], atol=1e-5)
        assert (scores.grad[~kept].abs() > 0).all()
        # known sign: a dropped token whose inclusion would lower the loss (⟨u, e_j⟩ > 0) gets a negative
        # gradient, so a descent step raises its score; one that would raise the loss gets a positive one
        helps = (a @ u) > 0
        assert (scores.grad[~kept & helps] < 0).all() and (scores.grad[~kept & ~helps] > 0).all()
        assert (~kept & helps).any() and (~kept & ~helps).any()


def test_ste_mode_does_not_change_the_selection_and_is_validated():
    a, _, _, _, _ = _ste_case("remove")
    b, _, _, _, _ = _ste_case("mask")
    assert torch.equal(a.keep, b.keep)
    with pytest.raises(ValueError, match="ste must be"):
        OmniSIFT(0.5, 0.5, ste="soft")
    # inference (no grad): no gate, nothing kept beyond the selection
    comp = OmniSIFT(0.5, 0.5, hidden_size=16, selector_dim=16, selector_heads=4, ste="mask")
    layout, seq_len = regular_layout()
    with torch.no_grad():
        r = comp(torch.randn(1, seq_len, 16), [layout])
    assert r.gate is None and r.train_keep is None
