"""The training engine: :func:`~supcon.engine.loop.fit` (the one loop, over a typed loop state, with resume and
Ctrl-C), epoch batches, optimizers and schedules, the gradient cache, atomic checkpoints, data-parallel
training and experiment trackers."""
