"""Rule rewards and metrics for the loop tests (imported by name, as a user's module would be)."""


def score(prompts, responses):
    """Prefers responses with many 'e' characters and, weakly, shorter ones."""
    return [float(r.count("e")) - 0.01 * len(r) for r in responses]


def mean_chars(prompts, responses):
    """Mean response length in characters."""
    return sum(len(r) for r in responses) / len(responses)
