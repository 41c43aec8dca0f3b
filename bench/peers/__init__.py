"""Peers that tidegate is measured against, side by side in the same bench session."""
