"""The stage trainer behind the `megaeeve/train.py` entry point, in the order one stage uses it: plan.py (the
stage plan, built and checked once), stage.py (drives one planned stage), engine.py, data.py, objectives.py and
teacher.py, loop.py, metrics.py, checkpoint.py (resume and hand-off), signals.py, collectives.py, throughput.py;
config.py (RUN.yaml), dry_run.py (--dry-run), frozen.py (the report's frozen-parameter check)."""
