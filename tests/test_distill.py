"""Stage objectives (megaeeve/training/objectives.py): the pieces table, the teacher's input, the chunk loss against
independent computations, and distilling stages on 2 ZeRO-3 ranks in fp32 and bf16."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _model_helpers import expand, save_model, tiny_llama
from _train_helpers import check_stage, ds_config, make_stage0, metrics, read_log, roles_of, run_config, train_stage
from _train_helpers import write_prefix
from tokenizers import Tokenizer
from torch.utils.flop_counter import FlopCounterMode

from megaeeve import assets
from megaeeve.model import extend_model, load_model_dir, read_model_meta
from megaeeve.model.checkpoint import read_pieces
from megaeeve.model.pieces import PieceTable
from megaeeve.stages import DistillSpec, stage_table
from megaeeve.training.objectives import ChunkDistillation, binarised_kl, lm_objective, token_logprobs
from megaeeve.errors import ConfigTypeError
from megaeeve.vocab.family import detect_family

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
KOREAN = "대한민국 헌법 제1조 대한민국은 민주공화국이다. 안녕하세요, 국민 여러분! 헌법은 법률에 우선한다."


@pytest.fixture(scope="module")
def stage0(module_tmp, gpt2_tokenizer_dir):
    """GPT-2 extended by new BPE entries (one holds part of a UTF-8 character) and added tokens; a tiny Llama."""
    tmp = module_tmp("distill")
    base = assets.gpt2_tokenizer()
    expanded = expand(base, tmp / "expanded")
    out = tmp / "stage0"
    extend_model(save_model(tiny_llama(), tmp / "base"), gpt2_tokenizer_dir, tokenizer=expanded, output=out)
    return {"dir": out, "meta": read_model_meta(out), "base": base,
            "expanded": Tokenizer.from_file(str(expanded / "tokenizer.json"))}


def _bytes(tok: Tokenizer, i: int) -> bytes:
    added = tok.get_added_tokens_decoder()
    return added[i].content.encode() if i in added else detect_family(tok).piece_bytes(tok.id_to_token(i))


def test_pieces_table_spells_every_new_token(stage0):
    meta, base, expanded = stage0["meta"], stage0["base"], stage0["expanded"]
    pieces = read_pieces(stage0["dir"], meta)
    assert len(pieces) == meta.num_added
    for k, ids in enumerate(pieces):
        token = meta.base_vocab_size + k
        assert b"".join(_bytes(base, i) for i in ids) == _bytes(expanded, token), expanded.id_to_token(token)
    assert _bytes(expanded, meta.base_vocab_size + 4) == "대".encode()[:2]  # part of a character
    # The expansion of real text spells the text, byte for byte.
    ids = torch.tensor([expanded.encode(KOREAN).ids])
    assert (ids >= meta.base_vocab_size).any()
    spelled = PieceTable(pieces, meta.base_vocab_size).expand(ids).ids[0]
    assert b"".join(_bytes(base, int(i)) for i in spelled) == KOREAN.encode()


def test_missing_or_foreign_pieces_table_is_refused(stage0, tmp_path):
    from megaeeve.errors import ModelDirError

    with pytest.raises(ModelDirError, match="extend the base model again"):
        read_pieces(tmp_path, stage0["meta"])
    (tmp_path / "new_token_pieces.json").write_text(json.dumps({"base_vocab_size": 7, "pieces": [[1]]}))
    with pytest.raises(ModelDirError, match="the model has"):
        read_pieces(tmp_path, stage0["meta"])


def test_expansion_layout():
    table = PieceTable([[5, 6, 7], [8]], base_vocab_size=10)  # ids 10 -> 5 6 7, 11 -> 8
    tokens = torch.tensor([[1, 10, 2, 11], [3, 4, 10, 10]])
    e = table.expand(tokens)
    assert e.ids.tolist() == [[1, 5, 6, 7, 2, 8, 0, 0], [3, 4, 5, 6, 7, 5, 6, 7]]
    assert e.owner.tolist() == [[0, 1, 1, 1, 2, 3, 4, 4], [0, 1, 2, 2, 2, 3, 3, 3]]
    assert e.ends.tolist() == [[1, 4, 5, 6], [1, 2, 5, 8]]


def test_binarised_kl():
    a = torch.tensor([-0.0, -1e-9, -0.3, -2.0, -9.0, -40.0])
    b = torch.tensor([-0.0, -1e-9, -0.1, -5.0, -9.0, -1.0])
    for temperature in (1.0, 100.0):
        loss = binarised_kl(a, b, temperature)
        assert loss[[0, 1, 4]].abs().max() == 0 and (loss[[2, 3, 5]] > 0).all()
        t, s = (a.double() / temperature).clamp(max=-1e-6).exp(), (b.double() / temperature).clamp(max=-1e-6).exp()
        expected = temperature * (t * (t / s).log() + (1 - t) * ((1 - t) / (1 - s)).log())
        torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-6)
    # At a high temperature: the generalised KL of the negative log-likelihoods, b - a + a log(a / b).
    x, y = -a[2:], -b[2:]
    torch.testing.assert_close(binarised_kl(a[2:], b[2:], 1e4), y - x + x * (x / y).log(), rtol=2e-3, atol=1e-4)
    b.requires_grad_(True)
    binarised_kl(a, b, 100.0).sum().backward()
    assert torch.isfinite(b.grad).all()


def _objective(stage0, dtype, spec=DistillSpec(hidden_weight=1.0), lm_weight=0.0):
    meta = stage0["meta"]
    teacher = load_model_dir(stage0["dir"], dtype=dtype)
    table = PieceTable(read_pieces(stage0["dir"], meta), meta.base_vocab_size)
    return ChunkDistillation(teacher, table, spec, lm_weight, meta.base_vocab_size)


def _samples(tokenizer: Tokenizer, texts: list[str], length: int) -> torch.Tensor:
    ids = [i for text in texts for i in tokenizer.encode(text).ids]
    return torch.tensor(ids[: 2 * length]).view(2, length)


@pytest.mark.parametrize("precision", DTYPES)
def test_stage0_on_text_without_new_tokens(stage0, english_docs, precision):
    """The masked stage-0 student is the teacher: loss 0. Unmasked, the new rows take mass m from every position,
    so each chunk likelihood is the teacher's times 1 - m, and the loss is the divergence of exactly that."""
    meta = stage0["meta"]
    objective = _objective(stage0, DTYPES[precision])
    student = load_model_dir(stage0["dir"], dtype=DTYPES[precision])
    tokens = _samples(stage0["expanded"], english_docs, 25)
    assert (tokens < meta.base_vocab_size).all()
    new = slice(meta.base_vocab_size, meta.vocab_size)

    def mask(_, __, logits):
        return logits.index_fill(-1, torch.arange(new.start, new.stop), float("-inf"))

    with torch.no_grad():
        handle = student.lm_head.register_forward_hook(mask)
        masked = objective(student, tokens)
        handle.remove()
        out = objective(student, tokens)
        logits = student(input_ids=tokens[:, :-1]).logits.float()
        teacher = objective.teacher_chunks(tokens, capture=False).chunks
    assert masked.metrics["distill"].abs().max() < 1e-6
    assert masked.metrics["hidden"].abs().max() == 0 and out.metrics["hidden"].abs().max() == 0  # same states
    assert masked.loss.abs() < 1e-6
    mass = logits.softmax(-1)[..., new].sum(-1).double()  # the new rows' share of each position
    assert mass.min() > 0
    student_lp = token_logprobs(logits, tokens[:, 1:]).double()
    tol = dict(rtol=1e-4, atol=1e-5) if precision == "fp32" else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(1 - (student_lp - teacher.double()).exp(), mass, **tol)
    t = (teacher.double() / 100).exp()
    s = t * (1 - mass) ** (1 / 100)
    expected = 100 * (t * (t / s).log() + (1 - t) * ((1 - t) / (1 - s)).log())
    torch.testing.assert_close(out.metrics["distill"].double(), expected.mean(1), **tol)
    torch.testing.assert_close(out.loss.double(), out.metrics["distill"].double().mean(), **tol)


