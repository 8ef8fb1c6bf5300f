"""FASA evaluation at scale (issue #14): task suite, baselines side by side, decode perplexity, metrics.

- :mod:`.tasks`: the offline deterministic long-context suite (7 tasks, Wikipedia / CPython haystacks).
- :mod:`.capture`: offline statistics for Double Sparsity and Loki.
- :mod:`.methods`: every method as a factory of a fresh selector per (prompt, budget).
- :mod:`.harness`: the probing attention handler, greedy decode and teacher-forced perplexity.
- :mod:`.metrics`: Wilson intervals and aggregation.
- :mod:`.run`: the experiment as named steps (calibrate, build prompts, run methods, tabulate, plot),
  checkpointed per prompt to JSONL so a long run resumes.
"""
