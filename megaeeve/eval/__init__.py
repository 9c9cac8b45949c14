"""Evaluation of any model a run starts from or produces, on held-out text (tools/evaluate.py, the report).

    model = load_any_model(path)            # base HF dir or .gguf, stage-0, stage-N/final, export
    tokenizer = load_hf_tokenizer(path)     # megaeeve.tokenizer_io
    results = evaluate_model(model, tokenizer, {"ko": read_texts("ko.jsonl")})
    results["ko"].bits_per_char             # TextEval; results_json(path, results) is the --output JSON
"""

from megaeeve.eval.evaluate import EvalSettings, TextEval, evaluate_model, format_table, results_json
from megaeeve.eval.generate import generation_speed, greedy
from megaeeve.eval.load import default_device, load_any_model
from megaeeve.eval.texts import read_texts
from megaeeve.tokenizer_io import load_hf_tokenizer

__all__ = ["EvalSettings", "TextEval", "default_device", "evaluate_model", "format_table",
           "generation_speed", "greedy", "load_any_model", "load_hf_tokenizer", "read_texts", "results_json"]
