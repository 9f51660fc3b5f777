"""The training objective, apart from the network: which terms are trained and with what weights, the loss
functions (losses.py), BLIP-2's ITM hard negatives, and the MoE routing statistics (routing.py)."""
