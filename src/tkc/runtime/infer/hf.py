"""HFEngine: transformers generation on a bundle's model (batched, left-padded, template stops, seeded sampling)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tkc.bundle.chat import ChatTemplate
from tkc.runtime.context import RunContext
from tkc.runtime.infer.engine import (
    Completion,
    Prompt,
    chat_template,
    cut_at_stop,
    held_back,
    render_prompt,
    split_stops,
)
from tkc.runtime.model import DTYPES, base_weights, load_stage_output

_END = object()


class _TextStops(StoppingCriteria):
    """Per row: done once the text generated after `width` prompt positions contains a stop string.

    Checked every step, so a new match ends at the last token: only a tail of the generated tokens is decoded
    (a character can take up to 4 byte-level tokens; the slack covers skipped special tokens).
    """

    def __init__(self, tokenizer, width: int, stops: Sequence[str]):
        self.tok, self.width, self.stops = tokenizer, width, list(stops)
        self.tail = 4 * max(map(len, self.stops)) + 8

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.Tensor:
        start = max(self.width, input_ids.shape[1] - self.tail)
        texts = self.tok.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([cut_at_stop(t, self.stops)[1] for t in texts], device=input_ids.device)


class _Cancelled(StoppingCriteria):
    """Stops every row once the stream's reader has gone away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


class _IdQueue(BaseStreamer):
    """Hands each new token id of a batch-of-one generate() to a queue (the prompt, put first, is skipped)."""

    def __init__(self, q: queue.Queue):
        self.q, self.prompt_seen = q, False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            self.q.put(t)

    def end(self):
        self.q.put(_END)


