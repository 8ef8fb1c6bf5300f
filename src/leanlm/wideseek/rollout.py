"""In-process rollouts: a batched transformers backend that keeps token ids and sampling log-probs.

WideSeek-R1 trains on every turn of every agent of G rollouts (arXiv 2602.04634, Sec. 3.2; RLinf tags each
(prompt, response) turn with ``idx_to_traj`` / ``idx_to_sub_traj``). :class:`TransformersBackend` is a
:class:`~leanlm.wideseek.llm.Backend` for the ``text`` tool mode (Hermes ``<tool_call>`` parsed here): every
``complete`` call joins a queue; when the event loop has nothing else to run, all queued turns -- lead and
subagents of all rollouts that are waiting for the model -- are generated as one left-padded batch with
``model.generate`` (sampling, ``output_scores``), and each turn's completion ids and log-probs (log-softmax
of the processed scores, i.e. of the distribution actually sampled from) are recorded as a
:class:`~leanlm.wideseek.grpo.TurnSample` tagged with its rollout (:data:`TRAJECTORY`, a context variable
that :func:`rollout_group` sets per rollout) and agent index (0 = lead/single, i = ``sub-i``).

:func:`rollout_group` runs G rollouts of each of P tasks concurrently in one event loop so that their turns
batch together, and returns the :class:`RunResult` of each with its samples.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from leanlm.wideseek.agents import AgentConfig, RunResult, Toolbox, WideSeek
from leanlm.wideseek.grpo import TurnSample
from leanlm.wideseek.llm import Completion, ContextOverflow, parse_tool_calls, to_text_messages

TRAJECTORY: contextvars.ContextVar[int] = contextvars.ContextVar("wideseek_trajectory", default=0)
"""The rollout index of the agents running in the current asyncio task (set by :func:`rollout_group`)."""


def agent_index(agent: str) -> int:
    """RLinf's ``idx_to_sub_traj``: 0 for ``lead``/``single``, i for ``sub-i``."""
    return int(agent.split("-")[1]) if agent.startswith("sub-") else 0


