"""Two Ray rollout workers + two gloo learner ranks train the same policy as one process would."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

pytestmark = pytest.mark.distributed


def test_two_workers_two_learners_match_single_process(tmp_path):
    ray = pytest.importorskip("ray")
    threads = torch.get_num_threads()
    from ray import cloudpickle
    from transformers import AutoTokenizer

    from leanlm.common.models import embedded_cache_path, embedded_cached, tiny_llama
    from leanlm.wideseek.distributed import DistributedTrainer
    from leanlm.wideseek.grpo import sequence_logprobs
    from leanlm.wideseek.tasks import Task
    from leanlm.wideseek.train import TrainConfig, update

    if not embedded_cached():
        pytest.skip("the embedded SmolLM2 tokenizer is not cached")
    torch.set_num_threads(1)  # restored below; the actors run one thread each as well
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the toy tools/reward below travel by value
    tok = AutoTokenizer.from_pretrained(str(embedded_cache_path()))
    model = tiny_llama(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=2048)
    cfg = TrainConfig(out=str(tmp_path), prompts_per_step=2, group_size=2, max_new_tokens=5, lr=1e-2,
                      max_lead_turns=1, kl_beta=0.1)
    tasks = [Task("a", "List two cities."), Task("b", "Name a metal.")]
    trainer = DistributedTrainer(cfg, model, tok, ToyTools(), tasks, reward_fn=reward, workers=2, learners=2)
    try:
        row = trainer.train_step()
        assert row["trained_turns"] == 4 and row["tokens"] > 0
        a, b = trainer.checksums()
        assert a == b  # the all-reduced gradients gave both ranks the same step
        # one process, same batch, same start: the same update
        single = copy.deepcopy(model)
        opt = torch.optim.AdamW([p for p in single.parameters() if p.requires_grad], lr=cfg.lr, eps=cfg.adam_eps,
                                weight_decay=cfg.weight_decay)
        ref = copy.deepcopy(model)
        loss, _, _ = update(single, lambda s: sequence_logprobs(ref, s), opt, trainer.last_batch, cfg)
        assert row["loss"] == pytest.approx(loss, rel=1e-4, abs=1e-7)
        assert sum(p.detach().double().sum() for p in single.parameters()).item() == pytest.approx(a, rel=1e-6)
        row2 = trainer.train_step()
        assert row2["step"] == 2 and len(set(trainer.checksums())) == 1
    finally:
        trainer.shutdown()
        ray.shutdown()
        torch.set_num_threads(threads)


class ToyTools:
    def search(self, query: str, count: int) -> str:
        return f"[Doc 1](http://toy/{query}):\n{query}"

    def access(self, url: str, info: str) -> str:
        return f"page {url}"


def reward(task, result):
    return (len(result.answer) % 5) / 5, True, 0.0
