"""Test suite; a package so that multi-process workers can be pickled as `tests.<module>.<function>`."""
