"""Contrastive losses: the supervised contrastive loss (SupCon) and its functional form."""

from supcon.losses.supcon import SupConLoss, supcon_loss

__all__ = ["SupConLoss", "supcon_loss"]
