"""Throughput benchmarks: base Qwen3-VL against its PVM version (`pvm-qwen3vl bench`)."""
