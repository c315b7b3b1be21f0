"""Agents: ReAct on HotpotQA and FEVER over an offline Wikipedia, behind a Gym-like environment interface.

  env         `Environment` (reset(task) -> observation, step(action) -> Step(observation, reward, done, info))
  docstore    `DocStore` (title -> text, case-insensitive titles, BM25 suggestions), `load_docstore`
  wikienv     `WikiEnv`: ReAct's search / lookup / finish actions answered from a DocStore
  actions     `parse_action`
  reactdata   ReAct's prompt and question files, read from a user-given folder
  llm         `ModelCompleter`: greedy continuation with stop strings on an xmodel2 model
  react       `run_episode`: the Thought / Action / Observation loop, `Trajectory`
  metrics     HotpotQA EM / F1 (official normalisation), FEVER accuracy
  tasks       `score_react_task` for `xmodel2 eval --tasks hotpotqa_react,fever_react` (builds on xmodel2.eval)
"""