def prompt_ids(tokenizer: Any, messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of the chat-templated conversation (text tool mode) with the assistant generation prompt."""
    text = tokenizer.apply_chat_template(to_text_messages(messages, tools), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class _Request:
    ids: list[int]
    agent: str
    traj: int
    future: asyncio.Future


@dataclass
class TransformersBackend:
    """Generate with a transformers causal LM in this process, batching every waiting agent (module doc).

    ``max_context`` bounds prompt + completion tokens (longer prompts raise
    :class:`~leanlm.wideseek.llm.ContextOverflow`, which the agent loop handles as RLinf does).
    ``role_max_new_tokens`` (``{"lead": 256, "sub": 96}``) caps a turn's reply per role (``lead``, ``sub``,
    ``single``) below ``max_new_tokens``; rows of one batch stop at their own cap.
    ``max_batch`` caps the turns per ``generate`` call; the waiting turns are sorted by prompt length and, with
    a finite ``max_pad_waste`` (off by default), cut into batches whose left padding wastes at most that share
    of the prefill (a batch's prefill costs rows x longest prompt). Off by default: on the study's evaluation
    group the cut did not lower the padding reliably and split the queue into more ``generate`` calls
    (docs/results/wideseek.md, 7d). Before cutting, the queue gets up to ``gather_s`` seconds to fill while agents
    finish their tool calls. ``samples`` collects every turn; ``tokens`` and ``generate_s`` count generated
    tokens and time for throughput; ``stats`` counts prompt, padded-prompt, generated and decoded
    (rows x steps) tokens.
    """

    model: Any
    tokenizer: Any
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    max_context: int = 8192
    max_batch: int = 64
    role_max_new_tokens: dict[str, int] | None = None
    max_pad_waste: float = float("inf")
    gather_s: float = 0.05
    samples: list[TurnSample] = field(default_factory=list)
    tokens: int = 0
    generate_s: float = 0.0
    batches: list[int] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("calls", "prompt_tokens", "padded_prompt_tokens", "generated_tokens", "decoded_tokens"), 0))
    _queue: list[_Request] = field(default_factory=list, repr=False)
    _worker: asyncio.Task | None = field(default=None, repr=False)
    _turns: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int), repr=False)

    def __post_init__(self) -> None:
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = {self.tokenizer.eos_token_id}
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            self.eos_ids.add(im_end)

    def reset(self) -> None:
        """Forget recorded samples and per-agent turn counters (call between training steps)."""
        self.samples = []
        self._turns = defaultdict(int)

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, agent: str) -> Completion:
        ids = prompt_ids(self.tokenizer, messages, tools)
        if len(ids) + 1 > self.max_context:
            raise ContextOverflow(f"{agent}: prompt of {len(ids)} tokens does not fit max_context {self.max_context}")
        loop = asyncio.get_running_loop()
        request = _Request(ids, agent, TRAJECTORY.get(), loop.create_future())
        self._queue.append(request)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await request.future

    def cap(self, agent: str) -> int:
        """The reply cap of ``agent``'s role (``role_max_new_tokens``, never above ``max_new_tokens``)."""
        role = "sub" if agent.startswith("sub-") else agent
        return min(self.max_new_tokens, (self.role_max_new_tokens or {}).get(role, self.max_new_tokens))

    def cut(self, queue: list[_Request]) -> tuple[list[_Request], list[_Request]]:
        """The next batch and the rest: the longest prompts first, at most ``max_batch`` rows, and no more rows
        than keep the padded prefill (rows x longest) within ``1 + max_pad_waste`` of the real prompt tokens."""
        order = sorted(queue, key=lambda r: -len(r.ids))
        longest, total, n = len(order[0].ids), 0, 0
        for r in order[: self.max_batch]:
            if n and (n + 1) * longest > (1 + self.max_pad_waste) * (total + len(r.ids)):
                break
            total, n = total + len(r.ids), n + 1
        taken = {id(r) for r in order[:n]}
        return order[:n], [r for r in queue if id(r) not in taken]

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            # let every runnable agent reach the model before the batch is cut: yield to the event loop, then
            # wait (up to gather_s) while agents finishing tool calls in threads keep joining the queue
            for _ in range(20):
                await asyncio.sleep(0)
            deadline, size = loop.time() + self.gather_s, -1
            while size != len(self._queue) and loop.time() < deadline:
                size = len(self._queue)
                await asyncio.sleep(self.gather_s / 5)
            batch, self._queue = self.cut(self._queue)
            try:
                outs = await asyncio.get_running_loop().run_in_executor(None, self._generate, batch)
            except Exception as exc:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            for r, out in zip(batch, outs, strict=True):
                if not r.future.done():
                    r.future.set_result(out)

    @torch.no_grad()
    def _generate(self, batch: list[_Request]) -> list[Completion]:
        t0 = time.perf_counter()
        device = next(self.model.parameters()).device
        width = max(len(r.ids) for r in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.ids):] = torch.tensor(r.ids)
            mask[i, width - len(r.ids):] = 1
        caps = [max(1, min(self.cap(r.agent), self.max_context - len(r.ids))) for r in batch]
        stop = _RowCaps(width, torch.tensor(caps, device=device))
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, temperature=self.temperature,
            top_p=self.top_p, top_k=0, max_new_tokens=max(caps), return_dict_in_generate=True, output_scores=True,
            pad_token_id=pad, eos_token_id=sorted(self.eos_ids), stopping_criteria=StoppingCriteriaList([stop]),
        )
        if was_training:
            self.model.train()
        seqs = out.sequences[:, width:].cpu()
        scores = torch.stack(out.scores, dim=1).float()  # (batch, steps, vocab), after temperature/top-p
        logps = torch.log_softmax(scores, dim=-1).gather(-1, seqs[:, : scores.shape[1], None].to(scores.device))[..., 0]
        elapsed = time.perf_counter() - t0
        completions = []
        self.stats["calls"] += len(batch)
        self.stats["prompt_tokens"] += sum(len(r.ids) for r in batch)
        self.stats["padded_prompt_tokens"] += len(batch) * width
        self.stats["decoded_tokens"] += len(batch) * seqs.shape[1]
        for i, r in enumerate(batch):
            toks = seqs[i, : caps[i]].tolist()
            n = len(toks)
            for j, tok in enumerate(toks):
                if tok in self.eos_ids:
                    n = j + 1
                    break
            toks = toks[:n]
            lp = logps[i, :n].cpu().tolist()
            self.tokens += n
            self.stats["generated_tokens"] += n
            self._turns[(r.traj, r.agent)] += 1
            self.samples.append(TurnSample(traj=r.traj, agent=agent_index(r.agent), turn=self._turns[(r.traj, r.agent)],
                                           prompt_ids=list(r.ids), completion_ids=toks, logprobs=lp,
                                           agent_name=r.agent))
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            content, calls = parse_tool_calls(text)
            finish = "stop" if toks and toks[-1] in self.eos_ids else "length"
            completions.append(Completion(content=content, tool_calls=calls, prompt_tokens=len(r.ids),
                                          completion_tokens=n, finish_reason=finish, seconds=elapsed,
                                          token_ids=toks, logprobs=lp))
        self.generate_s += elapsed
        self.batches.append(len(batch))
        return completions


class _RowCaps(StoppingCriteria):
    """Stops each row of a batch when it has generated its own cap of new tokens (per-role reply caps)."""

    def __init__(self, prompt_width: int, caps: torch.Tensor):
        self.prompt_width, self.caps = prompt_width, caps

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.caps


@dataclass
class Rollout:
    """One rollout: its task index, group, trajectory index, result and its turns' samples."""

    task_index: int
    group: int
    traj: int
    result: RunResult
    samples: list[TurnSample]


def rollout_group(backend: TransformersBackend, tools: Toolbox, config: AgentConfig, queries: Sequence[str],
                  answer_formats: Sequence[str], g: int, mode: str = "multi") -> list[Rollout]:
    """G rollouts of each query, all concurrently (their model turns batch together). Rollout ``p*g + k`` is
    the k-th of query p; its samples carry ``traj = p*g + k`` and ``group = p``."""
    backend.reset()

    async def one(traj: int, query: str, fmt: str) -> RunResult:
        TRAJECTORY.set(traj)
        agent = WideSeek(backend, tools, config)
        return await (agent.arun(query, fmt) if mode == "multi" else agent.arun_single(query, fmt))

    async def main() -> list[RunResult]:
        jobs = [asyncio.ensure_future(one(p * g + k, q, f)) for p, (q, f) in enumerate(zip(queries, answer_formats,
                                                                                           strict=True))
                for k in range(g)]
        return list(await asyncio.gather(*jobs))

    results = asyncio.run(main())
    by_traj: dict[int, list[TurnSample]] = defaultdict(list)
    for s in backend.samples:
        s.group = s.traj // g
        by_traj[s.traj].append(s)
    return [Rollout(i // g, i // g, i, r, sorted(by_traj[i], key=lambda s: (s.agent, s.turn)))
            for i, r in enumerate(results)]
