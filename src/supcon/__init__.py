"""supcon: Supervised Contrastive Learning (Khosla et al., 2020) with an exact, memory-bounded loss.

The building blocks are plain modules: ``supcon.losses``, ``supcon.augment``, ``supcon.models``,
``supcon.data`` and ``supcon.train``; the ``supcon`` command is a thin layer over them.
"""

__version__ = "0.1.0"
