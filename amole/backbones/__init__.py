"""Frozen backbones: loading (hub, folder, GGUF; none / 8 / 4 bit), the quantized cache, the dense CPU path and the
download-free tiny model for tests."""