def test_korean_chunks_are_the_teachers_piece_likelihoods(stage0):
    """Samples whose expansions differ in length: each chunk is the sum of the teacher's piece log-probabilities,
    computed here one sample at a time without padding."""
    meta = stage0["meta"]
    objective = _objective(stage0, torch.float32, lm_weight=0.25)
    tokens = _samples(stage0["expanded"], [KOREAN] * 3, 20)
    new = meta.base_vocab_size + torch.arange(meta.num_added)
    tokens[0, 2::3], tokens[1, 5::4] = new[:6], new[2:6]  # expansions of different lengths
    table = objective.table
    with torch.no_grad():
        with FlopCounterMode(display=False) as counted:  # the teacher's forward on its padded windows, counted by torch
            chunks, _, flops = objective.teacher_chunks(tokens, capture=False)
        for b in range(2):
            pieces = [table.table[t, :table.lengths[t]].tolist() for t in tokens[b].tolist()]
            flat = torch.tensor([sum(pieces, [])])
            lp = objective.teacher(input_ids=flat).logits[0, :, :meta.base_vocab_size].float().log_softmax(-1)
            pos = len(pieces[0])
            for i in range(1, tokens.shape[1]):
                want = sum(float(lp[pos + j - 1, p]) for j, p in enumerate(pieces[i]))
                assert chunks[b, i - 1].item() == pytest.approx(want, rel=1e-5, abs=1e-5)
                pos += len(pieces[i])
        student = load_model_dir(stage0["dir"])
        out = objective(student, tokens)
    assert out.extra_flops == flops == pytest.approx(counted.get_total_flops(), rel=0.02)
    assert out.metrics["distill"].min() > 0
    lm = lm_objective(student, tokens).metrics["lm"]
    torch.testing.assert_close(out.metrics["lm"], lm)
    parts = out.metrics
    torch.testing.assert_close(out.loss, (0.25 * parts["lm"] + 0.75 * (parts["distill"] + parts["hidden"])).mean())


