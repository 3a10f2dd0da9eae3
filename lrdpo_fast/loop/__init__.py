"""The iterative loop: sampling from the live policy (the only vllm importer), rewards, pairs, phases."""
