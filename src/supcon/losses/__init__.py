"""Contrastive losses: supervised contrastive (SupCon), pairwise max-margin and multi-class N-pair, each with its
functional form and the same input contract (``features [B, V, D]``, ``labels [B]`` or None)."""

from supcon.losses.maxmargin import MaxMarginContrastiveLoss, max_margin_loss
from supcon.losses.npairs import NPairsLoss, npairs_loss
from supcon.losses.supcon import SupConLoss, supcon_loss

__all__ = ["MaxMarginContrastiveLoss", "NPairsLoss", "SupConLoss", "max_margin_loss", "npairs_loss", "supcon_loss"]
