"""EEVE vocabulary expansion: grow a target-language tokenizer on the base one, refined by frequency.

- `scripts`: which characters are target-language (Hangul by default).
- `family`: how the base's BPE pieces map to bytes; which merges are safe to add.
- `intermediate`: step 1-2, the intermediate tokenizer of the base's family and its new tokens.
- `merge`: step 3, base + new pieces as real BPE entries (vocabulary + merges), ids after the base's.
- `count`: step 4, streaming frequency counting over all cores and MPI ranks.
- `refine`: steps 4-7, the round loop to a fixed point.
- `expand`: the whole run and its output directory (tokenizer + expansion_report.json).
"""

from megaeeve.vocab.expand import REPORT, ExpandConfig, expand_vocab, read_report

__all__ = ["REPORT", "ExpandConfig", "expand_vocab", "read_report"]
