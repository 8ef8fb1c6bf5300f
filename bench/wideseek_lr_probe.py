"""GRPO learning-rate probe (run next session after the SFT eval): one step's rollouts from the SFT policy, then
for each lr a fresh copy of the policy takes one update on that same batch; reports the mean absolute change in
the batch tokens' log-probs and the mean low-variance KL to the pre-update policy. Writes lr_probe.json.

    OMP_NUM_THREADS=2 .venv/bin/python bench/wideseek_lr_probe.py
"""
import copy
import time

import torch

from leanlm.common.atomic import atomic_write_json
from leanlm.wideseek.grpo import sequence_logprobs
from leanlm.wideseek.study import FULL, Study, _train_config
from leanlm.wideseek.train import Trainer, prepare_batch, update

study = Study(dict(FULL), "studies/wideseek-marl")
init = study.sft("multi")
cfg = _train_config(study.config, study.out / "lr-probe", str(init), 0)
trainer = Trainer(cfg, tools=study.tools)
t0 = time.time()
tasks = trainer.rng.sample(trainer.tasks, 1)
rolls = trainer.rollouts(tasks)
batch = prepare_batch(rolls, tasks, trainer.reward_fn, cfg)
print("rollouts", round(time.time() - t0), "s", batch.stats, flush=True)
base = [lp.detach() for lp in sequence_logprobs(trainer.model, batch.samples, cfg.temperature, pack=cfg.pack_turns)]
out = {"stats": batch.stats, "tasks": [t.instance_id for t in tasks], "lr": {}}
for lr in (1e-6, 1e-5, 2e-5, 5e-5):
    model = copy.deepcopy(trainer.model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999),
                            eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    update(model, trainer.ref_logprobs, opt, batch, cfg)
    after = [lp.detach() for lp in sequence_logprobs(model, batch.samples, cfg.temperature, pack=cfg.pack_turns)]
    d = torch.cat([a - b for a, b in zip(after, base, strict=True)])
    kl = torch.cat([torch.exp(b - a) - (b - a) - 1 for a, b in zip(after, base, strict=True)])
    adv = torch.cat([torch.full_like(b, x) for b, x in zip(base, batch.advantages, strict=True)])
    out["lr"][str(lr)] = {"mean_abs_dlogp": float(d.abs().mean()), "kl": float(kl.mean()),
                          "dlogp_pos_adv": float(d[adv > 0].mean()) if (adv > 0).any() else None,
                          "dlogp_neg_adv": float(d[adv < 0].mean()) if (adv < 0).any() else None}
    print(lr, out["lr"][str(lr)], flush=True)
atomic_write_json(study.out / "lr-probe" / "lr_probe.json", out)
