"""Model adapters: preprocessing and decoding that turn one detector family's tensors into person boxes."""
