"""Token datasets: Megatron MMIDIDX files (indexed.py), offline preprocessing (preprocess.py, one shard's
encoding in encode.py), packed training samples (gpt_dataset.py), blends (blending.py) and samplers (sampler.py)."""
