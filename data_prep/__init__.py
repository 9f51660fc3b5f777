"""Data preparation: synthetic scenes, translation, filtering and webdataset shards."""