def test_teacher_past_its_context_scores_in_windows(stage0, tmp_path):
    """A teacher whose context (16 positions) is far shorter than the samples' expansions: each piece is scored
    from a window of at most 16 base ids, the first window from the start, each later one 8 ids on with at least
    8 before every piece it scores. Chunks and final states equal a plain forward of each window alone."""
    import shutil

    from megaeeve.training.objectives import final_states

    context, stride = 16, 8
    short = shutil.copytree(stage0["dir"], tmp_path / "short")
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": context}))
    meta = stage0["meta"]
    objective = _objective({**stage0, "dir": short}, torch.float32)
    tokens = _samples(stage0["expanded"], [KOREAN] * 3, 20)
    new = meta.base_vocab_size + torch.arange(meta.num_added)
    tokens[0, 2::3] = new[:6]  # the two expansions differ in length
    table, teacher = objective.table, objective.teacher
    with torch.no_grad():
        chunks, hidden = objective.teacher_chunks(tokens, capture=True)[:2]
        for b in range(2):
            pieces = [table.table[t, :table.lengths[t]].tolist() for t in tokens[b].tolist()]
            flat = sum(pieces, [])
            assert len(flat) > (3 * context if b == 0 else context)
            # target position -> (start, end): the window of inputs flat[start:end] that scores it
            scorer, end = {}, min(context + 1, len(flat))
            scorer.update({t: (0, end - 1) for t in range(1, end)})
            while end < len(flat):
                done, end = end, min(end + stride, len(flat))
                scorer.update({t: (end - 1 - context, end - 1) for t in range(done, end)})
            assert all(end - start <= context and start < t <= end for t, (start, end) in scorer.items())
            assert all(t - start > context - stride or start == 0 for t, (start, _) in scorer.items())
            runs = {}
            for start, end in set(scorer.values()):
                with final_states(teacher, True) as states:
                    logits = teacher(input_ids=torch.tensor([flat[start:end]])).logits[0, :, :meta.base_vocab_size]
                runs[start, end] = logits.float().log_softmax(-1), states[0][0]
            pos = len(pieces[0])
            for i in range(1, tokens.shape[1]):
                want = 0.0
                for j, p in enumerate(pieces[i]):
                    start, end = scorer[pos + j]
                    want += float(runs[start, end][0][pos + j - 1 - start, p])
                assert chunks[b, i - 1].item() == pytest.approx(want, rel=1e-5, abs=1e-5), (b, i)
                start, end = scorer[pos]  # the state after token i - 1's last piece predicts token i's first
                torch.testing.assert_close(hidden[b, i - 1], runs[start, end][1][pos - 1 - start])
                pos += len(pieces[i])


def test_stage_objective_settings():
    table = stage_table({1: {"objective": "mixed", "distill": {"weight": "0.3", "temperature": "1e2"}}})
    assert table[1].objective == "mixed" and table[1].distill == DistillSpec(weight=0.3, temperature=100.0)
    assert table[2].objective == "lm"
    with pytest.raises(ValueError, match="objectives are"):
        stage_table({1: {"objective": "kd"}})
    with pytest.raises(ConfigTypeError, match="weight must be in"):
        stage_table({1: {"distill": {"weight": 1.5}}})


RUNS = [("phi", "fp32"), ("llama", "bf16")]


@pytest.fixture(scope="module")
def corpus(module_tmp, phi2_tokenizer_dir, korean_split, english_docs):
    """Stage-0 models over phi-2's tokenizer (uneven ZeRO partitions of its 50,295 base rows on 2 ranks) and
    Korean + English datasets; English holds no new token. The Llama's context is the samples' 32 positions:
    its teacher reads the longer expansions (up to about 60 base ids) in windows, a different number per rank."""
    tmp = module_tmp("distill-run")
    models = {arch: make_stage0(tmp, arch, phi2_tokenizer_dir) for arch in ("phi", "llama")}
    config = models["llama"] / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_position_embeddings": 32}))
    ko = write_prefix(tmp / "ko", models["phi"], korean_split[0][:40])
    en = write_prefix(tmp / "en", models["phi"], english_docs[:40])
    sources = [{"prefix": str(ko), "weight": 0.7, "name": "ko"}, {"prefix": str(en), "weight": 0.3, "name": "en"}]
    return {"tmp": tmp, "models": models, "sources": sources}


