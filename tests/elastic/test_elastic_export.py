"""Export to transformers' own Ernie4_5_Moe: a fresh interpreter that imports nothing from leanlm loads the full
model and an extracted sub-model with plain ``AutoModelForCausalLM`` and gets the parent's logits and tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

from leanlm.elastic import ElasticMoeConfig, ElasticMoeForCausalLM, SubNet
from leanlm.elastic.export import export_pretrained, to_ernie45

CHILD = textwrap.dedent('''
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    data = torch.load(sys.argv[1])
    out = {}
    for name in ("full", "sub"):
        model = AutoModelForCausalLM.from_pretrained(sys.argv[2 if name == "full" else 3]).eval()
        with torch.no_grad():
            logits = model(data["ids"]).logits
        gen = model.generate(data["prompt"], max_new_tokens=6, do_sample=False)
        out[name] = {"type": type(model).__name__, "max_diff": float((logits - data[name]).abs().max()),
                     "generated": gen[0, data["prompt"].shape[1]:].tolist()}
    out["leanlm_imported"] = any(m == "leanlm" or m.startswith("leanlm.") for m in sys.modules)
    print(json.dumps(out))
''')


def parent_model() -> ElasticMoeForCausalLM:
    torch.manual_seed(0)
    cfg = ElasticMoeConfig(vocab_size=300, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                           num_experts=8, num_experts_per_tok=3, moe_intermediate_size=24, num_shared_experts=1,
                           first_k_dense_layers=1, dense_intermediate_size=64, initializer_range=0.2)
    model = ElasticMoeForCausalLM(cfg).eval()
    with torch.no_grad():
        for block in model.moe_blocks().values():
            block.router_bias.normal_(0, 0.05)  # the correction bias must travel too
    return model


@torch.no_grad()
def greedy(model: ElasticMoeForCausalLM, prompt: torch.Tensor, n: int, subnet: SubNet | None) -> list[int]:
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, model(ids, subnet=subnet).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, prompt.shape[1]:].tolist()


def test_exported_models_load_in_plain_transformers_without_leanlm(tmp_path):
    model = parent_model()
    sub = SubNet.make(layers=[0, 2, 3], experts={2: [0, 2, 3, 5, 7], 3: [1, 2, 4, 6, 7]}, top_k=2)
    export_pretrained(model, tmp_path / "full")
    export_pretrained(model, tmp_path / "sub", subnet=sub)
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (2, 19))
    prompt = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        data = {"ids": ids, "prompt": prompt, "full": model(ids).logits, "sub": model(ids, subnet=sub).logits}
    torch.save(data, tmp_path / "data.pt")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "data.pt"), str(tmp_path / "full"), str(tmp_path / "sub")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["leanlm_imported"]
    for name, subnet in (("full", None), ("sub", sub)):
        assert out[name]["type"] == "Ernie4_5_MoeForCausalLM"
        assert out[name]["max_diff"] <= 1e-5, (name, out[name]["max_diff"])
        assert out[name]["generated"] == greedy(model, prompt, 6, subnet), name
    meta = json.loads((tmp_path / "sub" / "leanlm_elastic.json").read_text())
    assert meta["source_layers"] == [0, 2, 3] and meta["source_experts"] == [[0, 2, 3, 5, 7], [1, 2, 4, 6, 7]]
    assert json.loads((tmp_path / "sub" / "config.json").read_text())["model_type"] == "ernie4_5_moe"


def test_to_ernie45_matches_in_process_and_is_not_trivially_equal():
    model = parent_model()
    peer = to_ernie45(model)
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        ours, theirs = model(ids).logits, peer(ids).logits
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
        # without the RoPE row permutation the logits differ: the conversion is doing real work
        peer.model.layers[1].self_attn.q_proj.weight.copy_(model.model.layers[1].attn.q_proj.weight)
        peer.model.layers[1].self_attn.k_proj.weight.copy_(model.model.layers[1].attn.k_proj.weight)
        assert (peer(ids).logits - ours).abs().max() > 1e-3
