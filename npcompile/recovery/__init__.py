"""Training-free accuracy recovery after pruning: least-squares reconstruction, reconstruction-aware
selection, bias compensation and BatchNorm re-estimation (:mod:`.reconstruction`)."""