@pytest.mark.slow
@pytest.mark.parametrize("arch, precision", RUNS, ids=["-".join(r) for r in RUNS])
def test_distilling_stages_on_zero3_ranks(corpus, arch, precision):
    """Stage 1 distils (with the hidden-state term), stage 4 mixes both losses: frozen tensors stay bitwise, Adam
    state covers only the trainable ones (the teacher has none), and the ranks' first eval of the distillation
    terms equals this process's computation with plain models."""
    tmp, model = corpus["tmp"], corpus["models"][arch]
    run_dir, stages = tmp / f"run-{arch}-{precision}", [1, 4]
    overrides = {1: {"steps": 2, "objective": "distill", "distill": {"hidden_weight": 0.5}},
                 4: {"steps": 2, "objective": "mixed", "distill": {"weight": 0.5}}}
    training = {"eval_samples": 4, "checkpoint_every": 0, "report_to": [], "progress_bar": False}
    cfg = run_config(tmp / f"{arch}-{precision}.yaml", run_dir, model, corpus["sources"], overrides,
                     run_stages=stages, training=training)
    ds = ds_config(tmp / f"ds-{precision}.json", bf16=precision == "bf16")
    for stage in stages:
        log = tmp / f"{arch}-{precision}-stage{stage}.log"
        assert train_stage(ds, cfg, stage, log) == 0, read_log(log)
    chain = {"run_dir": run_dir, "stages": stages, "model": model, "roles": roles_of(model),
             "bf16": precision == "bf16", "world": 2}
    for stage in stages:
        check_stage(chain, stage)

    distilled, mixed = metrics(run_dir / "stage-1"), metrics(run_dir / "stage-4")
    for r in (r for r in distilled if r["kind"] == "train"):
        assert r["loss"] == pytest.approx(r["distill_loss"] + 0.5 * r["hidden_loss"], rel=1e-5)
        assert r["lm_loss"] > 0
    for r in (r for r in mixed if r["kind"] == "train"):
        assert r["loss"] == pytest.approx(0.5 * r["lm_loss"] + 0.5 * r["distill_loss"], rel=1e-5)
        assert "hidden_loss" not in r
    assert {"eval_loss_ko", "eval_distill_ko", "eval_hidden_ko", "eval_distill_en"} <= set(distilled[-1])

    # The first eval (the stage-0 model), again in this process with plain student and teacher models.
    from megaeeve.training.config import load_run_config
    from megaeeve.training.data import stage_data

    run = load_run_config(cfg)
    meta = read_model_meta(model)
    valid = stage_data(run, run.stages[1], 2 * 8, meta.base_vocab_size).valid
    objective = _objective({"dir": model, "meta": meta}, DTYPES[precision], DistillSpec(hidden_weight=0.5))
    student = load_model_dir(model, dtype=DTYPES[precision])
    first = distilled[0]
    assert first["kind"] == "eval" and first["step"] == 0
    rel = 1e-4 if precision == "fp32" else 2e-2
    for name in ("ko", "en"):
        tokens = torch.from_numpy(np.stack([valid[name][i] for i in range(len(valid[name]))]))
        if arch == "llama" and name == "ko":  # its teacher read windows
            assert int(objective.table.lengths[tokens].sum(1).max()) > objective.context + 1
        with torch.no_grad():
            here = objective(student, tokens).metrics
        for term, key in (("distill", f"eval_distill_{name}"), ("hidden", f"eval_hidden_{name}"),
                          ("lm", f"eval_loss_{name}")):
            assert first[key] == pytest.approx(float(here[term].mean()), rel=rel, abs=1e-7), key
    assert first["eval_distill_ko"] > 1e3 * first["eval_distill_en"]  # English holds no new token
    assert first["eval_hidden_en"] == 0  # the same states as the teacher's


def test_dry_run_needs_the_pieces_table_of_a_distilling_stage(monkeypatch, capsys, corpus, tmp_path):
    import shutil

    from megaeeve.train import main

    old = shutil.copytree(corpus["models"]["phi"], tmp_path / "old-stage0")
    (old / "new_token_pieces.json").unlink()  # a stage-0 directory written before the table existed
    ds = ds_config(tmp_path / "ds.json")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for model, objective, code in ((old, "lm", 0), (old, "mixed", 2), (corpus["models"]["phi"], "mixed", 0)):
        cfg = run_config(tmp_path / "dry.yaml", tmp_path / "run", model, corpus["sources"],
                         {1: {"objective": objective}}, run_stages=[1])
        assert main(["--dry-run", "--ds_config", str(ds), "--config", str(cfg)]) == code
        out = capsys.readouterr()
        assert (f"objective {objective}" in out.out) if code == 0 else ("new_token_pieces.json is missing" in out.err)
