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

Cross-turn KV reuse (``kv_reuse``, on by default): an agent's turn t+1 prompt starts with its turn t prompt,
reply and tool output, so after each turn the backend keeps that agent's keys and values (a slice of the
``generate`` call's :class:`~transformers.DynamicCache`) and the next turn only prefills the tokens after the
longest common token prefix. Rows of a left-padded batch are end-aligned, so the batch's cache covers the
columns left of its longest new-token run: each row brings ``len(prompt) - max new`` cached tokens (zeros in its
padding, which the attention mask hides) and recomputes the rest. Positions come from the attention mask as
before, so the computation is the same up to floating-point order (tests: identical tokens, log-probs within
1e-5, on a tiny model and on SmolLM2). Caches are dropped when the model's weights change (parameter version
counters), on :meth:`TransformersBackend.reset`, when an agent's turn has no tool call (its loop ends), and
least-recently-used first beyond ``kv_reuse_mb``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

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
class _Held:
    """One agent's keys/values between turns: for ``ids`` (prompt + reply tokens fed to the model), per layer
    a (heads, len(ids), head_dim) key and value tensor."""

    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    nbytes: int


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


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
    (rows x steps) tokens, and with ``kv_reuse`` the prompt columns actually prefilled (rows x new-token
    width) and the prompt tokens taken from held caches. ``kv_reuse`` keeps each agent's keys/values between
    its turns (module doc) within ``kv_reuse_mb`` MiB; it never changes a sampled token beyond float rounding.
    Only turns with a tool call are held (a reply without one ends the agent's loop); ``kv_hold_all`` holds every
    turn, for drivers that continue a conversation whatever the reply (the oracle-driven benchmark).
    ``fold_gqa`` switches a model on transformers' ``sdpa`` to :mod:`leanlm.common.attention`'s folded form
    (the model object is changed, for its later users too): a padded batch's decode step then reads each
    KV head once instead of a ``repeat_kv`` copy per query head (4-13x less attention time per decode step
    on SmolLM2's shapes, docs/results/wideseek.md, 7d); outputs equal ``sdpa``'s up to float rounding.
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
    kv_reuse: bool = True
    kv_reuse_mb: float = 1024.0
    kv_hold_all: bool = False
    fold_gqa: bool = True
    samples: list[TurnSample] = field(default_factory=list)
    tokens: int = 0
    generate_s: float = 0.0
    batches: list[int] = field(default_factory=list)
    batch_members: list[list[tuple[int, str, int]]] = field(default_factory=list)  # (traj, agent, turn) per row
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("calls", "prompt_tokens", "padded_prompt_tokens", "prefilled_tokens", "reused_tokens", "generated_tokens",
         "decoded_tokens"), 0))
    _queue: list[_Request] = field(default_factory=list, repr=False)
    _worker: asyncio.Task | None = field(default=None, repr=False)
    _turns: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int), repr=False)
    _held: OrderedDict[tuple[int, str], _Held] = field(default_factory=OrderedDict, repr=False)
    _held_version: int = field(default=-1, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = {self.tokenizer.eos_token_id}
        if self.fold_gqa and getattr(getattr(self.model, "config", None), "_attn_implementation", None) == "sdpa":
            from leanlm.common.attention import register_folded_sdpa

            self.model.set_attn_implementation(register_folded_sdpa())
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            self.eos_ids.add(im_end)

    def reset(self) -> None:
        """Forget recorded samples, per-agent turn counters and held caches (call between training steps)."""
        self.samples = []
        self._turns = defaultdict(int)
        self.release()

    def release(self) -> None:
        """Drop every held cache (cross-turn KV reuse)."""
        with self._lock:
            self._held.clear()

    @property
    def held_bytes(self) -> int:
        """Bytes of keys/values held between turns."""
        return sum(h.nbytes for h in self._held.values())

    def _reuse_ok(self) -> bool:
        if not self.kv_reuse:
            return False
        text = self.model.config.get_text_config(decoder=True) if hasattr(self.model.config, "get_text_config") \
            else self.model.config
        if getattr(text, "sliding_window", None) or any(t != "full_attention"
                                                         for t in (getattr(text, "layer_types", None) or ())):
            return False  # per-row slices of sliding-window caches are not plain prefixes
        version = sum(p._version for p in self.model.parameters())
        if version != self._held_version:  # weights changed in place (optimizer step, load_state_dict)
            self._held.clear()
            self._held_version = version
        return True

    def _take(self, r: _Request) -> _Held | None:
        return self._held.pop((r.traj, r.agent), None)

    def _hold(self, key: tuple[int, str], held: _Held) -> None:
        budget = self.kv_reuse_mb * 2**20
        if held.nbytes > budget:
            return
        self._held[key] = held
        self._held.move_to_end(key)
        total = self.held_bytes
        while total > budget:
            _, old = self._held.popitem(last=False)
            total -= old.nbytes

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
        with self._lock:
            reuse = self._reuse_ok()
            held = [self._take(r) if reuse else None for r in batch]
        cache, cached = self._batch_cache(batch, held, width) if reuse else (None, 0)
        was_training = self.model.training
        self.model.eval()
        # temperature and top-p as our own processors, before the recorder: transformers would apply its own
        # warpers after every custom processor, so the recorder would not see the sampled distribution
        recorder = _SampledLogprobs()
        warpers = ([TemperatureLogitsWarper(self.temperature)] if self.temperature != 1.0 else []) + \
            ([TopPLogitsWarper(self.top_p, min_tokens_to_keep=1)] if self.top_p < 1.0 else [])
        out = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, temperature=1.0, top_p=1.0,
            top_k=0, max_new_tokens=max(caps), return_dict_in_generate=True,
            logits_processor=LogitsProcessorList([*warpers, recorder]),
            pad_token_id=pad, eos_token_id=sorted(self.eos_ids), stopping_criteria=StoppingCriteriaList([stop]),
            past_key_values=cache, use_cache=True,
        )
        if was_training:
            self.model.train()
        seqs = out.sequences[:, width:].cpu()
        logps = recorder.finish(out.sequences)  # (batch, steps): log-softmax of the sampled distribution
        if logps.shape[1] != seqs.shape[1]:
            raise RuntimeError(f"recorded {logps.shape[1]} decode steps for {seqs.shape[1]} new tokens")
        elapsed = time.perf_counter() - t0
        completions = []
        self.stats["calls"] += len(batch)
        self.stats["prompt_tokens"] += sum(len(r.ids) for r in batch)
        self.stats["padded_prompt_tokens"] += len(batch) * width
        self.stats["prefilled_tokens"] += len(batch) * (width - cached)
        self.stats["reused_tokens"] += sum(max(0, len(r.ids) - (width - cached)) for r in batch) if cached else 0
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
            if reuse and (calls or self.kv_hold_all):  # the agent's loop goes on: keep its keys/values
                self._keep(r, i, toks, out.past_key_values, width - len(r.ids))
            completions.append(Completion(content=content, tool_calls=calls, prompt_tokens=len(r.ids),
                                          completion_tokens=n, finish_reason=finish, seconds=elapsed,
                                          token_ids=toks, logprobs=lp))
        self.generate_s += elapsed
        self.batches.append(len(batch))
        self.batch_members.append([(r.traj, r.agent, self._turns[(r.traj, r.agent)]) for r in batch])
        return completions

    def _batch_cache(self, batch: list[_Request], held: list[_Held | None], width: int) -> tuple[Any, int]:
        """The left-padded batch cache of the reusable prefix (module doc): rows are end-aligned, so the cache
        covers columns ``[0, width - max new)``; row i's cached tokens sit in ``[width - len_i, width - max new)``
        and zeros elsewhere (masked). Returns (cache or None, cached columns)."""
        reusable = [min(common_prefix(h.ids, r.ids), len(r.ids) - 1) if h else 0 for r, h in zip(batch, held,
                                                                                                    strict=True)]
        cached = width - max(len(r.ids) - c for r, c in zip(batch, reusable, strict=True))
        if cached <= 0:
            return None, 0
        first = next(h for h in held if h is not None)
        layers = []
        for k0, v0 in first.kv:
            heads, _, dim = k0.shape
            keys = k0.new_zeros((len(batch), heads, cached, dim))
            values = v0.new_zeros((len(batch), heads, cached, dim))
            layers.append((keys, values))
        for i, (r, h) in enumerate(zip(batch, held, strict=True)):
            used = len(r.ids) - (width - cached)  # this row's prompt tokens left of the new-token columns
            if h is None or used <= 0:
                continue
            start = width - len(r.ids)
            for (keys, values), (k, v) in zip(layers, h.kv, strict=True):
                keys[i, :, start:cached] = k[:, :used]
                values[i, :, start:cached] = v[:, :used]
        return DynamicCache(ddp_cache_data=layers), cached

    def _keep(self, r: _Request, row: int, toks: list[int], cache: Any, start: int) -> None:
        """Hold batch row ``row``'s keys/values (prompt + the reply tokens that were fed back: the last sampled
        token never is) for the agent's next turn; ``start`` is the row's first (non-padding) column."""
        layers = getattr(cache, "layers", None)
        if not layers:
            return
        seq = list(r.ids) + toks
        n = min(len(seq), layers[0].keys.shape[-2] - start)
        kv = [(layer.keys[row, :, start:start + n].clone(), layer.values[row, :, start:start + n].clone())
              for layer in layers]
        held = _Held(seq[:n], kv, sum(2 * k.numel() * k.element_size() for k, _ in kv))
        with self._lock:
            self._hold((r.traj, r.agent), held)


