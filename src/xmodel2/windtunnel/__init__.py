"""The wind tunnel: small proxy models that test and tune μP before a large run.

`coord_check` verifies that activations and their updates keep their size across widths (or
depths) under μP and that each negative control breaks that.
"""
