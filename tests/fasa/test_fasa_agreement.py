"""CA computed by the library (inside the attention hook) equals a brute-force loop (Eq. 2-5)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from leanlm.common.models import tiny_llama
from leanlm.fasa import calibrate, contextual_agreement, fc_dims


class IdsTokenizer:
    """Stands in for a tokenizer: returns fixed random ids whatever the text."""

    pad_token_id = 0
    eos_token_id = 0

    def __init__(self, n: int, seed: int = 0):
        self.ids = torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))

    def __call__(self, text, return_tensors=None):
        return SimpleNamespace(input_ids=self.ids)


def _qk_by_hand(model, ids):
    """Post-RoPE q and k of every layer, from the model's own projections (no attention hook involved)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        pos = torch.arange(ids.shape[1])[None]
        result = []
        for layer, hidden in zip(model.model.layers, out.hidden_states, strict=False):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            d = attn.head_dim
            q = attn.q_proj(x).view(1, ids.shape[1], -1, d).transpose(1, 2)
            k = attn.k_proj(x).view(1, ids.shape[1], -1, d).transpose(1, 2)
            cos, sin = model.model.rotary_emb(hidden, pos)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            result.append((q[0], k[0]))
    return result


def _topk_set(values, k):
    return set(sorted(range(len(values)), key=lambda j: -values[j])[:k])


def test_library_ca_equals_brute_force_loop():
    model = tiny_llama(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, seed=1).double()
    n_prompt, steps, stride, ks = 96, 3, 8, (16, 40)
    tok = IdsTokenizer(n_prompt)
    calib = calibrate(model, tok, "ignored", ks=ks, n_tip=2, decode_steps=steps, prefill_stride=stride,
                      max_tokens=n_prompt)
    with torch.no_grad():
        seq = model.generate(tok.ids, attention_mask=torch.ones_like(tok.ids), max_new_tokens=steps,
                             min_new_tokens=steps, do_sample=False, pad_token_id=0)
    qk = _qk_by_hand(model, seq)
    # queries the library records: strided prefill rows, then every decode forward (positions n_prompt .. )
    positions = [p for p in range(n_prompt) if (p + 1) % stride == 0] + list(range(n_prompt, n_prompt + steps - 1))
    n_heads, n_rep, n_fc = 4, 2, 8
    for K in ks:
        used = [p for p in positions if p + 1 > K]
        assert calib.counts[K] == len(used)
        expected = torch.zeros(2, n_heads, n_fc, dtype=torch.float64)
        for layer, (q, k) in enumerate(qk):
            for h in range(n_heads):
                for p in used:
                    qv, keys = q[h, p].tolist(), k[h // n_rep, : p + 1].tolist()
                    full = [sum(a * b for a, b in zip(qv, kv, strict=True)) for kv in keys]
                    top_full = _topk_set(full, K)
                    for i in range(n_fc):
                        a, b = fc_dims(i, 16, "half")
                        part = [qv[a] * kv[a] + qv[b] * kv[b] for kv in keys]
                        expected[layer, h, i] += len(top_full & _topk_set(part, K)) / K
        expected /= len(used)
        assert torch.allclose(calib.ca[K], expected, atol=1e-12, rtol=0), K
        # dominant FCs are the top-N_tip of the mean CA (Eq. 5)
        assert calib.dominant(K).tolist() == expected.topk(2, dim=-1).indices.tolist()


def test_agreement_is_one_when_a_single_fc_carries_the_logit():
    """If every key lives in FC 3 only, that FC ranks exactly like the full head: CA = 1; others rank noise."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 8, generator=gen, dtype=torch.float64)
    keys = torch.zeros(1, 200, 8, dtype=torch.float64)
    keys[0, :, 3] = torch.randn(200, generator=gen, dtype=torch.float64)
    keys[0, :, 7] = torch.randn(200, generator=gen, dtype=torch.float64)
    ca = contextual_agreement(q, keys, [20], "half")[20][0, 0]
    assert ca[3] == 1.0
    assert ca[[0, 1, 2]].max() < 0.5  # FCs without signal: ties broken arbitrarily, far from 1


def test_agreement_nan_when_too_few_keys():
    q, k = torch.randn(2, 1, 8), torch.randn(2, 10, 8)
    ca = contextual_agreement(q, k, [16], "half")[16]
    assert torch.isnan(ca).all()
    with pytest.raises(ValueError):
        contextual_agreement(q, k, [4], "diagonal")