class _SampledLogprobs(LogitsProcessor):
    """The last logits processor: the log-prob of each sampled token under the distribution it was sampled
    from. It holds one step's processed scores until the next step's input ids show the token drawn from them,
    so memory is O(batch × vocabulary), where ``output_scores`` keeps O(steps × batch × vocabulary) (18 GB at
    a 40-row batch of 384 steps: docs/results/wideseek.md, 7f)."""

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None
        self.logps: list[torch.Tensor] = []

    def _take(self, tokens: torch.Tensor) -> None:
        assert self.pending is not None
        self.logps.append(torch.log_softmax(self.pending.float(), dim=-1).gather(-1, tokens[:, None])[:, 0].cpu())
        self.pending = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self._take(input_ids[:, -1])
        self.pending = scores
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """``(batch, steps)`` log-probs once ``generate`` returned ``sequences`` (its last column: the last draw)."""
        if self.pending is not None:
            self._take(sequences[:, -1])
        return torch.stack(self.logps, dim=1) if self.logps else torch.zeros((sequences.shape[0], 0))


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

    try:
        results = asyncio.run(main())
    finally:
        backend.release()  # the held caches belong to these rollouts (and to the weights they ran with)
    by_traj: dict[int, list[TurnSample]] = defaultdict(list)
    for s in backend.samples:
        s.group = s.traj // g
        by_traj[s.traj].append(s)
    return [Rollout(i // g, i // g, i, r, sorted(by_traj[i], key=lambda s: (s.agent, s.turn)))
            for i, r in enumerate(results)]
