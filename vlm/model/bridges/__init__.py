"""The bridges, one file each, named by `bridge.type` (see vlm/model/bridge.py)."""
