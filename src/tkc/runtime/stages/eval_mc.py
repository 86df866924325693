"""Multiple-choice benchmark eval (eval stage, metric mmlu | cmmlu | ceval): accuracy per subject, per category and
overall, into outputs/<stage>/metrics.json, predictions.jsonl and a printed table.

Follows LLaMA-Factory's evaluator (src/llamafactory/eval/evaluator.py and template.py) so numbers compare: the
prompt names the subject ("The following are multiple choice questions (with answers) about {subject}.\\n\\n", or
its zh wording) before the first question; each question reads "question\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:";
the n-shot examples are user/assistant turns of the chat template; the model's logits at the last prompt token are
compared over the four letter tokens (the last token of each encoded letter) and the largest wins. Differences:
the shots are the subject's first n_shot dev rows (LLaMA-Factory draws a random sample per question); cells are read
as the CSV spells them (it reads them through pandas, which turns "1.50" into 1.5); `prompt: plain` is ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tkc.bundle import benchmarks as bm
from tkc.bundle.canonical import sha256_file
from tkc.bundle.plan import ResolvedStage
from tkc.bundle.plan_stage import ResolvedBenchmark, ResolvedBenchmarkFile, ResolvedBenchmarkSubject
from tkc.runtime import outputs
from tkc.runtime.context import RunContext
from tkc.runtime.data.errors import DataError

# LLaMA-Factory's eval templates (src/llamafactory/eval/template.py), word for word.
WORDING = {
    "en": ("The following are multiple choice questions (with answers) about {subject}.\n\n", "\nAnswer:"),
    "zh": ("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "\n答案："),
}
CATEGORIES = ("STEM", "Social Sciences", "Humanities", "Other")


def read_file(ctx: RunContext, name: str, ref: ResolvedBenchmarkFile) -> list[bm.Row]:
    """The file's rows, after checking it is the one the bundle hashed (and inside the read roots)."""
    from tkc.runtime.model_files import check_inside_roots

    path = ctx.source_root / ref.path
    if not path.is_file():
        raise DataError(f"benchmark file {ref.path} is missing under {ctx.source_root}")
    check_inside_roots(path, ctx.plan.read_roots, ctx.source_root, "benchmark file")
    actual = sha256_file(path)
    if actual != ref.sha256:
        raise DataError(f"benchmark file {ref.path} changed since compile (sha256 {actual[:12]}…, bundle recorded "
                        f"{ref.sha256[:12]}…); recompile the recipe")
    rows = []
    for line, row in bm.read_rows(name, path):
        if isinstance(row, str):
            raise DataError(f"{ref.path}:{line}: {row}")
        rows.append(row)
    return rows


def question_text(row: bm.Row, answer_word: str) -> str:
    """LLaMA-Factory's EvalTemplate._parse_example prompt: the question, "\\nX. choice" per choice, the answer word."""
    return "".join([row["question"], *(f"\n{c}. {row[c]}" for c in bm.CHOICES), answer_word])


def chat_messages(bench: ResolvedBenchmark, subject: ResolvedBenchmarkSubject, shots: list[bm.Row],
                  row: bm.Row) -> list[dict]:
    """The conversation before the answer: each shot a user/assistant exchange, the subject line in the first turn."""
    system, answer = WORDING[bench.lang]
    messages = []
    for shot in shots:
        messages += [{"role": "user", "content": question_text(shot, answer)},
                     {"role": "assistant", "content": shot["answer"]}]
    messages.append({"role": "user", "content": question_text(row, answer)})
    messages[0]["content"] = system.format(subject=subject.name) + messages[0]["content"]
    return messages


def plain_text(bench: ResolvedBenchmark, subject: ResolvedBenchmarkSubject, shots: list[bm.Row], row: bm.Row) -> str:
    """One text: the subject line, each shot followed by its letter and a blank line, then the question."""
    system, answer = WORDING[bench.lang]
    sep = " " if bench.lang == "en" else ""
    body = "".join(question_text(s, answer) + sep + s["answer"] + "\n\n" for s in shots)
    return system.format(subject=subject.name) + body + question_text(row, answer)


class Prompter:
    """Prompt token ids and the four candidate token ids, for the bundle's prompt style."""

    def __init__(self, ctx: RunContext, bench: ResolvedBenchmark):
        from tkc.bundle.chat import ChatTemplate

        self.tok, self.bench = ctx.tokenizer(), bench
        text = ctx.chat_template()
        if bench.prompt == "chat" and text is None:
            raise DataError("prompt: chat needs the bundle's chat template, and this bundle has none")
        self.fmt = ChatTemplate.from_plan(ctx.plan.template, text, tokenizer_eos=self.tok.eos_token or "") \
            if bench.prompt == "chat" else None
        sep = " " if bench.prompt == "plain" and bench.lang == "en" else ""
        self.choice_ids = [self.tok.encode(sep + c, add_special_tokens=False)[-1] for c in bm.CHOICES]

    def ids(self, subject: ResolvedBenchmarkSubject, shots: list[bm.Row], row: bm.Row) -> list[int]:
        if self.fmt is not None:
            text = self.fmt.prompt(chat_messages(self.bench, subject, shots, row))
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return self.tok(plain_text(self.bench, subject, shots, row))["input_ids"]


