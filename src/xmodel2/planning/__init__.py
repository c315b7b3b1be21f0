"""Planning a GPU run on the CPU: the real training step simulated without memory (FakeTensorMode,
a fake process group, FSDPMemTracker), the config checked for the world size, and the run's time
and GPU-hours from the project's FLOP count and datasheet peaks."""
