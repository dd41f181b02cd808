"""The AMoLE method, laid out like peft's tuners: the layer (shared + routed LoRA experts, A-keyed router, top-k,
load balance), the model-level injection and adapter import/export by stable names, and the server's expert bank."""