@torch.no_grad()
def choice_probs(model, prompts: list[list[int]], choice_ids: list[int], pad_id: int, batch: int) -> list[list[float]]:
    """Softmax over the four letter tokens of the next-token logits after each prompt (right-padded batches)."""
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([p + [pad_id] * (width - len(p)) for p in chunk], device=device)
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in chunk], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        last = logits[torch.arange(len(chunk), device=device), torch.tensor([len(p) - 1 for p in chunk], device=device)]
        out += torch.softmax(last[:, choice_ids], dim=-1).tolist()
    return out


def _share(correct: int, total: int) -> dict:
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total}


def summarize(bench: ResolvedBenchmark, correct: dict[str, list[bool]]) -> dict:
    """Per subject, per category (pooled questions, as LLaMA-Factory's categories), overall and the macro average."""
    subjects = {s.id: {**_share(sum(correct[s.id]), len(correct[s.id])), "category": s.category}
                for s in bench.subjects}
    categories = {}
    for cat in CATEGORIES:
        hits = [x for s in bench.subjects if s.category == cat for x in correct[s.id]]
        if hits:
            categories[cat] = _share(sum(hits), len(hits))
    everything = [x for s in bench.subjects for x in correct[s.id]]
    macro = sum(v["accuracy"] for v in subjects.values()) / max(1, len(subjects))
    return {**_share(sum(everything), len(everything)), "macro_accuracy": macro, "categories": categories,
            "subjects": subjects}


def table(bench: ResolvedBenchmark, scores: dict) -> str:
    rows = [(sid, s["category"] or "-", s["correct"], s["total"], s["accuracy"]) for sid, s in scores["subjects"].items()]
    rows += [(f"[{cat}]", "", c["correct"], c["total"], c["accuracy"]) for cat, c in scores["categories"].items()]
    rows += [("Average", "", scores["correct"], scores["total"], scores["accuracy"]),
             ("Macro average", "", "", "", scores["macro_accuracy"])]
    width = max(len(r[0]) for r in rows)
    head = f"{'subject':<{width}}  {'category':<15}  {'correct':>7}  {'total':>5}  {'acc %':>6}"
    lines = [f"{bench.name} {bench.split}, {bench.n_shot}-shot, {bench.prompt} prompt", head, "-" * len(head)]
    lines += [f"{n:<{width}}  {c:<15}  {k!s:>7}  {t!s:>5}  {100 * a:6.2f}" for n, c, k, t, a in rows]
    return "\n".join(lines)


def score(ctx: RunContext, bench: ResolvedBenchmark, model) -> tuple[dict, list[dict]]:
    prompter = Prompter(ctx, bench)
    correct: dict[str, list[bool]] = {}
    records: list[dict] = []
    for subject in bench.subjects:
        rows = read_file(ctx, bench.name, subject.file)
        shots = read_file(ctx, bench.name, subject.dev)[: bench.n_shot] if subject.dev and bench.n_shot else []
        prompts = [prompter.ids(subject, shots, row) for row in rows]
        probs = choice_probs(model, prompts, prompter.choice_ids, prompter.tok.pad_token_id, bench.batch_size)
        picks = [bm.CHOICES[max(range(4), key=p.__getitem__)] for p in probs]
        correct[subject.id] = [pick == row["answer"] for pick, row in zip(picks, rows, strict=True)]
        records += [{"subject": subject.id, "index": i, "answer": row["answer"], "prediction": pick,
                     "probs": dict(zip(bm.CHOICES, p, strict=True)), "prompt_tokens": len(ids)}
                    for i, (row, pick, p, ids) in enumerate(zip(rows, picks, probs, prompts, strict=True))]
    return summarize(bench, correct), records


def write(out: Path, scores: dict, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    outputs.write_json(out / "metrics.json", scores)
    tmp = out / "predictions.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    tmp.replace(out / "predictions.jsonl")


def run(ctx: RunContext, stage: ResolvedStage, model, source: str | None) -> int:
    """Score the benchmark with the model under test (eval.py picks it); the caller marks the stage done."""
    bench = getattr(stage.options, "benchmark", None)
    assert isinstance(bench, ResolvedBenchmark), "a benchmark eval stage has a resolved benchmark"
    scores, records = score(ctx, bench, model)
    scores = {"metric": bench.name, "split": bench.split, "n_shot": bench.n_shot, "prompt": bench.prompt,
              "lang": bench.lang, **scores, "model": source or "base"}
    ctx.log(f"[{stage.name}] {table(bench, scores)}")
    ctx.log(f"[{stage.name}] {bench.name} accuracy {scores['accuracy']:.1%} ({scores['correct']}/{scores['total']}), "
            f"macro {scores['macro_accuracy']:.1%} on {source or 'base model'}")
    if ctx.dist.is_main:
        write(ctx.stage_dir(stage), scores, records)
    return 0
