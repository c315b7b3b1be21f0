"""The wind tunnel: small proxy models that test and tune μP before a large run.

`coord_check` verifies that activations and their updates keep their size across widths (or
depths) under μP and that each negative control breaks that; `lr_transfer` sweeps the learning
rate at several widths for μP and standard parameterization and compares the optima; `search`
runs the report's Bayesian (Optuna TPE) search over scale_emb, dim_model_base, scale_depth and lr
on the nano proxy. `proxy` trains the small models all of them use.
"""
