"""Uncertainty: confidence methods (temperature scaling, entropy; TTA and MC dropout to come)."""