class HFEngine:
    """Engine over a transformers causal LM and its tokenizer; chat prompts rendered with the bundle's template."""

    def __init__(self, model, tokenizer, fmt: ChatTemplate | None = None, *, batch_size: int = 16):
        self.model, self.tok, self.fmt, self.batch_size = model.eval(), tokenizer, fmt, batch_size
        self.model.generation_config = GenerationConfig()  # the checkpoint's file must not fill unset knobs
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token

    @classmethod
    def from_bundle(
        cls,
        ctx: RunContext,
        stage_name: str | None,
        *,
        dtype: str = "fp32",
        device: str | None = None,
        batch_size: int = 16,
    ) -> HFEngine:
        """The stage's output model (an adapter merged into the weights it trained on), or the base model, on the
        bundle's device (that stage's, else the hardware's: tkc.runtime.device.stage_device) unless `device` says."""
        from tkc.runtime.device import DeviceUnavailable, device_problem, stage_device

        torch_dtype = DTYPES[dtype]
        stage = None if stage_name is None else ctx.stage_by_name(stage_name)
        place = torch.device(device) if device else stage_device(ctx.plan, stage, ctx.dist)
        problem = None if device else device_problem(place.type, place.index or 0)
        if problem is not None:  # before any weights load: never a silent CPU run of a GPU bundle
            raise DeviceUnavailable(f"{problem}; compile the recipe for this machine (e.g. hardware: cpu)")
        if stage_name is None:
            model = base_weights(ctx, dtype=torch_dtype)
        else:
            model = load_stage_output(ctx, stage_name, dtype=torch_dtype)
        return cls(model.to(place), ctx.tokenizer(), chat_template(ctx), batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def stops(self, extra: Sequence[str]) -> tuple[set[int], list[str]]:
        """(stop ids, stop strings): the template's stop tokens, the tokenizer's eos, and `extra`."""
        return split_stops(self.tok, self.fmt, extra)

    def config(
        self, max_new_tokens: int, temperature: float, top_p: float, stop_ids: set[int]
    ) -> GenerationConfig:
        """Every knob that shapes the output explicit, so the checkpoint's generation_config.json cannot leak in.

        Greedy leaves top_k unset (transformers flags it as unused); sampling disables it (top_k=0) like vLLM's -1.
        """
        sample = temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            do_sample=sample,
            num_beams=1,
            temperature=temperature if sample else 1.0,
            top_p=top_p if sample else 1.0,
            top_k=0 if sample else None,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            eos_token_id=sorted(stop_ids),
            pad_token_id=self.tok.pad_token_id,
            bos_token_id=self.tok.bos_token_id,
            use_cache=True,
        )

    def encode(self, prompt: Prompt) -> list[int]:
        ids = self.tok(render_prompt(self.fmt, prompt), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("an empty prompt: nothing to continue from")
        return ids

    def _batch(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask: every row's last prompt token sits in the same column."""
        width = max(map(len, prompts))
        pad = self.tok.pad_token_id
        ids = [[pad] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        return torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device)

    @torch.no_grad()
    def _run(
        self, prompts: list[list[int]], gen: GenerationConfig, strings: list[str], cancel=None, streamer=None
    ):
        ids, mask = self._batch(prompts)
        criteria = StoppingCriteriaList([_TextStops(self.tok, ids.shape[1], strings)] if strings else [])
        if cancel is not None:
            criteria.append(_Cancelled(cancel))
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=gen,
            stopping_criteria=criteria,
            streamer=streamer,
        )
        return out[:, ids.shape[1] :].tolist()

    def completion(self, seq: list[int], stop_ids: set[int], strings: list[str]) -> Completion:
        """The text before the first stop token / string; tokens up to it (a stop string's own tokens included)."""
        cut = next((j for j, t in enumerate(seq) if t in stop_ids), None)
        tokens = seq if cut is None else seq[:cut]
        text, hit = cut_at_stop(self.tok.decode(tokens, skip_special_tokens=True), strings)
        if hit:
            tokens = next(
                tokens[:k]
                for k in range(1, len(tokens) + 1)
                if cut_at_stop(self.tok.decode(tokens[:k], skip_special_tokens=True), strings)[1]
            )
        return Completion(text, tokens, "stop" if cut is not None or hit else "length")

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[Completion]:
        """One completion per prompt, in batches of `batch_size`; `seed` fixes sampling for the whole call."""
        stop_ids, strings = self.stops(stop)
        gen = self.config(max_new_tokens, temperature, top_p, stop_ids)
        encoded = [self.encode(p) for p in prompts]
        torch.manual_seed(seed)
        out: list[Completion] = []
        for i in range(0, len(encoded), self.batch_size):
            out += [
                self.completion(seq, stop_ids, strings)
                for seq in self._run(encoded[i : i + self.batch_size], gen, strings)
            ]
        return out

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> Iterator[str]:
        """Text deltas of generate([prompt])[0].text, emitted as tokens arrive (a possible stop prefix held back)."""
        stop_ids, strings = self.stops(stop)
        gen = self.config(max_new_tokens, temperature, top_p, stop_ids)
        ids, cancel = self.encode(prompt), threading.Event()
        q: queue.Queue[Any] = queue.Queue()

        def work():
            try:
                self._run([ids], gen, strings, cancel, _IdQueue(q))
            except BaseException as e:  # handed to the reader, which re-raises it
                q.put(e)
                q.put(_END)

        torch.manual_seed(seed)
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from _deltas(self.tok, q, stop_ids, strings)
        finally:
            cancel.set()
            thread.join()


def _deltas(tok, q: queue.Queue, stop_ids: set[int], strings: list[str]) -> Iterator[str]:
    """Decode the growing token list; emit only text that can no longer change or turn into a stop string."""
    seq: list[int] = []
    emitted = 0
    text = ""
    while (item := q.get()) is not _END:
        if isinstance(item, BaseException):
            raise item
        if item in stop_ids:
            break
        seq.append(item)
        text, hit = cut_at_stop(tok.decode(seq, skip_special_tokens=True), strings)
        if hit:
            break
        # an incomplete UTF-8 character decodes as U+FFFD until its last byte arrives
        safe = len(text.rstrip("\ufffd"))
        safe = min(safe, len(text) - held_back(text, strings))
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    if len(text) > emitted:
        yield text[emitted:]
