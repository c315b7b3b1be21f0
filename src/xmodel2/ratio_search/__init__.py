"""`xmodel2 ratio-search`: how much SFT data, and of which categories, to put into the decay stage.

From one stable-stage checkpoint, many short decay branches differ only in the decay stage's
mixture (an SFT share and a distribution over SFT categories); each is scored on held-out data
that no branch trains on. Trials live in an Optuna study database, so a search resumes after a
kill and several machines can share it.
"""
