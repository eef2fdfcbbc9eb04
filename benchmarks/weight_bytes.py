"""Bytes of weights a batch-1 decode step reads, the numerator of a weights-GB/s figure."""


def weight_bytes_per_token(params) -> int:
    """Every block array, ln_f, wte (the unembedding) and one wpe row of a params tree, float32
    or packed (the KV cache is not counted)."""
    def total(node):
        if isinstance(node, dict):
            return sum(total(v) for v in node.values())
        if isinstance(node, list):
            return sum(total(v) for v in node)
        return getattr(node, "nbytes", 0)  # a packed matrix's "format" string counts nothing
    return (total(params["blocks"]) + total(params["ln_f"]) + total(params["wte"])
            + params["wpe"][0].nbytes)
