"""The GPU side: loading cubins, launching on torch's stream, the quantization and attention ops, the registry."""
